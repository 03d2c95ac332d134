"""Nodes without --blocks choose their span from the swarm, and move when it clearly helps."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ledger.contracts import Contracts
from ledger.deployment import Deployment
from stakeswarm.tiny_models import make_tiny_model
from tests.integration.nodes import NodeSpec, chain_snapshot, running_nodes, start_node

pytestmark = pytest.mark.timeout(600)


def test_a_node_takes_the_uncovered_blocks_and_moves_there_when_its_blocks_get_covered(
    deployment: Deployment, tmp_path: Path
) -> None:
    model_path = make_tiny_model(tmp_path, "llama", 4, with_tokenizer=False)
    chain = deployment.connect()
    registry = Contracts.from_deployment(chain, deployment).node_registry
    mover = NodeSpec("node-0", num_blocks=2, args=("--rebalance-interval", "2"))
    with (
        chain_snapshot(chain),
        running_nodes(deployment, tmp_path / "nodes", model_path, [mover]) as nodes,
    ):
        first = nodes[0]
        assert first.span == (0, 2)  # an empty swarm: the lowest window
        # A second chooser takes the blocks nobody serves.
        chooser = start_node(
            NodeSpec("node-1", num_blocks=2), deployment, tmp_path / "nodes", model_path,
            initial_peers=first.maddrs,
        )  # fmt: skip
        fixed = start_node(
            NodeSpec("node-2", "0:2"), deployment, tmp_path / "nodes", model_path,
            initial_peers=first.maddrs,
        )  # fmt: skip
        nodes += [chooser, fixed]
        chooser.wait_ready()
        fixed.wait_ready()
        assert chooser.span == (2, 4)
        assert registry.get_node(chooser.address).span_start == 2

        # Now [0, 2) is served twice and [2, 4) once: after the chooser leaves, the first
        # node's blocks are covered by the fixed node and [2, 4) is empty, so it moves.
        assert chooser.stop() == 0
        deadline = time.monotonic() + 90
        while first.status()["span"] != [2, 4]:
            assert time.monotonic() < deadline, f"no move:\n{first.logs()}"
            time.sleep(1)
        node = registry.get_node(first.address)
        assert (node.span_start, node.span_end) == (2, 4)  # updateService on-chain
        assert first.status()["state"] == "online"
