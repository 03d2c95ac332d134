"""The pure parts of a local swarm: even block splits, dev accounts for N nodes, swarm configs,
model names."""

from __future__ import annotations

from pathlib import Path

import pytest

from stakeswarm.devnet import dev_roles
from stakeswarm.home import Home
from stakeswarm.swarm import SwarmConfig, SwarmError, accounts_for, resolve_model, split_blocks


def test_blocks_split_evenly_in_order() -> None:
    assert split_blocks(30, 3) == [(0, 10), (10, 20), (20, 30)]
    assert split_blocks(30, 4) == [(0, 8), (8, 16), (16, 23), (23, 30)]
    assert split_blocks(5, 5) == [(i, i + 1) for i in range(5)]
    assert split_blocks(7, 1) == [(0, 7)]
    with pytest.raises(SwarmError, match="6 nodes cannot split 5 blocks"):
        split_blocks(5, 6)
    with pytest.raises(SwarmError, match="at least one node"):
        split_blocks(5, 0)


@pytest.mark.parametrize("nodes", [1, 4, 5, 9])
def test_enough_dev_accounts_for_the_nodes(nodes: int) -> None:
    count = accounts_for(nodes)
    assert count >= 10
    roles = [role for _, role in dev_roles(count)]
    assert roles.count("node") >= nodes and "client" in roles and "verifier" in roles
    assert accounts_for(4) == 10  # the default devnet already has node-0..node-3


def test_a_swarm_config_names_its_nodes_spans_and_cheats(tmp_path: Path) -> None:
    config = SwarmConfig(tmp_path, nodes=3, faulty={2: "noise"}, node_args=("--price", "1"))
    specs = config.specs(7)
    assert [(s.account, s.blocks) for s in specs] == [
        ("node-0", "0:3"), ("node-1", "3:5"), ("node-2", "5:7"),
    ]  # fmt: skip
    assert specs[0].args == ("--price", "1")
    assert specs[2].args == ("--price", "1", "--faulty", "noise")
    with pytest.raises(SwarmError, match="unknown cheat mode 'lazy'"):
        SwarmConfig(tmp_path, faulty={0: "lazy"})
    with pytest.raises(SwarmError, match="faulty node 3 is not one of nodes 0..2"):
        SwarmConfig(tmp_path, nodes=3, faulty={3: "noise"})


def test_a_model_is_a_folder_with_a_config(tmp_path: Path) -> None:
    with pytest.raises(SwarmError, match="is not a model folder"):
        resolve_model(tmp_path, Home.resolve(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path), Home.resolve(tmp_path / "home")) == tmp_path.resolve()
