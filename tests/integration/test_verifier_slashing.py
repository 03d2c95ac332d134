"""`verifier.slashing.Slashing` against the devnet's contracts, in-process: our withheld findings
and the quorum's, their checks, the submission (and its retry when the chain failed it), the
one-slash-per-sampled-leaf and one-slash-per-batch rules, and the end of slashing a node whose
stake no longer pays for a slash's gas. The DHT is not involved: findings are handed over as
the `VerdictBoard` would read them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from decimal import Decimal
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
from ledger.units import TokenUnits
from verifier.audit import ProvenLeaf
from verifier.slashing import Slashing
from verifier.standing import Standings
from verifier.verdicts import (
    SharedFindings,
    WithheldAccusation,
    sign_withheld_verdict,
    withheld_key,
)
from verifier.worth import SlashTerms, bounty_per_verifier, slash_gas, token_value_wei

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

    def slashing(
        self,
        account: LocalAccount,
        ledger: Ledger,
        *,
        token_price_eth: Decimal = Decimal(1),
        gas_price: Callable[[], int] | None = None,
    ) -> Slashing:
        contracts = self.as_account(account)
        params = self.deployment.params
        units = TokenUnits.of(contracts.token)
        w3 = self.chain.w3
        standings = Standings(
            registry=contracts.node_registry,
            terms=SlashTerms(params.slash_bps, params.bounty_bps, params.quorum),
            units=units,
            token_price_eth=token_price_eth,
            gas_price=gas_price or (lambda: int(w3.eth.gas_price)),
        )
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
            standings=standings,
            units=units,
        )

    def commit_batch(self, first_step: int) -> Batch:
        """One more batch of three leaves by the node (steps from `first_step`)."""
        leaves = [leaf(step) for step in range(first_step, first_step + 3)]
        tree = MerkleTree([item.hash() for item in leaves])
        commitments = self.as_account(self.node).commitments
        return commitments.committed_batch(commitments.commit(MODEL, tree.root, 3))


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


def test_a_node_is_slashed_once_per_batch_until_a_slash_no_longer_pays_its_gas(
    chain: Chain,
    dev_account: Callable[[str | int], LocalAccount],
    ledger: Ledger,
    caplog: pytest.LogCaptureFixture,
) -> None:
    devnet = Devnet(chain, dev_account("client-2"), quorum=1)
    node = devnet.node.address
    # eight batches, committed while the node is still active (a slash leaves it below its
    # span's stake, and then it commits nothing more)
    batches = [devnet.batch] + [devnet.commit_batch(10 * i) for i in range(1, 8)]
    me = devnet.verifier()
    params = devnet.deployment.params
    terms = SlashTerms(params.slash_bps, params.bounty_bps, params.quorum)
    registry = devnet.as_account(me).node_registry
    stake = registry.slashable_stake(node)  # 40 tokens: each slash takes half
    # the gas price the verifier sees, held for the test so its decisions are predictable; and
    # a token price at which the third slash still pays for its gas and the fourth would not
    gas_price = max(int(chain.w3.eth.gas_price), 10**9)
    cost = slash_gas(1, withheld=True) * gas_price * 2  # GAS_SAFETY
    third, fourth = bounty_per_verifier(stake // 4, terms), bounty_per_verifier(stake // 8, terms)
    price = Decimal(cost) / (Decimal(third + fourth) / 2)
    slashing = devnet.slashing(me, ledger, token_price_eth=price, gas_price=lambda: gas_price)
    slasher = slashing.contracts.slasher

    spent: list[int] = []  # ETH each slash attempt cost the verifier (claim + slash)
    with caplog.at_level(logging.INFO, logger="verifier"):
        for batch in batches:
            before = chain.w3.eth.get_balance(me.address)
            asyncio.run(slashing.accuse_withheld(node, batch.batch_id, 0))
            spent.append(before - chain.w3.eth.get_balance(me.address))
        # a second leaf of a batch already slashed is not slashed again
        asyncio.run(slashing.accuse_withheld(node, batches[0].batch_id, 1))

    events = slasher.leaves_withheld_slashed(from_block=devnet.deployment.deploy_block)
    # three slashes, one per batch, then none: the node keeps a stake no slash would pay for
    assert [(e.batch_id, e.leaf_index) for e in events] == [(b.batch_id, 0) for b in batches[:3]]
    assert registry.slashable_stake(node) == stake // 8 > 0
    # every slash sent paid the verifier more than it spent on gas, the last one included
    for event, paid_gas in zip(events, spent, strict=False):
        assert token_value_wei(event.bounty_per_verifier, 18, price) > paid_gas > 0
    assert spent[3:] == [0] * 5  # the skipped slashes cost nothing
    # the operator is told once, in tokens and ETH, why the node is skipped
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert len(skipped) == 1
    assert node in skipped[0] and "5 SWARM pays 0.5 SWARM" in skipped[0] and "ETH" in skipped[0]
    assert "5 SWARM pays 0.5 SWARM" in slashing.standings.skipped[node]
    # and reads what the slashes took in tokens, the exact base units beside them
    taken = [r.getMessage() for r in caplog.records if r.getMessage().startswith("slashed")]
    assert len(taken) == 3
    assert "20 SWARM (20000000000000000000 base units) taken, bounty 4 SWARM" in taken[0]
