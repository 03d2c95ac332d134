"""`verifier.slashing.Slashing` against the devnet's contracts, in-process: our withheld findings
and the quorum's, their checks, the submission (and its retry when the chain failed it), and
the one-slash-per-sampled-leaf rule. The DHT is not involved: findings are handed over as the
`VerdictBoard` would read them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from sqlalchemy import select

from ledger.chain import Chain
from ledger.compile import PROJECT_ROOT, compile_contracts
from ledger.contracts import Batch, Contracts
from ledger.db import Ledger, SlashReason, open_ledger, sqlite_url, verdicts_for
from ledger.db.models import Slash
from ledger.deployment import TOKEN, DeploymentParams, deploy_all
from ledger.merkle import MerkleTree
from ledger.types import BatchId, BlockIndex, Leaf, Reason, Wei, model_id
from verifier.audit import ProvenLeaf
from verifier.slashing import Slashing
from verifier.verdicts import (
    SharedFindings,
    WithheldAccusation,
    sign_withheld_verdict,
    withheld_key,
)

MODEL = model_id("tiny-llama")
PEER = b"\x00\x24\x08\x01\x12\x20" + b"\x07" * 32


def leaf(step: int) -> Leaf:
    return Leaf(b"\x01" * 32, MODEL, 0, 4, step, 1, keccak(b"in%d" % step),
                keccak(b"out%d" % step), keccak(b"sketch%d" % step), 1_767_225_600 + step)  # fmt: skip


class Devnet:
    """A deployment with quorum `quorum` on the test chain: a node with a committed batch of
    three leaves, and funded fresh verifier keys registered on demand."""

    def __init__(self, chain: Chain, funder: LocalAccount, quorum: int) -> None:
        self.chain = chain
        self.deployment = deploy_all(
            chain,
            chain.sender(funder),
            DeploymentParams(quorum=quorum),
            compile_contracts(),
            PROJECT_ROOT / "build" / "abi",
        )
        self.funder = self.as_account(funder)
        self.node = self.new_account()
        node = self.as_account(self.node)
        registry = node.node_registry
        registry.register_with_approve(
            MODEL, BlockIndex(0), BlockIndex(4), Wei(3), PEER, registry.required_stake(0, 4)
        )
        self.leaves = [leaf(step) for step in range(3)]
        self.tree = MerkleTree([item.hash() for item in self.leaves])
        result = node.commitments.commit(MODEL, self.tree.root, 3)
        self.batch: Batch = node.commitments.committed_batch(result)

    def new_account(self, stake_tokens: int = 1_000) -> LocalAccount:
        account = Account.create()
        self.chain.rpc("anvil_setBalance", [account.address, hex(10**20)])
        self.funder.token.transfer(account.address, Wei(stake_tokens * TOKEN))
        return account

    def as_account(self, account: LocalAccount) -> Contracts:
        return Contracts.from_deployment(self.chain, self.deployment, self.chain.sender(account))

    def verifier(self) -> LocalAccount:
        account = self.new_account()
        registry = self.as_account(account).verifier_registry
        registry.register_with_approve(self.deployment.params.min_verifier_stake)
        return account

    def slashing(self, account: LocalAccount, ledger: Ledger) -> Slashing:
        contracts = self.as_account(account)
        return Slashing(
            ledger=ledger,
            contracts=contracts,
            account=account,
            domain=contracts.slasher.domain(),
            quorum=self.deployment.params.quorum,
            is_active=contracts.verifier_registry.is_active,
            batch_of=lambda batch_id: contracts.commitments.get_batch(
                BatchId(batch_id), from_block=self.deployment.deploy_block
            ),
        )


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = open_ledger(sqlite_url(tmp_path / "verifier.sqlite"))
    try:
        yield opened
    finally:
        opened.close()


def slashes(ledger: Ledger) -> list[Slash]:
    with ledger.begin() as db:
        found = list(db.scalars(select(Slash).order_by(Slash.id)))
        db.expunge_all()
    return found


def test_a_withheld_finding_the_chain_failed_is_submitted_again(
    chain: Chain, dev_account: Callable[[str | int], LocalAccount], ledger: Ledger
) -> None:
    devnet = Devnet(chain, dev_account("client-2"), quorum=1)
    me = devnet.verifier()
    slashing = devnet.slashing(me, ledger)
    slasher, node = slashing.contracts.slasher, devnet.node.address
    batch_id = devnet.batch.batch_id
    stake = slashing.contracts.node_registry.get_node(node).stake
    chain.rpc("anvil_setBalance", [me.address, "0x0"])  # no gas money: the chain fails it

    asyncio.run(slashing.accuse_withheld(node, batch_id, 1))

    assert not slasher.is_withheld_slashed(batch_id, 1)
    with ledger.begin() as db:  # the finding is kept, filed under its position
        (kept,) = verdicts_for(db, withheld_key(batch_id, 1), Reason.WITHHELD)
    assert (kept.signer, kept.batch_id) == (me.address, batch_id)
    assert slashes(ledger) == []
    chain.rpc("anvil_setBalance", [me.address, hex(10**20)])
    assert slashing.retry_failed() == 1
    assert slashing.retry_failed() == 0  # nothing left to retry
    assert slasher.is_withheld_slashed(batch_id, 1)
    (recorded,) = slashes(ledger)
    assert (recorded.node, recorded.batch_id, recorded.reason) == (
        node,
        batch_id,
        SlashReason.WITHHELD,
    )
    assert recorded.leaf_hash == withheld_key(batch_id, 1)
    assert recorded.amount == stake * devnet.deployment.params.slash_bps // 10_000
    assert recorded.bounty == recorded.amount * devnet.deployment.params.bounty_bps // 10_000
    # the follow loop sees the same slash on-chain and does not count it twice
    slashing.record_slashes(devnet.deployment.deploy_block, chain.block_number())
    assert len(slashes(ledger)) == 1

    # one sampled leaf, one slash: the leaf at that position, shown later, is not accused
    shown = ProvenLeaf(node, batch_id, 1, devnet.leaves[1], devnet.tree.proof(1))
    asyncio.run(slashing.accuse(shown, Reason.MISMATCH))
    with ledger.begin() as db:
        assert verdicts_for(db, devnet.leaves[1].hash(), Reason.MISMATCH) == []
    assert not slasher.is_leaf_slashed(devnet.node.address, devnet.leaves[1].hash())


def test_a_quorum_slashes_a_withheld_leaf_only_with_our_own_finding(
    chain: Chain, dev_account: Callable[[str | int], LocalAccount], ledger: Ledger
) -> None:
    devnet = Devnet(chain, dev_account("client-2"), quorum=2)
    me, peer = devnet.verifier(), devnet.verifier()
    stranger = devnet.new_account()  # not a verifier
    slashing = devnet.slashing(me, ledger)
    domain, node, batch = slashing.domain, devnet.node.address, devnet.batch
    other_batch = Batch(BatchId(batch.batch_id + 1), me.address, batch.model_id, batch.root, 3, 0)

    def finding(signer: LocalAccount, index: int, accused: str = node) -> WithheldAccusation:
        return WithheldAccusation(
            sign_withheld_verdict(domain, accused, batch.batch_id, index, signer)
        )

    shared = SharedFindings(
        [],
        [
            finding(peer, 0),  # valid
            finding(stranger, 1),  # not an active verifier
            finding(peer, 3),  # no leaf at index 3
            finding(peer, 2, accused=me.address),  # not that node's batch
        ],
    )
    batches = {batch.batch_id: batch, other_batch.batch_id: other_batch}
    queued: list[tuple[int, int, bytes | None]] = []

    slashing.consider(
        shared,
        batch_of=lambda batch_id: batches[batch_id],
        queue_audit=lambda b, index, leaf_hash: queued.append((b.batch_id, index, leaf_hash)),
    )

    # only the valid finding counts: it is kept, and we must ask the node ourselves
    assert queued == [(batch.batch_id, 0, None)]
    with ledger.begin() as db:
        kept = [
            verdicts_for(db, withheld_key(batch.batch_id, i), Reason.WITHHELD) for i in range(4)
        ]
    assert [[v.signer for v in k] for k in kept] == [[peer.address], [], [], []]
    slasher = slashing.contracts.slasher
    assert not slasher.is_withheld_slashed(batch.batch_id, 0)  # one signature, quorum 2

    token = slashing.contracts.token
    balances = {a.address: token.balance_of(a.address) for a in (me, peer)}
    asyncio.run(slashing.accuse_withheld(node, batch.batch_id, 0))  # we failed to get it too

    (event,) = slasher.leaves_withheld_slashed(from_block=devnet.deployment.deploy_block)
    assert (event.node, event.batch_id, event.leaf_index) == (node, batch.batch_id, 0)
    assert event.bounty_per_verifier == event.amount * 2_000 // 10_000 // 2 > 0
    for account in (me, peer):
        assert (
            token.balance_of(account.address)
            == balances[account.address] + event.bounty_per_verifier
        )
    (recorded,) = slashes(ledger)
    assert recorded.tx_hash == bytes.fromhex(event.tx_hash.removeprefix("0x"))
    # reading the same findings again submits nothing more
    slashing.consider(shared, batch_of=lambda b: batches[b], queue_audit=lambda *_: None)
    assert len(slasher.leaves_withheld_slashed(from_block=devnet.deployment.deploy_block)) == 1
