"""The slasher: takes stake from a node found cheating (verdicts on a proven leaf), withholding
a sampled leaf (withheld verdicts on its position) or equivocating (two receipts)."""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass

from eth_utils import to_checksum_address
from web3.types import BlockIdentifier

from ledger.chain import DecodedEvent, TxResult
from ledger.contracts.base import ContractWrapper
from ledger.contracts.commitments import Batch
from ledger.contracts.token import StakeToken
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
    commit_deadline: int  # seconds after a receipt's issued_at by which its leaf is committed
    receipt_challenge_period: int  # seconds after that deadline a receipt may be challenged
    response_window: int  # seconds a node has to answer a receipt challenge
    challenge_bond: Wei  # what a challenger puts up; the node gets it if it answers


class ChallengeStatus(enum.IntEnum):
    """Where a receipt challenge stands (mirrors `ISlasher.ChallengeStatus`)."""

    NONE = 0
    OPEN = 1
    ANSWERED = 2
    SLASHED = 3


@dataclass(frozen=True)
class ReceiptChallenge:
    """A receipt holder's demand that `node` prove it committed a leaf (`ISlasher.ReceiptChallenge`)."""

    challenge_id: int
    node: Address
    issued_at: int  # the receipt's
    status: ChallengeStatus
    challenger: Address
    answer_by: int  # unix seconds: the node answers until then (inclusive)
    leaf: bytes  # the leaf hash


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


@dataclass(frozen=True)
class EquivocationSlashed:
    """An `EquivocationSlashed` event: `reporter` proved that `node` signed two receipts for
    one (session, step)."""

    node: Address
    session_id: bytes
    step: int
    reporter: Address
    amount: Wei  # taken from the node
    bounty: Wei  # paid to the reporter
    block_number: int
    tx_hash: str

    @classmethod
    def from_event(cls, event: DecodedEvent) -> EquivocationSlashed:
        args = event.args
        return cls(
            node=Address(to_checksum_address(args["node"])),
            session_id=bytes(args["sessionId"]),
            step=int(args["step"]),
            reporter=Address(to_checksum_address(args["reporter"])),
            amount=Wei(int(args["amount"])),
            bounty=Wei(int(args["bounty"])),
            block_number=event.block_number,
            tx_hash=event.tx_hash,
        )


@dataclass(frozen=True)
class ReceiptChallengeSlashed:
    """A `ReceiptChallengeSlashed` event: `node` did not answer challenge `challenge_id`."""

    challenge_id: int
    node: Address
    amount: Wei  # taken from the node
    bounty: Wei  # paid to the challenger
    block_number: int
    tx_hash: str

    @classmethod
    def from_event(cls, event: DecodedEvent) -> ReceiptChallengeSlashed:
        args = event.args
        return cls(
            challenge_id=int(args["challengeId"]),
            node=Address(to_checksum_address(args["node"])),
            amount=Wei(int(args["amount"])),
            bounty=Wei(int(args["bounty"])),
            block_number=event.block_number,
            tx_hash=event.tx_hash,
        )


def leaf_proof(
    batch: Batch, leaf_index: int, proof: Sequence[bytes]
) -> tuple[int, tuple[str, bytes, bytes, int, int], int, list[bytes]]:
    """The `ISlasher.LeafProof` tuple: the leaf at `leaf_index` of `batch`, proven by the
    siblings `proof` (`ledger.merkle.MerkleTree.proof`)."""
    return (batch.batch_id, batch.as_header(), leaf_index, list(proof))


def _by_signer(signed: list[tuple[str, bytes]]) -> tuple[list[str], list[bytes]]:
    """The signers and their signatures ordered by strictly increasing signer address, as the
    contract wants."""
    ordered = sorted(signed, key=lambda pair: int(pair[0], 16))
    return [to_checksum_address(a) for a, _ in ordered], [s for _, s in ordered]


class Slasher(ContractWrapper):
    """Submit slashes (verdict quorum or equivocation) and read slashing state."""

    abi_name = "Slasher"

    def domain(self) -> Domain:
        """The EIP-712 domain receipts and verdicts are signed under (with the deployment's salt,
        read once from the contract's ERC-5267 `eip712Domain`)."""
        return Domain.slasher(self.chain.chain_id, self.address, self.eip712_salt)

    def params(self) -> SlasherParams:
        return SlasherParams(
            quorum=int(self._call("quorum")),
            slash_bps=int(self._call("slashBps")),
            bounty_bps=int(self._call("bountyBps")),
            challenge_window=int(self._call("challengeWindow")),
            reward_recipient=Address(to_checksum_address(self._call("rewardRecipient"))),
            commit_deadline=int(self._call("commitDeadline")),
            receipt_challenge_period=int(self._call("receiptChallengePeriod")),
            response_window=int(self._call("responseWindow")),
            challenge_bond=Wei(int(self._call("challengeBond"))),
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
        leaf: Leaf,
        batch: Batch,
        leaf_index: int,
        proof: Sequence[bytes],
        *,
        block: BlockIdentifier = "latest",
    ) -> bool:
        """True when `proof` proves `leaf` at position `leaf_index` of committed batch `batch`."""
        return bool(
            self._call(
                "verifyLeaf", leaf.as_tuple(), leaf_proof(batch, leaf_index, proof), block=block
            )
        )

    def is_leaf_slashed(self, node: str, leaf: bytes, *, block: BlockIdentifier = "latest") -> bool:
        """True once the leaf hash `leaf` was slashed for `node`."""
        return bool(self._call("isLeafSlashed", to_checksum_address(node), leaf, block=block))

    def is_withheld_slashed(
        self, batch_id: BatchId, leaf_index: int, *, block: BlockIdentifier = "latest"
    ) -> bool:
        """True once position `leaf_index` of batch `batch_id` was slashed as withheld."""
        return bool(self._call("isWithheldSlashed", batch_id, leaf_index, block=block))

    def reward_pool(self, *, block: BlockIdentifier = "latest") -> Wei:
        return Wei(int(self._call("rewardPool", block=block)))

    def claim(self, evidence: bytes, beneficiaries: Sequence[str]) -> bytes:
        """Claim a slash of `evidence` for `beneficiaries` with a fresh secret; returns the
        secret the slash must reveal. The claim shows only a hash, so nobody can copy the
        evidence before the slash, which lands in a later block than this claim."""
        secret = os.urandom(32)
        claim_hash = bytes(
            self._call(
                "claimHash", evidence, [to_checksum_address(a) for a in beneficiaries], secret
            )
        )
        self._transact("claim", claim_hash)
        return secret

    def slash(
        self,
        leaf: Leaf,
        batch: Batch,
        leaf_index: int,
        proof: Sequence[bytes],
        reason: Reason,
        verdicts: Sequence[Verdict],
    ) -> TxResult:
        """Claim, then slash the node of `batch` for `leaf`, at `leaf_index` of the batch, with
        signed `verdicts` (two transactions: see `claim`).

        The verdicts must all be about this leaf, batch and reason, exactly the quorum of them;
        their signatures are sent ordered by signer address, as the contract requires (a
        verdict without `signer` has it recovered from its signature). `ValueError` on verdicts
        about something else.
        """
        leaf_hash = leaf.hash()
        domain = self.domain()
        signed: list[tuple[str, bytes]] = []
        for index, verdict in enumerate(verdicts):
            if verdict.batch_id != batch.batch_id or bytes(verdict.leaf) != leaf_hash:
                raise ValueError(f"verdict {index} is about another batch or leaf")
            if Reason(verdict.reason) != reason:
                raise ValueError(f"verdict {index} gives reason {verdict.reason!r}, not {reason!r}")
            if not verdict.signature:
                raise ValueError(f"verdict {index} is not signed")
            signer = verdict.signer or recover_verdict_signer(domain, verdict, verdict.signature)
            signed.append((signer, bytes(verdict.signature)))
        signers, signatures = _by_signer(signed)
        evidence = self.verdict_digest(batch.node, batch.batch_id, leaf_hash, reason)
        secret = self.claim(evidence, signers)
        return self._transact(
            "slash",
            leaf.as_tuple(),
            leaf_proof(batch, leaf_index, proof),
            int(reason),
            signatures,
            secret,
        )

    def slash_withheld(
        self, batch: Batch, leaf_index: int, verdicts: Sequence[WithheldVerdict]
    ) -> TxResult:
        """Claim, then slash the node of `batch` for withholding its leaf at `leaf_index`, with
        exactly the quorum of signed withheld `verdicts`.

        The verdicts must all be about this batch and position; their signatures are sent
        ordered by signer address (a verdict without `signer` has it recovered from its
        signature). `ValueError` on verdicts about something else or unsigned.
        """
        domain = self.domain()
        signed: list[tuple[str, bytes]] = []
        for index, verdict in enumerate(verdicts):
            if verdict.batch_id != batch.batch_id or verdict.leaf_index != leaf_index:
                raise ValueError(
                    f"withheld verdict {index} is about batch {verdict.batch_id} leaf "
                    f"{verdict.leaf_index}, not batch {batch.batch_id} leaf {leaf_index}"
                )
            if not verdict.signature:
                raise ValueError(f"withheld verdict {index} is not signed")
            signer = verdict.signer or recover_withheld_signer(domain, verdict, verdict.signature)
            signed.append((signer, bytes(verdict.signature)))
        signers, signatures = _by_signer(signed)
        evidence = self.withheld_digest(batch.node, batch.batch_id, leaf_index)
        secret = self.claim(evidence, signers)
        return self._transact(
            "slashWithheld", batch.batch_id, batch.as_header(), leaf_index, signatures, secret
        )

    def slash_equivocation(
        self, node: str, a: Leaf, receipt_a: bytes, b: Leaf, receipt_b: bytes
    ) -> TxResult:
        """Claim (for the sender), then slash `node` for signing receipts of two different
        leaves for one slot; the sender gets the bounty."""
        node = to_checksum_address(node)
        evidence = bytes(self._call("equivocationEvidence", node, a.as_tuple(), b.as_tuple()))
        secret = self.claim(evidence, [self._sender_address()])
        return self._transact(
            "slashEquivocation", node, a.as_tuple(), receipt_a, b.as_tuple(), receipt_b, secret
        )

    def challenge_receipt(
        self, node: str, leaf: Leaf, receipt: bytes, *, token: StakeToken | None = None
    ) -> TxResult:
        """As the holder of `node`'s `receipt` for `leaf`, claim, approve the challenge bond if
        the allowance falls short (with `token`, the stake token) and challenge the receipt
        (the new id is in the result's `ReceiptChallenged` event)."""
        node = to_checksum_address(node)
        secret = self.claim(self.receipt_digest(leaf), [self._sender_address()])
        bond = Wei(int(self._call("challengeBond")))
        if token is not None and bond:
            token.ensure_allowance(self.address, bond)
        return self._transact("challengeReceipt", node, leaf.as_tuple(), receipt, secret)

    def answer_challenge(
        self, challenge_id: int, leaf: Leaf, batch: Batch, leaf_index: int, proof: Sequence[bytes]
    ) -> TxResult:
        """Answer challenge `challenge_id` with the leaf at `leaf_index` of `batch`."""
        return self._transact(
            "answerChallenge", challenge_id, leaf.as_tuple(), leaf_proof(batch, leaf_index, proof)
        )

    def slash_unanswered(self, challenge_id: int) -> TxResult:
        """Slash the node of an unanswered challenge whose answer time has passed."""
        return self._transact("slashUnanswered", challenge_id)

    def get_challenge(
        self, challenge_id: int, *, block: BlockIdentifier = "latest"
    ) -> ReceiptChallenge:
        raw = self._call("getChallenge", challenge_id, block=block)
        return ReceiptChallenge(
            challenge_id=challenge_id,
            node=Address(to_checksum_address(raw[0])),
            issued_at=int(raw[1]),
            status=ChallengeStatus(int(raw[2])),
            challenger=Address(to_checksum_address(raw[3])),
            answer_by=int(raw[4]),
            leaf=bytes(raw[5]),
        )

    def challenge_count(self, *, block: BlockIdentifier = "latest") -> int:
        return int(self._call("challengeCount", block=block))

    def is_receipt_challenged(
        self, node: str, leaf: bytes, *, block: BlockIdentifier = "latest"
    ) -> bool:
        """True once `node`'s receipt of the leaf hash `leaf` was challenged."""
        return bool(self._call("isReceiptChallenged", to_checksum_address(node), leaf, block=block))

    def receipt_challenges(
        self,
        *,
        from_block: int = 0,
        to_block: BlockIdentifier = "latest",
        node: str | None = None,
        challenger: str | None = None,
    ) -> list[int]:
        """Ids of the `ReceiptChallenged` events in `[from_block, to_block]`, optionally of one
        node or challenger."""
        filters: dict[str, str] = {}
        if node is not None:
            filters["node"] = to_checksum_address(node)
        if challenger is not None:
            filters["challenger"] = to_checksum_address(challenger)
        events = self.events(
            "ReceiptChallenged", from_block=from_block, to_block=to_block, **filters
        )
        return [int(event.args["challengeId"]) for event in events]

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

    def equivocations_slashed(
        self, *, from_block: int = 0, to_block: BlockIdentifier = "latest"
    ) -> list[EquivocationSlashed]:
        """`EquivocationSlashed` events in `[from_block, to_block]`."""
        events = self.events("EquivocationSlashed", from_block=from_block, to_block=to_block)
        return [EquivocationSlashed.from_event(event) for event in events]

    def receipt_challenges_slashed(
        self, *, from_block: int = 0, to_block: BlockIdentifier = "latest"
    ) -> list[ReceiptChallengeSlashed]:
        """`ReceiptChallengeSlashed` events in `[from_block, to_block]`."""
        events = self.events("ReceiptChallengeSlashed", from_block=from_block, to_block=to_block)
        return [ReceiptChallengeSlashed.from_event(event) for event in events]
