"""Shared chain fixtures for every integration test: ONE devnet per test session.

Anvil starts once per session (on 127.0.0.1, a free port), the contracts are compiled (cached
in build/) and deployed once, the dev accounts are funded once. Each test that asks for
`chain` (or anything built on it) runs between an `evm_snapshot` and an `evm_revert`, so it
sees the freshly deployed state and may change anything. Anvil is stopped by its PID when the
session ends. Use `advance_time` instead of sleeping.

Fixtures:
    devnet_home         session  the `Home` the devnet lives in (`--home` for CLI tests)
    deployment          session  the `Deployment` (addresses, params, dev accounts with keys)
    chain               test     a `Chain` on the devnet; state is reverted after the test
    contracts           test     read-only `Contracts` of the deployment
    contracts_as        test     contracts_as("node-0") -> `Contracts` sending as that dev account
    dev_account         test     dev_account("client") -> `LocalAccount` (name, role or index)
    advance_time        test     advance_time(seconds): next block is that much later (mined)
    model_path          module   a tiny 6-block Llama folder (a module may override it)
    nodes               module   the module's `node_specs` fixture started as real node processes
                                 on `model_path`, shared by its tests; their on-chain work is
                                 reverted once they stopped

Dev accounts (10): deployer, node-0..node-3, client-0..client-2, verifier-0, verifier-1; each
non-deployer holds 100,000 stake tokens. Parameters are `DeploymentParams()` (quorum 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.chain import Chain
from ledger.contracts import Contracts
from ledger.deployment import Deployment
from stakeswarm.devnet import Devnet, DevnetConfig
from stakeswarm.home import Home
from stakeswarm.tiny_models import make_tiny_model
from tests.integration.nodes import NodeProcess, NodeSpec, reverted_nodes


@pytest.fixture(scope="session")
def devnet_home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    return Home.resolve(tmp_path_factory.mktemp("stakeswarm-home"))


@pytest.fixture(scope="session")
def deployment(devnet_home: Home) -> Iterator[Deployment]:
    with Devnet.start(DevnetConfig(home=devnet_home)) as deployed:
        yield deployed


@pytest.fixture(scope="session")
def _session_chain(deployment: Deployment) -> Chain:
    return deployment.connect()


@pytest.fixture
def chain(_session_chain: Chain) -> Iterator[Chain]:
    snapshot = _session_chain.rpc("evm_snapshot")
    try:
        yield _session_chain
    finally:
        _session_chain.rpc("evm_revert", [snapshot])
        _session_chain.reset_nonces()


@pytest.fixture
def contracts(chain: Chain, deployment: Deployment) -> Contracts:
    return Contracts.from_deployment(chain, deployment)


@pytest.fixture
def dev_account(deployment: Deployment) -> Callable[[str | int], LocalAccount]:
    def account(selector: str | int) -> LocalAccount:
        return Account.from_key(deployment.account(selector).private_key)

    return account


@pytest.fixture
def contracts_as(
    chain: Chain, deployment: Deployment, dev_account: Callable[[str | int], LocalAccount]
) -> Callable[[str | int], Contracts]:
    def build(selector: str | int) -> Contracts:
        return Contracts.from_deployment(chain, deployment, chain.sender(dev_account(selector)))

    return build


@pytest.fixture
def advance_time(chain: Chain) -> Callable[[int], None]:
    def advance(seconds: int) -> None:
        chain.rpc("evm_increaseTime", [seconds])
        chain.rpc("evm_mine")

    return advance


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model"), "llama", 6)


@pytest.fixture(scope="module")
def nodes(
    deployment: Deployment,
    model_path: Path,
    node_specs: Sequence[NodeSpec],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[NodeProcess]]:
    workdir = tmp_path_factory.mktemp("nodes")
    with reverted_nodes(deployment, workdir, model_path, node_specs) as started:
        yield started
