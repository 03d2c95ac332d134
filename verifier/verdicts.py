"""Verdicts: signing them, sharing them with the other verifiers, and slashing with a quorum.

Quorum design (the slasher needs `quorum` EIP-712 verdicts from distinct active verifiers):
verifiers share signed verdicts through the swarm's hivemind DHT. Every verdict is one record
under the key `stakeswarm.verdicts.<slasher address>`, subkey `<leaf hash>:<reason>:<signer>`,
holding an `Accusation`: the verdict and its signature, plus the leaf, its index and its
Merkle proof, so that any verifier can check it against the chain and submit the slash. A
verifier that reads an accusation it has not audited itself audits that leaf independently
(its own reveal, its own recomputation) and signs only if it reaches the same verdict; it
never countersigns on trust. Whoever first holds `quorum` valid verdicts (signatures that
recover to the named active verifiers, for a leaf proven under its on-chain root) submits
the slash; the contract pays every signer the same bounty and refuses a leaf slashed twice.

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
from eth_utils import is_address, to_checksum_address
from hivemind import DHT
from hivemind.dht.node import DHTNode
from hivemind.utils.timed_storage import get_dht_time

from ledger.chain import TxResult
from ledger.contracts import Slasher
from ledger.eip712 import Domain, recover_verdict_signer, sign_verdict
from ledger.errors import SignatureError, TypedDataError
from ledger.merkle import verify as merkle_verify
from ledger.types import BatchId, Reason, Verdict
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
        reason = Reason(_int(raw.get("reason"), "reason", 1, 2))
        leaf = leaf_from_wire(raw.get("leaf"))
        node = _address(raw.get("node"), "node")
        batch_id = _int(raw.get("batch"), "batch", 1, 2**255)
        proven = ProvenLeaf(
            node=node,
            batch_id=batch_id,
            leaf_index=_int(raw.get("index"), "index", 0, 2**32 - 1),
            leaf=leaf,
            proof=[_bytes(p, "proof node", 32) for p in proof],
        )
        verdict = Verdict(
            node=node,
            batch_id=batch_id,
            leaf=leaf.hash(),
            reason=reason,
            signer=_address(raw.get("signer"), "signer"),
            signature=_bytes(raw.get("sig"), "signature", 65),
        )
        return cls(verdict, proven)

    def check(self, domain: Domain, root: bytes, batch_node: str) -> bool:
        """True when the signature recovers to the named signer and the leaf is proven under
        `root`, the on-chain root of its batch, committed by `batch_node` (the accused)."""
        try:
            signer = recover_verdict_signer(domain, self.verdict, self.verdict.signature)
        except (SignatureError, TypedDataError):
            return False
        return (
            signer == self.verdict.signer
            and to_checksum_address(batch_node) == self.verdict.node
            and merkle_verify(self.proven.proof, root, self.proven.leaf.hash())
        )


def _bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, f"shared verdict: {message}")


def _int(raw: Any, what: str, low: int, high: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
        raise _bad(f"{what} must be an integer in [{low}, {high}]")
    return raw


def _bytes(raw: Any, what: str, length: int) -> bytes:
    if not isinstance(raw, bytes) or len(raw) != length:
        raise _bad(f"{what} must be {length} bytes")
    return raw


def _address(raw: Any, what: str) -> str:
    if not isinstance(raw, str) or not is_address(raw):
        raise _bad(f"{what} must be an address")
    return to_checksum_address(raw)


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


class VerdictBoard:
    """The verdicts of one deployment's verifiers in the DHT."""

    def __init__(self, dht: DHT, slasher: str, *, ttl: float) -> None:
        self.dht = dht
        self.key = verdict_key(slasher)
        self.ttl = ttl

    async def publish(self, accusation: Accusation) -> bool:
        """Share one of our verdicts; True if the DHT stored it."""
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

    async def read(self) -> list[Accusation]:
        """Every well-formed accusation shared (unchecked: see `Accusation.check`)."""
        raw = await self.dht.run_coroutine(partial(_get, key=self.key), return_future=True)
        accusations = []
        for value in raw:
            try:
                accusations.append(Accusation.from_wire(value))
            except ProtocolError as exc:
                logger.debug("skipping a malformed shared verdict: %s", exc)
        return accusations


@dataclass(frozen=True)
class SlashOutcome:
    """A slash that went through."""

    tx: TxResult
    amount: int  # stake taken from the node
    bounty_per_verifier: int


def submit_slash(
    slasher: Slasher, proven: ProvenLeaf, reason: Reason, verdicts: Sequence[Verdict]
) -> SlashOutcome:
    """Slash `proven.node` for `proven.leaf` with `verdicts` (at least the quorum; the wrapper
    orders them by signer). Raises `ContractRevert` as the contract refuses."""
    tx = slasher.slash(proven.leaf, BatchId(proven.batch_id), proven.proof, reason, verdicts)
    event = tx.event("LeafSlashed")
    return SlashOutcome(tx, int(event.args["amount"]), int(event.args["bountyPerVerifier"]))


__all__ = [
    "Accusation",
    "SlashOutcome",
    "VerdictBoard",
    "sign",
    "submit_slash",
    "verdict_key",
]
