"""ledger.eip712 and ledger.merkle against the deployed contracts: what Python signs and proves,
Solidity accepts."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from ledger.chain import Chain, ContractRevert
from ledger.contracts import Contracts
from ledger.deployment import TOKEN, Deployment
from ledger.eip712 import (
    Domain,
    receipt_digest,
    sign_voucher,
    verdict_digest,
    voucher_digest,
)
from ledger.merkle import MerkleTree
from ledger.types import (
    BatchId,
    BlockIndex,
    ChannelId,
    Leaf,
    Reason,
    Verdict,
    Voucher,
    Wei,
    model_id,
)

MODEL = model_id("merkle-model")


def make_leaf(step: int, session: bytes = b"\x0a" * 32) -> Leaf:
    return Leaf(
        session_id=session,
        model_id=MODEL,
        span_start=3,
        span_end=7,
        step=step,
        tokens=step % 5 + 1,
        input_hash=keccak(b"input-%d" % step),
        output_hash=keccak(b"output-%d" % step),
        sketch_hash=keccak(b"sketch-%d" % step),
        issued_at=1_767_225_600 + step,
    )


def open_channel(chain: Chain, client: Contracts, server: str, deposit: int) -> ChannelId:
    result = client.payment_channels.open_with_approve(
        server, Wei(deposit), chain.timestamp() + 600
    )
    return client.payment_channels.opened_channel_id(result)


def test_voucher_signed_in_python_is_redeemed_on_chain(
    chain: Chain,
    contracts_as: Callable[[str | int], Contracts],
    deployment: Deployment,
    dev_account: Callable[[str | int], LocalAccount],
) -> None:
    client, server = contracts_as("client-0"), contracts_as("node-0")
    server_address = deployment.account("node-0").address
    channel_id = open_channel(chain, client, server_address, 10 * TOKEN)
    domain = client.payment_channels.domain()
    balance = server.token.balance_of(server_address)

    for cumulative in (2 * TOKEN, 5 * TOKEN):
        voucher = Voucher(channel_id, cumulative)
        assert voucher_digest(domain, voucher) == client.payment_channels.voucher_digest(
            channel_id, Wei(cumulative)
        )
        signature = sign_voucher(domain, voucher, dev_account("client-0"))
        server.payment_channels.redeem_voucher(Voucher(channel_id, cumulative, signature))

    channel = server.payment_channels.get_channel(channel_id)
    assert channel.redeemed == 5 * TOKEN
    assert server.token.balance_of(server_address) == balance + 5 * TOKEN


def test_voucher_signed_by_another_key_reverts_invalid_signature(
    chain: Chain,
    contracts_as: Callable[[str | int], Contracts],
    deployment: Deployment,
    dev_account: Callable[[str | int], LocalAccount],
) -> None:
    client, server = contracts_as("client-0"), contracts_as("node-0")
    channel_id = open_channel(chain, client, deployment.account("node-0").address, TOKEN)
    domain = client.payment_channels.domain()
    forger = dev_account("client-1")
    signature = sign_voucher(domain, Voucher(channel_id, TOKEN), forger)

    with pytest.raises(ContractRevert) as raised:
        server.payment_channels.redeem(channel_id, Wei(TOKEN), signature)

    assert raised.value.name == "ChannelsInvalidSignature"
    assert raised.value.arguments == {"channelId": channel_id, "signer": forger.address}


def test_voucher_for_another_chain_id_is_rejected(
    chain: Chain,
    contracts_as: Callable[[str | int], Contracts],
    deployment: Deployment,
    dev_account: Callable[[str | int], LocalAccount],
) -> None:
    client, server = contracts_as("client-0"), contracts_as("node-0")
    channel_id = open_channel(chain, client, deployment.account("node-0").address, TOKEN)
    salt = client.payment_channels.eip712_salt
    elsewhere = Domain.payment_channels(
        chain.chain_id + 1, deployment.contracts.payment_channels, salt
    )
    signature = sign_voucher(elsewhere, Voucher(channel_id, TOKEN), dev_account("client-0"))

    with pytest.raises(ContractRevert) as raised:
        server.payment_channels.redeem(channel_id, Wei(TOKEN), signature)

    assert raised.value.name == "ChannelsInvalidSignature"


def test_receipt_and_verdict_digests_and_leaf_hash_equal_the_contracts(
    chain: Chain, contracts: Contracts, deployment: Deployment
) -> None:
    domain = contracts.slasher.domain()
    node = deployment.account("node-0").address

    for step in (0, 1, 4_000_000_000):
        leaf = make_leaf(step, session=keccak(b"session-%d" % step))
        assert contracts.slasher.leaf_hash(leaf) == leaf.hash()
        assert contracts.slasher.receipt_digest(leaf) == receipt_digest(domain, leaf)
        latest = dataclasses.replace(leaf, issued_at=2**64 - 1)  # issuedAt is a uint64
        assert contracts.slasher.leaf_hash(latest) == latest.hash() != leaf.hash()
        assert contracts.slasher.receipt_digest(latest) == receipt_digest(domain, latest)
        for reason in (Reason.MISMATCH, Reason.WITHHELD):
            verdict = Verdict(node, BatchId(step + 1), leaf.hash(), reason)
            assert contracts.slasher.verdict_digest(
                node, BatchId(step + 1), leaf.hash(), reason
            ) == verdict_digest(domain, verdict)


@pytest.mark.parametrize("count", [1, 2, 3, 5, 6, 1_000])
def test_merkle_proofs_built_in_python_verify_on_chain(
    count: int, contracts_as: Callable[[str | int], Contracts]
) -> None:
    node = contracts_as("node-0")
    required = node.node_registry.required_stake(3, 7)
    node.node_registry.register_with_approve(
        MODEL, BlockIndex(3), BlockIndex(7), Wei(1), b"peer", required
    )
    leaves = [make_leaf(step) for step in range(count)]
    tree = MerkleTree([item.hash() for item in leaves])
    batch = node.commitments.committed_batch(node.commitments.commit(MODEL, tree.root, count))
    # every leaf of the small trees; for 1,000 a spread of indices and both ends of the odd tail
    indices = sorted(
        set(range(count)) if count <= 6 else {*range(0, count, 37), count - 2, count - 1}
    )

    for index in indices:
        assert node.slasher.verify_leaf(leaves[index], batch, index, tree.proof(index)), index
    outsider = make_leaf(count + 1)
    assert not node.slasher.verify_leaf(outsider, batch, 0, tree.proof(0))
    assert not node.slasher.verify_leaf(leaves[0], batch, count, tree.proof(0))  # beyond the batch
    if count > 1:
        assert not node.slasher.verify_leaf(leaves[0], batch, 0, tree.proof(1))
        # the right proof at the wrong position: positions are bound
        assert not node.slasher.verify_leaf(leaves[0], batch, 1, tree.proof(0))
    # a header that is not the committed one proves nothing
    forged = dataclasses.replace(batch, leaf_count=batch.leaf_count + 1)
    assert not node.slasher.verify_leaf(leaves[0], forged, 0, tree.proof(0))
