"""A devnet restarted in the same home: same chain id, same contract addresses, channel ids
from 1 again. A client and a node whose ledgers outlived the first chain must not take its
channels and voucher amounts for the new chain's: each sets its ledger aside, the client opens
a new channel and pays from zero, and the node is paid exactly what the second run cost.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from eth_account import Account

from client.model import DistributedModelForCausalLM
from ledger.contracts import Contracts
from ledger.db import client_channels, open_ledger, receipts_of, sqlite_url
from ledger.types import ChannelId
from stakeswarm.devnet import DEV_CHAIN_ID, Devnet, DevnetConfig
from stakeswarm.home import Home
from stakeswarm.tiny_models import make_tiny_model
from tests.integration.nodes import NodeSpec, running_nodes

pytestmark = pytest.mark.timeout(600)

NODE_ARGS = ("--commit-interval", "1", "--redeem-interval", "3600")
PROMPTS = (torch.tensor([[1, 17, 42, 99, 7]]), torch.tensor([[5, 6, 7]]))  # runs cost apart


def _client_ledger(path: Path, contract: str, client: str) -> tuple[list[tuple[int, int]], int]:
    """The client's (channel id, voucher amount) per channel, and what its receipts cost."""
    ledger = open_ledger(sqlite_url(path))
    try:
        with ledger.begin() as db:
            channels = client_channels(db, DEV_CHAIN_ID, contract, client)
            cost = sum(r.cost for r in receipts_of(db))
            return [(c.channel_id, c.voucher_amount) for c in channels], cost
    finally:
        ledger.close()


def test_a_restarted_devnet_gets_fresh_ledgers_and_is_paid_from_zero(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "home")
    model_path = make_tiny_model(tmp_path / "model", "llama", 4)
    workdir, client_home = tmp_path / "swarm", tmp_path / "client"
    runs = []
    for prompt in PROMPTS:
        with Devnet.start(DevnetConfig(home=home)) as deployment:
            specs = [NodeSpec("node-0", "0:4", args=NODE_ARGS)]
            with running_nodes(deployment, workdir, model_path, specs) as (node,):
                wallet = Account.from_key(deployment.account("client-0").private_key)
                model = DistributedModelForCausalLM.from_pretrained(
                    model_path, initial_peers=node.maddrs, wallet=wallet,
                    deployment=deployment, home=client_home,
                )  # fmt: skip
                try:
                    model.generate(prompt, max_new_tokens=3, do_sample=False)
                finally:
                    model.close()
            # the node has stopped: it redeemed every voucher it held on the way out
            channels = Contracts.from_deployment(deployment.connect(), deployment).payment_channels
            ledger_path = client_home / "client" / wallet.address / "ledger.sqlite"
            held, cost = _client_ledger(
                ledger_path, deployment.contracts.payment_channels, wallet.address
            )
            onchain = channels.get_channel(ChannelId(1))
            runs.append((held, cost, onchain.redeemed, channels.channel_count()))

    (held_1, cost_1, redeemed_1, count_1), (held_2, cost_2, redeemed_2, count_2) = runs
    assert cost_1 != cost_2 > 0
    assert held_1 == [(1, cost_1)] and redeemed_1 == cost_1 and count_1 == 1
    # the second chain: a new channel 1, paid from zero, and the node paid just that run
    assert held_2 == [(1, cost_2)]
    assert count_2 == 1 and redeemed_2 == cost_2

    # both ledgers of the first chain were set aside, not deleted
    client_dir = client_home / "client" / wallet.address
    node_dir = node.home / "node" / node.address
    assert len(list(client_dir.glob("ledger.stale-31337-*.sqlite"))) == 1
    assert len(list(node_dir.glob("ledger.stale-31337-*.sqlite"))) == 1
    assert len(list(node_dir.glob("inputs.ledger.stale-31337-*"))) == 1
    assert "earlier chain 31337" in node.logs(400)
