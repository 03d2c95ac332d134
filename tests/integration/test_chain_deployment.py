"""Deployments: deploy_all on a real chain, the deployment file, and its validation."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount

from ledger.chain import Chain
from ledger.compile import PROJECT_ROOT, compile_contracts
from ledger.contracts import Contracts
from ledger.deployment import TOKEN, Deployment, DeploymentError, DeploymentParams, deploy_all
from ledger.types import Address, Wei


def test_deploy_all_wires_the_contracts_with_the_given_parameters(
    chain: Chain, dev_account: Callable[[str | int], LocalAccount]
) -> None:
    deployer = dev_account("client-2")
    params = DeploymentParams(
        token_supply=Wei(123 * TOKEN),
        min_stake_per_block=Wei(3 * TOKEN),
        unbonding_delay=500,
        max_channel_duration=900,
        min_verifier_stake=Wei(7 * TOKEN),
        quorum=2,
        slash_bps=1_000,
        bounty_bps=300,
        challenge_window=400,
        reward_recipient=Address(dev_account("client-1").address),
        commit_deadline=100,
        receipt_challenge_period=200,
        response_window=150,
        challenge_bond=Wei(TOKEN // 4),
    )

    deployment = deploy_all(
        chain,
        chain.sender(deployer),
        params,
        compile_contracts(),
        PROJECT_ROOT / "build" / "abi",
    )

    c = Contracts.from_deployment(chain, deployment)
    assert c.token.balance_of(deployer.address) == 123 * TOKEN
    assert c.node_registry.slasher() == deployment.contracts.slasher
    assert c.node_registry.min_stake_per_block() == 3 * TOKEN
    assert c.node_registry.unbonding_delay() == 500
    assert c.payment_channels.max_duration() == 900
    assert c.verifier_registry.min_stake() == 7 * TOKEN
    slasher = c.slasher.params()
    assert (slasher.quorum, slasher.slash_bps, slasher.bounty_bps) == (2, 1_000, 300)
    assert slasher.challenge_window == 400
    assert (slasher.commit_deadline, slasher.receipt_challenge_period) == (100, 200)
    assert (slasher.response_window, slasher.challenge_bond) == (150, TOKEN // 4)
    assert slasher.reward_recipient == dev_account("client-1").address
    assert deployment.deployer == deployer.address
    assert chain.w3.eth.get_block(deployment.deploy_block)["transactions"]  # the token's block
    assert len(set(dataclasses.astuple(deployment.contracts))) == 6


def test_deployment_file_round_trips(deployment: Deployment, tmp_path: Path) -> None:
    path = tmp_path / "deployment.json"

    deployment.save(path)

    assert Deployment.load(path) == deployment
    assert path.stat().st_mode & 0o777 == 0o600  # it holds dev keys


def test_deployment_load_names_what_is_wrong(deployment: Deployment, tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    no_slasher = tmp_path / "no-slasher.json"
    raw = deployment.to_json()
    del raw["contracts"]["Slasher"]
    no_slasher.write_text(json.dumps(raw))
    bad_param = tmp_path / "bad-param.json"
    raw = deployment.to_json()
    raw["params"]["slash_bps"] = 20_000
    bad_param.write_text(json.dumps(raw))

    with pytest.raises(DeploymentError, match="stakeswarm dev up"):
        Deployment.load(missing)
    with pytest.raises(DeploymentError, match="not valid JSON"):
        Deployment.load(garbage)
    with pytest.raises(DeploymentError, match="no address for Slasher"):
        Deployment.load(no_slasher)
    with pytest.raises(DeploymentError, match="slash_bps must be between 0 and 10000"):
        Deployment.load(bad_param)


def test_connect_refuses_another_chain_id(deployment: Deployment) -> None:
    elsewhere = dataclasses.replace(deployment, chain_id=1)

    with pytest.raises(DeploymentError, match="is chain 31337, but the deployment is on chain 1"):
        elsewhere.connect()


def test_connect_refuses_a_deployment_whose_contracts_are_gone(deployment: Deployment) -> None:
    stale = dataclasses.replace(
        deployment,
        contracts=dataclasses.replace(
            deployment.contracts, stake_token=Address("0x000000000000000000000000000000000000dEaD")
        ),
    )

    with pytest.raises(DeploymentError, match="no contract at the deployment's StakeToken"):
        stale.connect()


def test_params_validation() -> None:
    with pytest.raises(DeploymentError, match="challenge_window must not exceed unbonding_delay"):
        DeploymentParams(unbonding_delay=10, challenge_window=11)
    with pytest.raises(DeploymentError, match="must not exceed unbonding_delay"):
        DeploymentParams(
            unbonding_delay=1_000, commit_deadline=400, receipt_challenge_period=400,
            response_window=201, challenge_window=100,
        )  # fmt: skip
    with pytest.raises(DeploymentError, match="quorum"):
        DeploymentParams(quorum=0)
    with pytest.raises(DeploymentError, match="reward_recipient"):
        DeploymentParams(reward_recipient=Address("alice"))


def test_dev_accounts_by_name_role_and_index(deployment: Deployment) -> None:
    assert deployment.account("node-1").role == "node"
    assert deployment.account("verifier") == deployment.account("verifier-0")
    assert deployment.account(0).role == "deployer"
    assert deployment.account("5") == deployment.accounts[5]
    assert [a.name for a in deployment.accounts_with_role("client")] == [
        "client-0",
        "client-1",
        "client-2",
    ]
    with pytest.raises(DeploymentError, match="no dev account 'miner'"):
        deployment.account("miner")
    with pytest.raises(DeploymentError, match="no dev account #10"):
        deployment.account(10)
