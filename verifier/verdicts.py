"""Verdicts: signing them, sharing them with the other verifiers, and slashing with a quorum.

Two kinds of finding reach the Slasher:

- a `Verdict` (mismatch, or withheld inputs) about a leaf the node showed, submitted with the
  leaf and its Merkle proof (`Slasher.slash`);
- a `WithheldVerdict` about a sampled leaf the node never showed by the reveal deadline, named
  by its batch and position (`Slasher.slashWithheld`). The verifier's ledger files it under
  `withheld_key(batch, index)` where a leaf hash would go.

Quorum design (the slasher needs `quorum` EIP-712 signatures from distinct active verifiers):
verifiers share signed findings through the swarm's hivemind DHT, one record each under the key
`stakeswarm.verdicts.<slasher address>`:

- subkey `<leaf hash>:<reason>:<signer>`: an `Accusation`, the verdict and its signature plus
  the leaf, its index and its Merkle proof, so that any verifier can check it against the chain
  and submit the slash;
- subkey `withheld:<batch>:<index>:<signer>`: a `WithheldAccusation`, the withheld verdict and
  its signature (there is no leaf to show).

A verifier that reads a finding about a leaf it has not audited itself audits that leaf
independently (its own reveal, its own recomputation; for a withheld one, its own reveal
attempts until its own deadline) and signs only if it reaches the same finding; it never
countersigns on trust. Whoever first holds `quorum` valid signatures, its own among them,
submits the slash; the contract pays every signer the same bounty and refuses a leaf (or a
withheld position) slashed twice.

DHT records expire (`ttl`); nothing here is trusted before it is checked, and a malformed or
forged record is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from hivemind import DHT
from hivemind.dht.node import DHTNode
from hivemind.utils.timed_storage import get_dht_time

from ledger.chain import TxResult
from ledger.contracts import Batch, Slasher
from ledger.eip712 import (
    Domain,
    recover_verdict_signer,
    recover_withheld_signer,
    sign_verdict,
    sign_withheld,
)
from ledger.errors import SignatureError, TypedDataError
from ledger.merkle import verify as merkle_verify
from ledger.types import Reason, Verdict, WithheldVerdict
from node import fields
from node.fields import FieldError
from node.protocol import ErrorCode, ProtocolError, leaf_from_wire, leaf_to_wire
from verifier.audit import ProvenLeaf

logger = logging.getLogger(__name__)


def verdict_key(slasher: str) -> str:
    """The DHT key under which the verifiers of one deployment share verdicts."""
    return f"stakeswarm.verdicts.{slasher.lower()}"


def sign(domain: Domain, proven: ProvenLeaf, reason: Reason, account: LocalAccount) -> Verdict:
    """Our signed verdict against a proven leaf."""
    unsigned = Verdict(proven.node, proven.batch_id, proven.leaf_hash, reason)
    signature = sign_verdict(domain, unsigned, account)
    return Verdict(
        unsigned.node,
        unsigned.batch_id,
        unsigned.leaf,
        reason,
        to_checksum_address(account.address),
        signature,
    )


def sign_withheld_verdict(
    domain: Domain, node: str, batch_id: int, leaf_index: int, account: LocalAccount
) -> WithheldVerdict:
    """Our signed finding that `node` did not reveal leaf `leaf_index` of batch `batch_id`."""
    unsigned = WithheldVerdict(to_checksum_address(node), batch_id, leaf_index)
    signature = sign_withheld(domain, unsigned, account)
    return WithheldVerdict(
        unsigned.node, batch_id, leaf_index, to_checksum_address(account.address), signature
    )


_WITHHELD_KEY_DOMAIN = b"stakeswarm withheld v1"


def withheld_key(batch_id: int, leaf_index: int) -> bytes:
    """The 32 bytes a withheld finding is filed under in the verifier's ledger (its verdicts
    and its slash), where a finding about a shown leaf has the leaf hash:
    keccak256("stakeswarm withheld v1" || batchId as 32 bytes || leafIndex as 4 bytes). It is
    not a leaf hash (those hash 288 bytes) and never goes on-chain."""
    return keccak(
        _WITHHELD_KEY_DOMAIN + batch_id.to_bytes(32, "big") + leaf_index.to_bytes(4, "big")
    )


def withheld_as_record(verdict: WithheldVerdict) -> Verdict:
    """The ledger's form of a withheld finding: a `Verdict` with reason WITHHELD whose `leaf`
    is `withheld_key` (`ledger.db.record_verdict` keeps it, `verdicts_for` finds it)."""
    return Verdict(
        verdict.node,
        verdict.batch_id,
        withheld_key(verdict.batch_id, verdict.leaf_index),
        Reason.WITHHELD,
        verdict.signer,
        verdict.signature,
    )


def withheld_from_record(record: Verdict, leaf_index: int) -> WithheldVerdict:
    """Back from `withheld_as_record` (the key does not hold the index: the caller knows it)."""
    if record.leaf != withheld_key(record.batch_id, leaf_index):
        raise ValueError(f"that record is not about batch {record.batch_id} leaf {leaf_index}")
    return WithheldVerdict(
        record.node, record.batch_id, leaf_index, record.signer, record.signature
    )


@dataclass(frozen=True)
class Accusation:
    """A signed verdict with what makes it checkable and submittable by anyone."""

    verdict: Verdict  # signer and signature set
    proven: ProvenLeaf  # the leaf, its index and its proof

    @property
    def subkey(self) -> str:
        return f"{self.verdict.leaf.hex()}:{int(self.verdict.reason)}:{self.verdict.signer.lower()}"

    def to_wire(self) -> dict[str, Any]:
        v, p = self.verdict, self.proven
        return {
            "node": v.node,
            "batch": v.batch_id,
            "index": p.leaf_index,
            "leaf": leaf_to_wire(p.leaf),
            "proof": list(p.proof),
            "reason": int(v.reason),
            "signer": v.signer,
            "sig": v.signature,
        }

    @classmethod
    def from_wire(cls, raw: Any) -> Accusation:
        """Parse a shared record; `ProtocolError` if it is malformed (not if it is false:
        `check` does that)."""
        if not isinstance(raw, dict):
            raise _bad("not a map")
        proof = raw.get("proof")
        if not isinstance(proof, list) or len(proof) > 64:
            raise _bad("the proof must be a list of <= 64 hashes")
        try:
            reason = Reason(fields.integer(raw.get("reason"), "reason", 1, 2))
            leaf = leaf_from_wire(raw.get("leaf"))
            node = fields.address(raw.get("node"), "node")
            batch_id = fields.integer(raw.get("batch"), "batch", 1, 2**255)
            proven = ProvenLeaf(
                node=node,
                batch_id=batch_id,
                leaf_index=fields.integer(raw.get("index"), "index", 0, 2**32 - 1),
                leaf=leaf,
                proof=[fields.fixed_bytes(p, "proof node", 32) for p in proof],
            )
            verdict = Verdict(
                node=node,
                batch_id=batch_id,
                leaf=leaf.hash(),
                reason=reason,
                signer=fields.address(raw.get("signer"), "signer"),
                signature=fields.fixed_bytes(raw.get("sig"), "signature", 65),
            )
        except FieldError as exc:
            raise _bad(str(exc)) from None
        return cls(verdict, proven)

    def check(self, domain: Domain, root: bytes, batch_node: str, leaf_count: int) -> bool:
        """True when the signature recovers to the named signer and the leaf is proven at its
        index under `root`, the on-chain root of its batch of `leaf_count` leaves, committed by
        `batch_node` (the accused)."""
        try:
            signer = recover_verdict_signer(domain, self.verdict, self.verdict.signature)
        except (SignatureError, TypedDataError):
            return False
        return (
            signer == self.verdict.signer
            and to_checksum_address(batch_node) == self.verdict.node
            and merkle_verify(
                self.proven.proof,
                root,
                self.proven.leaf.hash(),
                self.proven.leaf_index,
                leaf_count,
            )
        )


@dataclass(frozen=True)
class WithheldAccusation:
    """A signed withheld finding as verifiers share it: checkable against the chain by anyone
    (the batch must exist, be the accused node's, and have a leaf at that position)."""

    KIND = "withheld"

    verdict: WithheldVerdict  # signer and signature set

    @property
    def subkey(self) -> str:
        v = self.verdict
        return f"{self.KIND}:{v.batch_id}:{v.leaf_index}:{v.signer.lower()}"

    def to_wire(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "kind": self.KIND,
            "node": v.node,
            "batch": v.batch_id,
            "index": v.leaf_index,
            "signer": v.signer,
            "sig": v.signature,
        }

    @classmethod
    def from_wire(cls, raw: Any) -> WithheldAccusation:
        """Parse a shared record; `ProtocolError` if it is malformed (not if it is false:
        `check` does that)."""
        if not isinstance(raw, dict) or raw.get("kind") != cls.KIND:
            raise _bad("not a withheld finding")
        try:
            verdict = WithheldVerdict(
                node=fields.address(raw.get("node"), "node"),
                batch_id=fields.integer(raw.get("batch"), "batch", 1, 2**255),
                leaf_index=fields.integer(raw.get("index"), "index", 0, 2**32 - 1),
                signer=fields.address(raw.get("signer"), "signer"),
                signature=fields.fixed_bytes(raw.get("sig"), "signature", 65),
            )
        except FieldError as exc:
            raise _bad(str(exc)) from None
        return cls(verdict)

    def check(self, domain: Domain, batch: Batch) -> bool:
        """True when the signature recovers to the named signer, `batch` (the on-chain batch
        of that id) was committed by the accused node, and it has a leaf at that position."""
        v = self.verdict
        try:
            signer = recover_withheld_signer(domain, v, v.signature)
        except (SignatureError, TypedDataError):
            return False
        return (
            signer == v.signer
            and batch.batch_id == v.batch_id
            and to_checksum_address(batch.node) == v.node
            and v.leaf_index < batch.leaf_count
        )


def _bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, f"shared verdict: {message}")


async def _store(
    dht: DHT, node: DHTNode, *, key: str, subkey: str, value: Any, expiration: float
) -> bool:
    return bool(await node.store(key, value, expiration_time=expiration, subkey=subkey))


async def _get(dht: DHT, node: DHTNode, *, key: str) -> list[Any]:
    found = await node.get(key, latest=True)
    if found is None or not isinstance(found.value, dict):
        return []
    # plain data only: the answer crosses a process boundary
    return [item.value for item in found.value.values()]


@dataclass(frozen=True)
class SharedFindings:
    """What the verifiers shared, well-formed but unchecked."""

    accusations: list[Accusation]  # about leaves their nodes showed
    withheld: list[WithheldAccusation]  # about leaves their nodes never showed


class VerdictBoard:
    """The verdicts of one deployment's verifiers in the DHT."""

    def __init__(self, dht: DHT, slasher: str, *, ttl: float) -> None:
        self.dht = dht
        self.key = verdict_key(slasher)
        self.ttl = ttl

    async def publish(self, accusation: Accusation | WithheldAccusation) -> bool:
        """Share one of our findings; True if the DHT stored it."""
        future = self.dht.run_coroutine(
            partial(
                _store,
                key=self.key,
                subkey=accusation.subkey,
                value=accusation.to_wire(),
                expiration=get_dht_time() + self.ttl,
            ),
            return_future=True,
        )
        stored = bool(await future)
        if not stored:
            logger.warning("the DHT did not store our verdict %s", accusation.subkey)
        return stored

    async def read(self) -> SharedFindings:
        """Every well-formed finding shared (unchecked: see `Accusation.check` and
        `WithheldAccusation.check`)."""
        raw = await self.dht.run_coroutine(partial(_get, key=self.key), return_future=True)
        return parse_findings(raw)


def parse_findings(values: Sequence[Any]) -> SharedFindings:
    """Sort shared records into accusations and withheld findings, skipping malformed ones."""
    found = SharedFindings([], [])
    for value in values:
        try:
            if isinstance(value, dict) and value.get("kind") == WithheldAccusation.KIND:
                found.withheld.append(WithheldAccusation.from_wire(value))
            else:
                found.accusations.append(Accusation.from_wire(value))
        except ProtocolError as exc:
            logger.debug("skipping a malformed shared verdict: %s", exc)
    return found


@dataclass(frozen=True)
class SlashOutcome:
    """A slash that went through."""

    tx: TxResult
    amount: int  # stake taken from the node
    bounty_per_verifier: int


def submit_slash(
    slasher: Slasher,
    batch: Batch,
    proven: ProvenLeaf,
    reason: Reason,
    verdicts: Sequence[Verdict],
) -> SlashOutcome:
    """Claim and slash `proven.node` for `proven.leaf` of `batch` with `verdicts` (exactly the
    quorum; the wrapper orders them by signer). Raises `ContractRevert` as the contract refuses."""
    tx = slasher.slash(proven.leaf, batch, proven.leaf_index, proven.proof, reason, verdicts)
    event = tx.event("LeafSlashed")
    return SlashOutcome(tx, int(event.args["amount"]), int(event.args["bountyPerVerifier"]))


def submit_withheld_slash(
    slasher: Slasher, batch: Batch, leaf_index: int, verdicts: Sequence[WithheldVerdict]
) -> SlashOutcome:
    """Claim and slash the node of `batch` for withholding leaf `leaf_index` with `verdicts`
    (exactly the quorum; the wrapper orders them by signer). Raises `ContractRevert` as the
    contract refuses."""
    tx = slasher.slash_withheld(batch, leaf_index, verdicts)
    event = tx.event("LeafWithheldSlashed")
    return SlashOutcome(tx, int(event.args["amount"]), int(event.args["bountyPerVerifier"]))


__all__ = [
    "Accusation",
    "SharedFindings",
    "SlashOutcome",
    "VerdictBoard",
    "WithheldAccusation",
    "parse_findings",
    "sign",
    "sign_withheld_verdict",
    "submit_slash",
    "submit_withheld_slash",
    "verdict_key",
    "withheld_as_record",
    "withheld_from_record",
    "withheld_key",
]
