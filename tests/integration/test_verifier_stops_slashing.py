"""A verifier at sample rate 1 stops slashing a cheat once a slash no longer pays for its gas.

One node carries every block and cheats (`--faulty noise`); a paying client generates four
times, each generation committed in its own batches, before a real `stakeswarm verifier run`
process audits every leaf. Its token price (`--token-price-eth`) is set from the chain's gas
price so that the first slash pays for its gas and the second would not: the cheat is slashed
once, every later audit of it is skipped, the operator is told why once, in tokens and ETH, and
`/status` and `verifier status` show the skipped node and the audits skipped. Everything done
on-chain is reverted afterwards.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import torch
from eth_account import Account
from eth_utils import to_checksum_address

from client.model import DistributedModelForCausalLM
from ledger.contracts import Contracts
from ledger.deployment import Deployment
from stakeswarm.swarm import running_verifier
from tests.integration.nodes import NodeProcess, NodeSpec, wait_committed
from tests.integration.verifiers import status_cli, status_field, wait_for_status
from verifier.worth import (
    GAS_SAFETY,
    SlashTerms,
    bounty_per_verifier,
    slash_amount,
    slash_gas,
    token_value_wei,
)

pytestmark = pytest.mark.timeout(600)

NODE_ARGS = ("--commit-interval", "1", "--redeem-interval", "3600", "--announce-interval", "5")
PROMPT = torch.tensor([[1, 17, 42, 99, 7]])


@pytest.fixture(scope="module")
def node_specs() -> list[NodeSpec]:
    return [NodeSpec("node-0", "0:6", args=(*NODE_ARGS, "--faulty", "noise"))]


def test_a_cheat_is_slashed_until_a_slash_no_longer_pays_for_its_gas(
    deployment: Deployment, nodes: list[NodeProcess], model_path: Path, tmp_path: Path
) -> None:
    chain = deployment.connect()
    contracts = Contracts.from_deployment(chain, deployment)
    cheat = nodes[0]
    peers = list(cheat.maddrs)
    start_block = chain.block_number()

    wallet = Account.from_key(deployment.account("client-0").private_key)
    model = DistributedModelForCausalLM.from_pretrained(
        model_path, initial_peers=peers, wallet=wallet, deployment=deployment,
        home=tmp_path / "client",
    )  # fmt: skip
    try:
        for _ in range(4):  # each generation's leaves committed before the next starts
            before = cheat.status()["commitments"]["committed_leaves"]
            model.generate(PROMPT, max_new_tokens=2, do_sample=False)
            wait_committed(cheat, before + 1)
    finally:
        model.close()
    batches = {
        b.batch_id
        for b in contracts.commitments.batches_committed(from_block=start_block)
        if b.node == cheat.address
    }
    assert len(batches) >= 3

    # a token price at which the first slash pays for its gas and the second would not even
    # as the cheaper withheld slash (midway, so the gas price may drift by ~30% meanwhile)
    params = contracts.slasher.params()
    terms = SlashTerms(params.slash_bps, params.bounty_bps, params.quorum)
    stake = contracts.node_registry.slashable_stake(cheat.address)
    first = bounty_per_verifier(stake, terms)
    second = bounty_per_verifier(stake - slash_amount(stake, terms), terms)
    safety = Decimal(GAS_SAFETY.numerator) / GAS_SAFETY.denominator
    gas_price = Decimal(int(chain.w3.eth.gas_price)) * safety
    low = Decimal(slash_gas(1)) * gas_price / first  # wei per base unit the first slash needs
    high = Decimal(slash_gas(1, withheld=True)) * gas_price / second  # the second's ceiling
    assert low < high
    price = (low * high).sqrt().normalize()  # ETH per token: both have 18 decimals
    args = ("--token-price-eth", f"{price:f}")

    with running_verifier(
        deployment, tmp_path, model_path, "verifier-0", peers, args=args
    ) as verifier:
        spent_from = chain.w3.eth.get_balance(
            to_checksum_address(verifier.address)
        )  # after registering
        status = wait_for_status(
            verifier,
            "the cheat slashed, then skipped, and nothing left in the queue",
            lambda s: (
                s["slashes"]["recorded"] >= 1
                and [n["node"] for n in s["queue"]["skipped"]] == [cheat.address]
                and s["audits"]["pending"] == 0
            ),
            timeout=180,
        )
        spent = spent_from - chain.w3.eth.get_balance(to_checksum_address(verifier.address))
        logs = verifier.stderr.read_text(errors="replace")

    slashes = contracts.slasher.leaves_slashed(from_block=start_block)
    # bounded: one slash (two, had the gas price fallen by half meanwhile), not one per batch
    assert 1 <= len(slashes) <= 2 < len(batches)
    assert contracts.node_registry.slashable_stake(cheat.address) > 0  # left: not worth a slash
    # the slashes paid the verifier more than their gas (claim + slash) cost it
    assert spent > 0
    assert token_value_wei(slashes[-1].bounty_per_verifier, 18, price) > spent / len(slashes)

    # what the operator sees: the skip, once, with the figures in tokens and ETH
    (skipped,) = status["queue"]["skipped"]
    assert "SWARM pays" in skipped["reason"] and "ETH" in skipped["reason"]
    assert logs.count(f"skipping node {cheat.address}") == 1
    assert status["queue"]["dropped"] >= 1  # audits of the later batches, never run
    assert status["slashes"]["stake_taken"].endswith(" SWARM")
    assert int(status["slashes"]["stake_taken_base_units"]) == sum(s.amount for s in slashes)
    shown = status_cli(verifier)
    assert status_field(shown, "queued") == "0"
    assert int(status_field(shown, "audits skipped")) == status["queue"]["dropped"]
