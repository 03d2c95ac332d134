"""The slasher: takes stake from a node found cheating (verdicts on a proven leaf), withholding
a sampled leaf (withheld verdicts on its position) or equivocating (two receipts)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eth_utils import to_checksum_address
from web3.types import BlockIdentifier

from ledger.chain import DecodedEvent, TxResult
from ledger.contracts.base import ContractWrapper
from ledger.eip712 import Domain, recover_verdict_signer, recover_withheld_signer
from ledger.types import Address, BatchId, Leaf, Reason, Verdict, Wei, WithheldVerdict


@dataclass(frozen=True)
class SlasherParams:
    """The slasher's immutable parameters."""

    quorum: int  # verdict signatures a slash needs
    slash_bps: int  # share of a node's stake one slash takes (basis points)
    bounty_bps: int  # share of a slash paid to the verifiers or the reporter
    challenge_window: int  # seconds after a commit during which it can be slashed
    reward_recipient: Address


@dataclass(frozen=True)
class LeafSlashed:
    """A `LeafSlashed` event."""

    node: Address
    batch_id: BatchId
    leaf: bytes
    reason: Reason
    amount: Wei  # taken from the node
    bounty_per_verifier: Wei
    block_number: int
    tx_hash: str

    @classmethod
    def from_event(cls, event: DecodedEvent) -> LeafSlashed:
        args = event.args
        return cls(
            node=Address(to_checksum_address(args["node"])),
            batch_id=BatchId(int(args["batchId"])),
            leaf=bytes(args["leaf"]),
            reason=Reason(int(args["reason"])),
            amount=Wei(int(args["amount"])),
            bounty_per_verifier=Wei(int(args["bountyPerVerifier"])),
            block_number=event.block_number,
            tx_hash=event.tx_hash,
        )


@dataclass(frozen=True)
class LeafWithheldSlashed:
    """A `LeafWithheldSlashed` event: a quorum found that `node` withheld leaf `leaf_index`."""

    node: Address
    batch_id: BatchId
    leaf_index: int
    amount: Wei  # taken from the node
    bounty_per_verifier: Wei
    block_number: int
    tx_hash: str

    @classmethod
    def from_event(cls, event: DecodedEvent) -> LeafWithheldSlashed:
        args = event.args
        return cls(
            node=Address(to_checksum_address(args["node"])),
            batch_id=BatchId(int(args["batchId"])),
            leaf_index=int(args["leafIndex"]),
            amount=Wei(int(args["amount"])),
            bounty_per_verifier=Wei(int(args["bountyPerVerifier"])),
            block_number=event.block_number,
            tx_hash=event.tx_hash,
        )


def _by_signer(signed: list[tuple[str, bytes]]) -> list[bytes]:
    """The signatures ordered by strictly increasing signer address, as the contract wants."""
    return [signature for _, signature in sorted((int(a, 16), s) for a, s in signed)]


class Slasher(ContractWrapper):
    """Submit slashes (verdict quorum or equivocation) and read slashing state."""

    abi_name = "Slasher"

    def domain(self) -> Domain:
        """The EIP-712 domain receipts and verdicts are signed under."""
        return Domain.slasher(self.chain.chain_id, self.address)

    def params(self) -> SlasherParams:
        return SlasherParams(
            quorum=int(self._call("quorum")),
            slash_bps=int(self._call("slashBps")),
            bounty_bps=int(self._call("bountyBps")),
            challenge_window=int(self._call("challengeWindow")),
            reward_recipient=Address(to_checksum_address(self._call("rewardRecipient"))),
        )

    def leaf_hash(self, leaf: Leaf) -> bytes:
        return bytes(self._call("leafHash", leaf.as_tuple()))

    def receipt_digest(self, leaf: Leaf) -> bytes:
        return bytes(self._call("receiptDigest", leaf.as_tuple()))

    def verdict_digest(self, node: str, batch_id: BatchId, leaf: bytes, reason: Reason) -> bytes:
        return bytes(
            self._call("verdictDigest", to_checksum_address(node), batch_id, leaf, int(reason))
        )

    def withheld_digest(self, node: str, batch_id: BatchId, leaf_index: int) -> bytes:
        return bytes(self._call("withheldDigest", to_checksum_address(node), batch_id, leaf_index))

    def verify_leaf(
        self,
        batch_id: BatchId,
        leaf: bytes,
        proof: Sequence[bytes],
        *,
        block: BlockIdentifier = "latest",
    ) -> bool:
        """True when `proof` proves the leaf hash `leaf` under batch `batch_id`'s root."""
        return bool(self._call("verifyLeaf", batch_id, leaf, list(proof), block=block))

    def is_leaf_slashed(self, leaf: bytes, *, block: BlockIdentifier = "latest") -> bool:
        return bool(self._call("isLeafSlashed", leaf, block=block))

    def is_withheld_slashed(
        self, batch_id: BatchId, leaf_index: int, *, block: BlockIdentifier = "latest"
    ) -> bool:
        """True once position `leaf_index` of batch `batch_id` was slashed as withheld."""
        return bool(self._call("isWithheldSlashed", batch_id, leaf_index, block=block))

    def reward_pool(self, *, block: BlockIdentifier = "latest") -> Wei:
        return Wei(int(self._call("rewardPool", block=block)))

    def slash(
        self,
        leaf: Leaf,
        batch_id: BatchId,
        proof: Sequence[bytes],
        reason: Reason,
        verdicts: Sequence[Verdict],
    ) -> TxResult:
        """Slash the node of batch `batch_id` for `leaf` with signed `verdicts`.

        The verdicts must all be about this leaf, batch and reason; their signatures are sent
        ordered by signer address, as the contract requires (a verdict without `signer` has it
        recovered from its signature). `ValueError` on verdicts about something else.
        """
        leaf_hash = leaf.hash()
        domain = self.domain()
        signed: list[tuple[str, bytes]] = []
        for index, verdict in enumerate(verdicts):
            if verdict.batch_id != batch_id or bytes(verdict.leaf) != leaf_hash:
                raise ValueError(f"verdict {index} is about another batch or leaf")
            if Reason(verdict.reason) != reason:
                raise ValueError(f"verdict {index} gives reason {verdict.reason!r}, not {reason!r}")
            if not verdict.signature:
                raise ValueError(f"verdict {index} is not signed")
            signer = verdict.signer or recover_verdict_signer(domain, verdict, verdict.signature)
            signed.append((signer, bytes(verdict.signature)))
        return self._transact(
            "slash", leaf.as_tuple(), batch_id, list(proof), int(reason), _by_signer(signed)
        )

    def slash_withheld(
        self, batch_id: BatchId, leaf_index: int, verdicts: Sequence[WithheldVerdict]
    ) -> TxResult:
        """Slash the node of batch `batch_id` for withholding its leaf at `leaf_index`, with
        signed withheld `verdicts` (at least the quorum).

        The verdicts must all be about this batch and position; their signatures are sent
        ordered by signer address (a verdict without `signer` has it recovered from its
        signature). `ValueError` on verdicts about something else or unsigned.
        """
        domain = self.domain()
        signed: list[tuple[str, bytes]] = []
        for index, verdict in enumerate(verdicts):
            if verdict.batch_id != batch_id or verdict.leaf_index != leaf_index:
                raise ValueError(
                    f"withheld verdict {index} is about batch {verdict.batch_id} leaf "
                    f"{verdict.leaf_index}, not batch {batch_id} leaf {leaf_index}"
                )
            if not verdict.signature:
                raise ValueError(f"withheld verdict {index} is not signed")
            signer = verdict.signer or recover_withheld_signer(domain, verdict, verdict.signature)
            signed.append((signer, bytes(verdict.signature)))
        return self._transact("slashWithheld", batch_id, leaf_index, _by_signer(signed))

    def slash_equivocation(
        self, node: str, a: Leaf, receipt_a: bytes, b: Leaf, receipt_b: bytes
    ) -> TxResult:
        """Slash `node` for signing receipts of two different leaves for one slot."""
        return self._transact(
            "slashEquivocation",
            to_checksum_address(node),
            a.as_tuple(),
            receipt_a,
            b.as_tuple(),
            receipt_b,
        )

    def release_reward_pool(self) -> TxResult:
        return self._transact("releaseRewardPool")

    def leaves_slashed(
        self,
        *,
        from_block: int = 0,
        to_block: BlockIdentifier = "latest",
        node: str | None = None,
    ) -> list[LeafSlashed]:
        """`LeafSlashed` events in `[from_block, to_block]`, optionally of one node."""
        filters = {"node": to_checksum_address(node)} if node is not None else {}
        events = self.events("LeafSlashed", from_block=from_block, to_block=to_block, **filters)
        return [LeafSlashed.from_event(event) for event in events]

    def leaves_withheld_slashed(
        self,
        *,
        from_block: int = 0,
        to_block: BlockIdentifier = "latest",
        node: str | None = None,
    ) -> list[LeafWithheldSlashed]:
        """`LeafWithheldSlashed` events in `[from_block, to_block]`, optionally of one node."""
        filters = {"node": to_checksum_address(node)} if node is not None else {}
        events = self.events(
            "LeafWithheldSlashed", from_block=from_block, to_block=to_block, **filters
        )
        return [LeafWithheldSlashed.from_event(event) for event in events]
