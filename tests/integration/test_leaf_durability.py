"""A step's leaf is in the ledger before its receipt leaves the node (issue 12, finding 2).

A receipt obliges the node to commit its leaf (docs/protocol.md §20a): a client holding a
receipt whose leaf the node never committed gets the node slashed. A real `python -m node serve`
process (committing nothing during the test) serves a paid session of decode steps and is
killed (kill -9 of its process group) right after the client received the last receipt; the
node's ledger must then hold every receipted step's leaf, and the index of its stored inputs
with the file on disk (a reveal of the step needs them).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from ledger.chain import Chain
from ledger.db import open_ledger, session_inputs, session_leaves, sqlite_url
from ledger.deployment import Deployment
from tests.integration.nodes import (
    Hop,
    NodeSpec,
    Payer,
    RouteSession,
    chain_snapshot,
    client_p2p,
    running_nodes,
)

pytestmark = pytest.mark.timeout(300)

NODE_ARGS = ("--commit-interval", "3600", "--redeem-interval", "3600")
DECODE_STEPS = 30  # after a 5-token prefill


def test_every_receipted_leaf_survives_a_kill_right_after_the_last_reply(
    deployment: Deployment, chain: Chain, model_path: Path, tmp_path: Path
) -> None:
    spec = NodeSpec("node-0", "0:4", args=NODE_ARGS)
    with chain_snapshot(chain), running_nodes(deployment, tmp_path, model_path, [spec]) as (node,):
        payer = Payer(deployment, chain)
        price = int(node.status()["price_per_token_per_block"])
        hop = Hop(node, payer.open_channel(node.address), price)
        with client_p2p(node.maddrs) as (runner, p2p):
            route = RouteSession(runner, p2p, payer, [hop]).open(64)
            generator = torch.Generator().manual_seed(0)
            # hidden: [batch, tokens, hidden]; mask: [batch, past + tokens]
            route.step(torch.randn(1, 5, 64, generator=generator), torch.ones(1, 5).long())
            for past in range(5, 5 + DECODE_STEPS):
                hidden = torch.randn(1, 1, 64, generator=generator)
                route.step(hidden, torch.ones(1, past + 1).long())
            os.killpg(node.pid, signal.SIGKILL)  # a crash right after the last reply
            node.process.wait(30)
        receipts = [hops[0] for hops in route.receipts]
        session_id = route.sessions[0].session_id
        home = node.home / "node" / node.address

    ledger = open_ledger(sqlite_url(home / "ledger.sqlite"))
    try:
        with ledger.begin() as db:
            stored = {row.step: row.leaf_hash for row in session_leaves(db, session_id, *hop.span)}
            inputs = {
                row.step: row.path
                for row in session_inputs(db, session_id, *hop.span, up_to_step=len(receipts))
            }
    finally:
        ledger.close()
    missing = [r.leaf.step for r in receipts if stored.get(r.leaf.step) != r.leaf.hash()]
    assert not missing, f"receipted steps {missing} of {len(receipts)} have no leaf in the ledger"
    assert sorted(inputs) == [r.leaf.step for r in receipts], "stored inputs are not indexed"
    unwritten = [s for s, rel in inputs.items() if not (home / "inputs" / rel).is_file()]
    assert not unwritten, f"the input files of steps {unwritten} are missing"
