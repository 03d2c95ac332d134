"""When a voucher counts as spent (docs/protocol.md §15a), with a real node process on Anvil.

node-0 serves every block with `--faulty fail-after-payment`: the first decode step it serves
fails after the node accepted the step's voucher (its output overflows, as a float16 node's
can). The node keeps that voucher and says so (`spent`); the client must keep it too. If the
client rolled its channel back instead, the two ledgers would disagree, and the client's next
voucher of the same cost would be refused as a replay.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from eth_account import Account

from client.errors import NoRouteError
from client.model import DistributedModelForCausalLM
from ledger.contracts import Contracts
from ledger.db import client_channels, get_channel, open_ledger, receipts_of, sqlite_url
from ledger.deployment import Deployment
from ledger.types import ChannelId
from stakeswarm.tiny_models import make_tiny_model
from tests.integration.nodes import NodeSpec, chain_snapshot, running_nodes

pytestmark = pytest.mark.timeout(600)

NODE_ARGS = ("--commit-interval", "2", "--redeem-interval", "3600", "--announce-interval", "2")
PROMPT = torch.tensor([[1, 17, 42, 99, 7]])


def test_a_step_that_fails_after_payment_is_paid_on_both_sides(
    deployment: Deployment, tmp_path: Path
) -> None:
    model_path = make_tiny_model(tmp_path / "model", "llama", 4)
    wallet = Account.from_key(deployment.account("client-0").private_key)
    contract = deployment.contracts.payment_channels
    chain = deployment.connect()
    home = tmp_path / "client"
    client_ledger = home / "client" / wallet.address / "ledger.sqlite"
    spec = NodeSpec("node-0", "0:4", args=(*NODE_ARGS, "--faulty", "fail-after-payment"))

    def client() -> DistributedModelForCausalLM:
        return DistributedModelForCausalLM.from_pretrained(
            model_path, initial_peers=node.maddrs, wallet=wallet, deployment=deployment,
            home=home,
        )  # fmt: skip

    def client_record() -> tuple[int, int, int]:
        """(channel id, the client's voucher amount, what its kept receipts cost)."""
        ledger = open_ledger(sqlite_url(client_ledger))
        try:
            with ledger.begin() as db:
                (channel,) = client_channels(db, deployment.chain_id, contract, wallet.address)
                cost = sum(r.cost for r in receipts_of(db))
                return channel.channel_id, channel.voucher_amount, cost
        finally:
            ledger.close()

    def node_record(channel_id: int) -> int:
        """The highest voucher amount the node holds on `channel_id`."""
        ledger = open_ledger(sqlite_url(node.home / "node" / node.address / "ledger.sqlite"))
        try:
            with ledger.begin() as db:
                row = get_channel(db, deployment.chain_id, contract, channel_id)
                assert row is not None
                return row.voucher_amount
        finally:
            ledger.close()

    with chain_snapshot(chain), running_nodes(deployment, tmp_path / "swarm", model_path,
                                              [spec]) as (node,):  # fmt: skip
        price_per_token = int(node.status()["price_per_token_per_block"]) * 4
        model = client()
        try:
            # prefill served, the first decode step fails after payment; no other server
            with pytest.raises(NoRouteError):
                model.generate(PROMPT, max_new_tokens=3, do_sample=False)
        finally:
            model.close()
        channel_id, held, received = client_record()
        # both sides count the failed step as paid: the prefill's receipt and one more token
        assert received == PROMPT.numel() * price_per_token
        assert held == received + price_per_token
        assert node_record(channel_id) == held

        # the next step costs what the failed one did (one token): its voucher builds on the
        # spent one and is accepted (a client that rolled back would sign a replay)
        model = client()
        try:
            out = model.generate(torch.tensor([[5]]), max_new_tokens=2, do_sample=False)
        finally:
            model.close()
        assert out.shape == (1, 3)
        _, held_after, _ = client_record()
        assert held_after == held + 2 * price_per_token
        assert node_record(channel_id) == held_after
        node.stop()  # a stopping node redeems the highest voucher it holds
        channels = Contracts.from_deployment(chain, deployment).payment_channels
        assert channels.get_channel(ChannelId(channel_id)).redeemed == held_after
