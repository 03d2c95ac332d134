"""The scripted money story of `stakeswarm demo`, checked on the shared devnet."""

from __future__ import annotations

import subprocess
import sys

from ledger.chain import Chain
from ledger.deployment import Deployment
from stakeswarm.ledger_story import PRICE_PER_TOKEN_PER_BLOCK, StoryLog, run_ledger_story


def test_story_moves_money_as_the_rules_say(deployment: Deployment, chain: Chain) -> None:
    snapshots = {}
    log = StoryLog()
    before, after = run_ledger_story(
        deployment, chain, log, lambda when, s: snapshots.__setitem__(when, s)
    )
    assert snapshots == {"before": before, "after": after}
    params = deployment.params
    staked = 2 * params.min_stake_per_block * 10  # each node staked twice the minimum for 10 blocks
    # each server was paid exactly tokens x price x span length: 11 tokens over 10 blocks
    paid = 11 * PRICE_PER_TOKEN_PER_BLOCK * 10
    for node in ("node-0", "node-1", "node-2"):
        assert after.balances[node] - before.balances[node] == paid - staked
    # node-0 was honest; node-1 (verdict) and node-2 (equivocation) lost slashBps of their stake
    slashed = staked * params.slash_bps // 10_000
    assert after.stakes["node-0"] == staked
    assert after.stakes["node-1"] == staked - slashed
    assert after.stakes["node-2"] == staked - slashed
    bounty = slashed * params.bounty_bps // 10_000
    verifier_stake = after.stakes["verifier-0"]
    assert after.balances["verifier-0"] - before.balances["verifier-0"] == bounty - verifier_stake
    # the client escrowed 3 deposits, got the equivocation bounty as the reporter
    deposits = 3 * 5 * 10**18
    assert after.balances["client-0"] - before.balances["client-0"] == bounty - deposits
    # the rest of both slashes went to the reward pool and was released to the treasury
    assert after.reward_pool == 0
    assert after.balances["deployer"] - before.balances["deployer"] == 2 * (slashed - bounty)
    assert sum(1 for _, tx in log.steps if tx is not None) == 16


def test_demo_ledger_only_runs_its_own_chain_and_stops_it(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stakeswarm", "demo", "--ledger-only", "--home", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "slashed node-1" in result.stdout and "equivocation" in result.stdout
    assert "local chain stopped" in result.stdout
    assert not (tmp_path / "devnet" / "devnet.json").exists()
