"""Every typed contract wrapper on the devnet: the happy path, and a revert decoded to the right
custom error with its arguments."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from ledger.chain import Chain, ContractRevert
from ledger.compile import PROJECT_ROOT, compile_contracts
from ledger.contracts import Batch, Contracts, NoSenderError
from ledger.contracts.commitments import UnknownBatchError
from ledger.deployment import TOKEN, Deployment, DeploymentParams, deploy_all
from ledger.eip712 import (
    recover_verdict_signer,
    recover_withheld_signer,
    sign_receipt,
    sign_verdict,
    sign_withheld,
    withheld_digest,
)
from ledger.merkle import MerkleTree
from ledger.types import BatchId, BlockIndex, Leaf, Reason, Verdict, Wei, WithheldVerdict, model_id

MODEL = model_id("tiny-llama")
PEER = b"\x00\x24\x08\x01\x12\x20" + b"\x07" * 32  # libp2p peer id bytes (ed25519 identity)


def register(
    node: Contracts, start: int = 0, end: int = 4, stake: Wei | None = None, price: int = 3
) -> None:
    required = node.node_registry.required_stake(start, end)
    node.node_registry.register_with_approve(
        MODEL,
        BlockIndex(start),
        BlockIndex(end),
        Wei(price),
        PEER,
        stake if stake is not None else required,
    )


def leaf(step: int, session: bytes = b"\x01" * 32, output: bytes = b"out") -> Leaf:
    return Leaf(
        session_id=session,
        model_id=MODEL,
        span_start=0,
        span_end=4,
        step=step,
        tokens=1,
        input_hash=keccak(b"in%d" % step),
        output_hash=keccak(output + b"%d" % step),
        sketch_hash=keccak(b"sketch%d" % step),
        issued_at=1_767_225_600 + step,
    )


# --- StakeToken ---------------------------------------------------------------------------


def test_token_reads_and_transfer(
    contracts_as: Callable[[str | int], Contracts], deployment: Deployment
) -> None:
    client = contracts_as("client-0")
    receiver = deployment.account("client-1").address
    before = client.token.balance_of(receiver)

    client.token.transfer(receiver, Wei(7 * TOKEN))

    assert client.token.balance_of(receiver) == before + 7 * TOKEN
    assert client.token.symbol() == deployment.params.token_symbol
    assert client.token.decimals() == 18
    assert client.token.total_supply() == deployment.params.token_supply


def test_token_ensure_allowance_approves_only_what_is_missing(
    contracts_as: Callable[[str | int], Contracts], deployment: Deployment
) -> None:
    client = contracts_as("client-0")
    owner = deployment.account("client-0").address
    spender = deployment.contracts.payment_channels

    first = client.token.ensure_allowance(spender, Wei(10))
    again = client.token.ensure_allowance(spender, Wei(10))
    more = client.token.ensure_allowance(spender, Wei(11))

    assert first is not None and more is not None
    assert again is None
    assert client.token.allowance(owner, spender) == 11


def test_token_without_sender_refuses_to_write(contracts: Contracts) -> None:
    with pytest.raises(NoSenderError, match="StakeToken.transfer"):
        contracts.token.transfer(contracts.slasher.address, Wei(1))


# --- NodeRegistry -------------------------------------------------------------------------


def test_node_registry_register_with_approve_then_read(
    contracts_as: Callable[[str | int], Contracts], deployment: Deployment
) -> None:
    node = contracts_as("node-0")
    address = deployment.account("node-0").address
    stake = Wei(4 * deployment.params.min_stake_per_block)

    result = node.node_registry.register_with_approve(
        MODEL, BlockIndex(2), BlockIndex(6), Wei(5), PEER, stake
    )

    info = node.node_registry.get_node(address)
    assert (info.model_id, info.span_start, info.span_end) == (MODEL, 2, 6)
    assert info.stake == stake and info.registered and info.peer_id == PEER
    assert info.price_per_token == 5 * 4
    assert node.node_registry.is_active(address)
    assert node.node_registry.total_staked() == stake
    assert result.event("NodeRegistered").args["stake"] == stake


def test_node_registry_register_with_enough_allowance_sends_no_approval(
    chain: Chain, contracts_as: Callable[[str | int], Contracts], deployment: Deployment
) -> None:
    node = contracts_as("node-0")
    address = deployment.account("node-0").address
    stake = node.node_registry.required_stake(0, 4)
    node.token.approve(node.node_registry.address, stake)
    nonce = chain.nonce(address)

    register(node, stake=stake)

    assert chain.nonce(address) == nonce + 1  # the register only
    assert node.token.allowance(address, node.node_registry.address) == 0


def test_node_registry_insufficient_stake_reverts_with_arguments(
    contracts_as: Callable[[str | int], Contracts], deployment: Deployment
) -> None:
    node = contracts_as("node-0")
    needed = node.node_registry.required_stake(0, 4)

    with pytest.raises(ContractRevert) as raised:
        register(node, stake=Wei(needed - 1))

    # simulated before approving: a registration that cannot succeed approves nothing
    assert (
        node.token.allowance(deployment.account("node-0").address, node.node_registry.address) == 0
    )
    assert raised.value.name == "StakeInsufficient"
    assert raised.value.arguments == {
        "account": deployment.account("node-0").address,
        "stake": needed - 1,
        "needed": needed,
    }


def test_node_registry_add_stake_unbond_withdraw(
    contracts_as: Callable[[str | int], Contracts],
    deployment: Deployment,
    advance_time: Callable[[int], None],
) -> None:
    node = contracts_as("node-0")
    address = deployment.account("node-0").address
    register(node)
    required = node.node_registry.required_stake(0, 4)
    node.node_registry.add_stake_with_approve(Wei(5 * TOKEN))
    balance = node.token.balance_of(address)

    node.node_registry.unbond(Wei(5 * TOKEN))
    with pytest.raises(ContractRevert) as locked:
        node.node_registry.withdraw()
    advance_time(deployment.params.unbonding_delay + 1)  # withdrawable strictly after release
    node.node_registry.withdraw()

    info = node.node_registry.get_node(address)
    assert locked.value.name == "StakeUnbondingLocked"
    assert locked.value.arguments["account"] == address
    assert info.stake == required and info.unbonding == 0
    assert node.token.balance_of(address) == balance + 5 * TOKEN


def test_node_registry_update_service(
    contracts_as: Callable[[str | int], Contracts], deployment: Deployment
) -> None:
    node = contracts_as("node-0")
    register(node, 0, 4)

    node.node_registry.update_service(MODEL, BlockIndex(1), BlockIndex(3), Wei(9), PEER)

    info = node.node_registry.get_node(deployment.account("node-0").address)
    assert (info.span_start, info.span_end, info.price_per_token_per_block) == (1, 3, 9)


# --- Commitments --------------------------------------------------------------------------


def test_commitments_commit_get_batch_and_follow_events(
    chain: Chain, contracts_as: Callable[[str | int], Contracts], deployment: Deployment
) -> None:
    node = contracts_as("node-0")
    register(node)
    since = chain.block_number() + 1
    roots = [keccak(b"root-a"), keccak(b"root-b")]

    ids = [
        node.commitments.committed_batch_id(node.commitments.commit(MODEL, root, 3))
        for root in roots
    ]

    assert ids == [1, 2]
    batch = node.commitments.get_batch(BatchId(2))
    assert batch.node == deployment.account("node-0").address
    assert (batch.root, batch.leaf_count) == (roots[1], 3)
    assert node.commitments.batch_hash(BatchId(2)) == batch.header_hash()
    assert batch.committed_at == chain.timestamp()
    assert node.commitments.batch_count() == 2
    followed = node.commitments.batches_committed(from_block=since)
    assert [(e.batch_id, e.root) for e in followed] == [(1, roots[0]), (2, roots[1])]
    assert node.commitments.batches_committed(from_block=since, node=batch.node)[1].root == roots[1]
    assert node.commitments.batches_committed(from_block=chain.block_number() + 1) == []


def test_commitments_inactive_node_reverts(
    contracts_as: Callable[[str | int], Contracts], deployment: Deployment
) -> None:
    stranger = contracts_as("client-0")

    with pytest.raises(ContractRevert) as raised:
        stranger.commitments.commit(MODEL, keccak(b"r"), 1)

    assert raised.value.name == "RegistryNodeInactive"
    assert raised.value.arguments == {"node": deployment.account("client-0").address}


def test_commitments_unknown_batch_read_raises(contracts: Contracts) -> None:
    with pytest.raises(UnknownBatchError, match="no batch 99 was committed"):
        contracts.commitments.get_batch(BatchId(99))

    assert contracts.commitments.batch_hash(BatchId(99)) == bytes(32)


def test_commitments_refuse_a_batch_beyond_the_leaf_cap(
    contracts_as: Callable[[str | int], Contracts], deployment: Deployment
) -> None:
    node = contracts_as("node-0")
    register(node)
    cap = node.commitments.max_leaves()

    with pytest.raises(ContractRevert) as raised:
        node.commitments.commit(MODEL, keccak(b"r"), cap + 1)

    assert cap == deployment.params.max_leaves
    assert (
        raised.value.signature == f"CommitmentsTooManyLeaves(leafCount={cap + 1}, maxLeaves={cap})"
    )


# --- PaymentChannels ----------------------------------------------------------------------


def test_channels_open_with_approve_and_reclaim_after_expiry(
    chain: Chain,
    contracts_as: Callable[[str | int], Contracts],
    deployment: Deployment,
    advance_time: Callable[[int], None],
) -> None:
    client = contracts_as("client-0")
    server = deployment.account("node-0").address
    client_address = deployment.account("client-0").address
    expiry = chain.timestamp() + 3_600
    balance = client.token.balance_of(client_address)

    channel_id = client.payment_channels.opened_channel_id(
        client.payment_channels.open_with_approve(server, Wei(50 * TOKEN), expiry)
    )
    channel = client.payment_channels.get_channel(channel_id)
    with pytest.raises(ContractRevert) as early:
        client.payment_channels.reclaim(channel_id)
    advance_time(3_601)
    client.payment_channels.reclaim(channel_id)

    assert (channel.client, channel.server, channel.deposit) == (
        client_address,
        server,
        50 * TOKEN,
    )
    assert channel.expiry == expiry and channel.remaining == 50 * TOKEN
    assert early.value.signature == f"ChannelsNotExpired(channelId={channel_id}, expiry={expiry})"
    closed = client.payment_channels.get_channel(channel_id)
    assert closed.closed and closed.remaining == 0
    assert client.token.balance_of(client_address) == balance
    assert client.payment_channels.total_escrowed() == 0


def test_channels_top_up_moves_deposit_and_expiry(
    chain: Chain, contracts_as: Callable[[str | int], Contracts], deployment: Deployment
) -> None:
    client = contracts_as("client-0")
    server = deployment.account("node-0").address
    expiry = chain.timestamp() + 600
    channel_id = client.payment_channels.opened_channel_id(
        client.payment_channels.open_with_approve(server, Wei(TOKEN), expiry)
    )

    client.payment_channels.top_up_with_approve(channel_id, Wei(2 * TOKEN), expiry + 600)

    channel = client.payment_channels.get_channel(channel_id)
    assert (channel.deposit, channel.expiry) == (3 * TOKEN, expiry + 600)
    assert client.payment_channels.total_escrowed() == 3 * TOKEN


def test_channels_invalid_expiry_reverts_with_bounds(
    chain: Chain, contracts_as: Callable[[str | int], Contracts], deployment: Deployment
) -> None:
    client = contracts_as("client-0")
    too_late = chain.timestamp() + deployment.params.max_channel_duration + 1_000

    with pytest.raises(ContractRevert) as raised:
        client.payment_channels.open_with_approve(
            deployment.account("node-0").address, Wei(TOKEN), too_late
        )

    assert raised.value.name == "ChannelsInvalidExpiry"
    assert raised.value.arguments["expiry"] == too_late
    assert raised.value.arguments["latest"] < too_late


# --- VerifierRegistry ---------------------------------------------------------------------


def test_verifier_register_with_approve_and_unbond(
    contracts_as: Callable[[str | int], Contracts], deployment: Deployment
) -> None:
    verifier = contracts_as("verifier-0")
    address = deployment.account("verifier-0").address
    stake = Wei(deployment.params.min_verifier_stake + TOKEN)

    verifier.verifier_registry.register_with_approve(stake)
    verifier.verifier_registry.unbond(Wei(TOKEN))

    info = verifier.verifier_registry.get_verifier(address)
    assert info.registered and info.stake == deployment.params.min_verifier_stake
    assert info.unbonding == TOKEN and info.unbonding_release_at > 0
    assert verifier.verifier_registry.is_active(address)
    assert verifier.verifier_registry.total_staked() == stake


def test_verifier_insufficient_stake_reverts_with_arguments(
    contracts_as: Callable[[str | int], Contracts], deployment: Deployment
) -> None:
    verifier = contracts_as("verifier-0")
    minimum = deployment.params.min_verifier_stake

    with pytest.raises(ContractRevert) as raised:
        verifier.verifier_registry.register_with_approve(Wei(minimum - 1))

    assert raised.value.arguments == {
        "account": deployment.account("verifier-0").address,
        "stake": minimum - 1,
        "needed": minimum,
    }
    assert raised.value.name == "StakeInsufficient"


# --- Slasher ------------------------------------------------------------------------------


def committed_tree(node: Contracts, leaves: list[Leaf]) -> tuple[Batch, MerkleTree]:
    tree = MerkleTree([item.hash() for item in leaves])
    result = node.commitments.commit(MODEL, tree.root, len(leaves))
    return node.commitments.committed_batch(result), tree


def test_slash_with_a_verdict_quorum_takes_stake_and_pays_the_bounty(
    contracts_as: Callable[[str | int], Contracts],
    deployment: Deployment,
    dev_account: Callable[[str | int], LocalAccount],
) -> None:
    node, verifier = contracts_as("node-0"), contracts_as("verifier-0")
    node_address = deployment.account("node-0").address
    verifier_address = deployment.account("verifier-0").address
    register(node)
    verifier.verifier_registry.register_with_approve(deployment.params.min_verifier_stake)
    leaves = [leaf(step) for step in range(3)]
    batch, tree = committed_tree(node, leaves)
    batch_id = batch.batch_id
    guilty = leaves[1]
    verdict = Verdict(node_address, batch_id, guilty.hash(), Reason.MISMATCH)
    signature = sign_verdict(verifier.slasher.domain(), verdict, dev_account("verifier-0"))
    stake = node.node_registry.get_node(node_address).stake
    balance = verifier.token.balance_of(verifier_address)

    result = verifier.slasher.slash(
        guilty,
        batch,
        1,
        tree.proof(1),
        Reason.MISMATCH,
        [Verdict(node_address, batch_id, guilty.hash(), Reason.MISMATCH, signature=signature)],
    )

    params = deployment.params
    taken = stake * params.slash_bps // 10_000
    bounty = taken * params.bounty_bps // 10_000
    event = verifier.slasher.leaves_slashed(from_block=result.block_number)[0]
    assert (event.node, event.batch_id, event.leaf, event.reason) == (
        node_address,
        batch_id,
        guilty.hash(),
        Reason.MISMATCH,
    )
    assert event.amount == taken and event.bounty_per_verifier == bounty
    assert node.node_registry.get_node(node_address).stake == stake - taken
    assert verifier.token.balance_of(verifier_address) == balance + bounty
    assert verifier.slasher.reward_pool() == taken - bounty
    assert verifier.slasher.is_leaf_slashed(node_address, guilty.hash())
    assert verifier.slasher.verify_leaf(guilty, batch, 1, tree.proof(1))


def test_slash_by_a_non_verifier_reverts_naming_the_signer(
    contracts_as: Callable[[str | int], Contracts],
    deployment: Deployment,
    dev_account: Callable[[str | int], LocalAccount],
) -> None:
    node, outsider = contracts_as("node-0"), contracts_as("client-0")
    node_address = deployment.account("node-0").address
    register(node)
    leaves = [leaf(0), leaf(1)]
    batch, tree = committed_tree(node, leaves)
    batch_id = batch.batch_id
    verdict = Verdict(node_address, batch_id, leaves[0].hash(), Reason.WITHHELD)
    signature = sign_verdict(outsider.slasher.domain(), verdict, dev_account("client-0"))

    with pytest.raises(ContractRevert) as raised:
        outsider.slasher.slash(
            leaves[0],
            batch,
            0,
            tree.proof(0),
            Reason.WITHHELD,
            [
                Verdict(
                    node_address, batch_id, leaves[0].hash(), Reason.WITHHELD, signature=signature
                )
            ],
        )

    assert raised.value.signature == (
        f"SlasherNotAVerifier(signer={deployment.account('client-0').address})"
    )


def test_slash_refuses_verdicts_about_another_leaf(
    contracts_as: Callable[[str | int], Contracts], deployment: Deployment
) -> None:
    verifier = contracts_as("verifier-0")
    node_address = deployment.account("node-0").address
    other = Verdict(node_address, BatchId(1), b"\x09" * 32, Reason.MISMATCH)
    batch = Batch(BatchId(1), node_address, MODEL, b"\x01" * 32, 1, 1)

    with pytest.raises(ValueError, match="another batch or leaf"):
        verifier.slasher.slash(leaf(0), batch, 0, [], Reason.MISMATCH, [other])


def test_slash_withheld_takes_stake_once_per_position(
    contracts_as: Callable[[str | int], Contracts],
    deployment: Deployment,
    dev_account: Callable[[str | int], LocalAccount],
) -> None:
    node, verifier = contracts_as("node-0"), contracts_as("verifier-0")
    node_address = deployment.account("node-0").address
    verifier_address = deployment.account("verifier-0").address
    register(node)
    verifier.verifier_registry.register_with_approve(deployment.params.min_verifier_stake)
    batch, _ = committed_tree(node, [leaf(step) for step in range(3)])
    batch_id = batch.batch_id
    unsigned = WithheldVerdict(node_address, batch_id, 2)
    domain = verifier.slasher.domain()
    signed = dataclasses.replace(
        unsigned, signature=sign_withheld(domain, unsigned, dev_account("verifier-0"))
    )
    assert verifier.slasher.withheld_digest(node_address, batch_id, 2) == withheld_digest(
        domain, unsigned
    )
    stake = node.node_registry.get_node(node_address).stake
    balance = verifier.token.balance_of(verifier_address)

    result = verifier.slasher.slash_withheld(batch, 2, [signed])

    params = deployment.params
    taken = stake * params.slash_bps // 10_000
    bounty = taken * params.bounty_bps // 10_000
    (event,) = verifier.slasher.leaves_withheld_slashed(
        from_block=result.block_number, node=node_address
    )
    assert (event.node, event.batch_id, event.leaf_index) == (node_address, batch_id, 2)
    assert event.amount == taken and event.bounty_per_verifier == bounty
    assert event.tx_hash == result.tx_hash
    assert node.node_registry.get_node(node_address).stake == stake - taken
    assert verifier.token.balance_of(verifier_address) == balance + bounty
    assert verifier.slasher.is_withheld_slashed(batch_id, 2)
    assert not verifier.slasher.is_withheld_slashed(batch_id, 1)
    assert verifier.slasher.leaves_slashed(from_block=result.block_number) == []

    with pytest.raises(ContractRevert) as again:
        verifier.slasher.slash_withheld(batch, 2, [signed])
    assert again.value.signature == (
        f"SlasherWithheldAlreadySlashed(batchId={batch_id}, leafIndex=2)"
    )
    beyond = WithheldVerdict(node_address, batch_id, 3)
    beyond = dataclasses.replace(
        beyond, signature=sign_withheld(domain, beyond, dev_account("verifier-0"))
    )
    with pytest.raises(ContractRevert) as out_of_range:
        verifier.slasher.slash_withheld(batch, 3, [beyond])
    assert out_of_range.value.signature == (
        f"SlasherLeafIndexOutOfRange(batchId={batch_id}, leafIndex=3, leafCount=3)"
    )


def test_slash_withheld_refuses_verdicts_about_another_position(
    contracts_as: Callable[[str | int], Contracts], deployment: Deployment
) -> None:
    verifier = contracts_as("verifier-0")
    node_address = deployment.account("node-0").address
    other = WithheldVerdict(node_address, BatchId(1), 4, signature=b"\x01" * 65)
    unsigned = WithheldVerdict(node_address, BatchId(1), 3)
    batch = Batch(BatchId(1), node_address, MODEL, b"\x01" * 32, 5, 1)

    with pytest.raises(ValueError, match="about batch 1 leaf 4, not batch 1 leaf 3"):
        verifier.slasher.slash_withheld(batch, 3, [other])
    with pytest.raises(ValueError, match="not signed"):
        verifier.slasher.slash_withheld(batch, 3, [unsigned])


def test_slash_equivocation_pays_the_reporter(
    contracts_as: Callable[[str | int], Contracts],
    deployment: Deployment,
    dev_account: Callable[[str | int], LocalAccount],
) -> None:
    node, reporter = contracts_as("node-0"), contracts_as("client-0")
    node_address = deployment.account("node-0").address
    register(node)
    a, b = leaf(4, output=b"honest"), leaf(4, output=b"other")
    domain = reporter.slasher.domain()
    receipt_a = sign_receipt(domain, a, dev_account("node-0"))
    receipt_b = sign_receipt(domain, b, dev_account("node-0"))
    stake = node.node_registry.get_node(node_address).stake

    result = reporter.slasher.slash_equivocation(node_address, a, receipt_a, b, receipt_b)

    event = result.event("EquivocationSlashed")
    assert event.args["reporter"] == deployment.account("client-0").address
    assert node.node_registry.get_node(node_address).stake == stake - event.args["amount"]


def test_slash_equivocation_with_identical_leaves_reverts(
    contracts_as: Callable[[str | int], Contracts],
    deployment: Deployment,
    dev_account: Callable[[str | int], LocalAccount],
) -> None:
    node, reporter = contracts_as("node-0"), contracts_as("client-0")
    register(node)
    a = leaf(4)
    receipt = sign_receipt(reporter.slasher.domain(), a, dev_account("node-0"))

    with pytest.raises(ContractRevert) as raised:
        reporter.slasher.slash_equivocation(
            deployment.account("node-0").address, a, receipt, a, receipt
        )

    assert raised.value.signature == "SlasherNotEquivocation()"


def test_slasher_params_and_reward_pool_release(
    contracts_as: Callable[[str | int], Contracts], deployment: Deployment
) -> None:
    anyone = contracts_as("client-1")
    params = anyone.slasher.params()

    with pytest.raises(ContractRevert) as empty:
        anyone.slasher.release_reward_pool()

    assert params.quorum == deployment.params.quorum
    assert (params.slash_bps, params.bounty_bps) == (
        deployment.params.slash_bps,
        deployment.params.bounty_bps,
    )
    assert params.challenge_window == deployment.params.challenge_window
    assert params.reward_recipient == deployment.deployer
    assert empty.value.signature == "SlasherEmptyRewardPool()"


def test_slash_with_a_quorum_of_two_sends_verdicts_sorted_by_signer(
    chain: Chain, dev_account: Callable[[str | int], LocalAccount]
) -> None:
    deployer = dev_account("client-2")
    params = DeploymentParams(quorum=2)
    deployment = deploy_all(
        chain, chain.sender(deployer), params, compile_contracts(), PROJECT_ROOT / "build" / "abi"
    )
    funder = Contracts.from_deployment(chain, deployment, chain.sender(deployer))
    names = ("node-0", "verifier-0", "verifier-1")
    for name in names:
        funder.token.transfer(dev_account(name).address, Wei(1_000 * TOKEN))
    node, *verifiers = (
        Contracts.from_deployment(chain, deployment, chain.sender(dev_account(name)))
        for name in names
    )
    register(node)
    for verifier in verifiers:
        verifier.verifier_registry.register_with_approve(params.min_verifier_stake)
    leaves = [leaf(step) for step in range(2)]
    batch, tree = committed_tree(node, leaves)
    batch_id = batch.batch_id
    node_address = dev_account("node-0").address
    guilty = Verdict(node_address, batch_id, leaves[0].hash(), Reason.MISMATCH)
    domain = node.slasher.domain()
    signed = [
        dataclasses.replace(guilty, signature=sign_verdict(domain, guilty, dev_account(name)))
        for name in ("verifier-0", "verifier-1")
    ]
    # hand them over in descending signer order: the wrapper must sort them
    signed.sort(key=lambda v: int(recover_verdict_signer(domain, v, v.signature), 16), reverse=True)

    with pytest.raises(ContractRevert) as short:
        verifiers[0].slasher.slash(leaves[0], batch, 0, tree.proof(0), Reason.MISMATCH, signed[:1])
    result = verifiers[0].slasher.slash(leaves[0], batch, 0, tree.proof(0), Reason.MISMATCH, signed)

    assert short.value.signature == "SlasherWrongVerdictCount(provided=1, quorum=2)"
    assert result.event("LeafSlashed").args["node"] == node_address
    assert verifiers[0].slasher.is_leaf_slashed(node_address, leaves[0].hash())

    # withheld verdicts too, handed over unsorted and without their signers
    withheld = WithheldVerdict(node_address, batch_id, 1)
    unsorted = [
        dataclasses.replace(withheld, signature=sign_withheld(domain, withheld, dev_account(name)))
        for name in ("verifier-0", "verifier-1")
    ]
    unsorted.sort(
        key=lambda v: int(recover_withheld_signer(domain, v, v.signature), 16), reverse=True
    )
    result = verifiers[1].slasher.slash_withheld(batch, 1, unsorted)
    assert result.event("LeafWithheldSlashed").args["leafIndex"] == 1
