"""Holding servers to their receipts: a client samples the receipts it was given and challenges
them on-chain, so that a server that is paid but never commits what it served is slashed.

Every step's receipt is the server's signed promise to commit the step's leaf by
`issued_at + commitDeadline` (the Slasher's parameter). Once that deadline passed, and for the
Slasher's `receiptChallengePeriod` after it, the client may challenge the receipt
(`Slasher.challengeReceipt`, with the challenge bond); the server must show the leaf in a batch
it committed in time within the response window, or anyone slashes it
(`Slasher.slashUnanswered`) and the challenger gets the bounty and its bond back. An honest
server answers automatically (`node.challenges`) and keeps the bond, which pays for its answer.

`ReceiptAuditor.check` does one round: it challenges the sampled receipts whose window is open
and not yet challenged, and slashes the servers of its own challenges left unanswered. Which
receipts are sampled is decided per receipt by a keyed hash (the client's key and the leaf
hash) against `rate`: a server cannot tell which of its receipts will be checked, and the same
receipt is sampled the same way every round. Detection is then `rate` per uncommitted leaf, on
top of the verifiers' audits of committed ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from client.errors import ClientError
from ledger.chain import ChainError, ContractRevert
from ledger.contracts import Contracts
from ledger.contracts.slasher import ChallengeStatus
from ledger.db import Ledger, ReceiptStatus, receipts_of
from ledger.units import TokenUnits

logger = logging.getLogger(__name__)

DEFAULT_RATE = 0.01  # share of receipts challenged on-chain


@dataclass
class AuditReport:
    """What one round of receipt checks did."""

    eligible: int = 0  # receipts whose challenge window is open now
    challenged: list[int] = field(default_factory=list)  # new challenge ids
    slashed: list[int] = field(default_factory=list)  # own challenges slashed as unanswered
    answered: int = 0  # own challenges the servers answered (so far)
    waiting: int = 0  # own challenges still inside their response window


def sampled(key: bytes, leaf_hash: bytes, rate: float) -> bool:
    """Whether the receipt of `leaf_hash` is checked at `rate`, keyed by the client's `key`."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"a sample rate is between 0 and 1, got {rate}")
    draw = int.from_bytes(keccak(key + leaf_hash), "big")
    return draw < int(rate * 2**256)


class ReceiptAuditor:
    """Samples this client's receipts and enforces them on-chain. Blocking (chain, ledger)."""

    def __init__(
        self,
        ledger: Ledger,
        contracts: Contracts,
        account: LocalAccount,
        units: TokenUnits,
        *,
        rate: float = DEFAULT_RATE,
        from_block: int = 0,
    ) -> None:
        sampled(b"", b"", rate)  # `ValueError` now for a rate outside [0, 1], not per receipt
        self.ledger = ledger
        self.contracts = contracts  # writing as `account`
        self.account = account
        self.units = units  # the stake token, for reverts people read
        self.rate = rate
        self.from_block = from_block  # where the client's challenge events are searched from
        self._key = keccak(b"stakeswarm receipt sample" + bytes(account.key))

    def check(self) -> AuditReport:
        """Challenge the sampled receipts whose challenge window is open; slash the servers of
        this client's challenges that went unanswered. `ClientError` if the chain refuses."""
        report = AuditReport()
        slasher = self.contracts.slasher
        params = slasher.params()
        now = slasher.chain.timestamp()
        with self.ledger.begin() as db:
            rows = [
                (row.server, row.to_leaf(), bytes(row.signature))
                for row in receipts_of(db, status=ReceiptStatus.VALID)
            ]
        for server, leaf, signature in rows:
            deadline = leaf.issued_at + params.commit_deadline
            if not deadline < now <= deadline + params.receipt_challenge_period:
                continue
            report.eligible += 1
            leaf_hash = leaf.hash()
            if not sampled(self._key, leaf_hash, self.rate):
                continue
            if slasher.is_receipt_challenged(server, leaf_hash):
                continue
            try:
                result = slasher.challenge_receipt(
                    server, leaf, signature, token=self.contracts.token
                )
            except ContractRevert as exc:
                raise ClientError(
                    f"challenging a receipt of {server} failed: {exc.describe(self.units)}"
                ) from exc
            challenge_id = int(result.event("ReceiptChallenged").args["challengeId"])
            logger.info(
                "challenged %s's receipt of step %d of session 0x%s (challenge %d)",
                server,
                leaf.step,
                leaf.session_id.hex()[:16],
                challenge_id,
            )
            report.challenged.append(challenge_id)
        for challenge_id in slasher.receipt_challenges(
            from_block=self.from_block, challenger=self.account.address
        ):
            challenge = slasher.get_challenge(challenge_id)
            if challenge.status is ChallengeStatus.ANSWERED:
                report.answered += 1
            elif challenge.status is ChallengeStatus.OPEN and challenge.answer_by >= now:
                report.waiting += 1
            elif challenge.status is ChallengeStatus.OPEN:
                try:
                    slasher.slash_unanswered(challenge_id)
                except (ContractRevert, ChainError) as exc:
                    why = exc.describe(self.units) if isinstance(exc, ContractRevert) else exc
                    raise ClientError(
                        f"slashing {challenge.node} for challenge {challenge_id} failed: {why}"
                    ) from exc
                logger.warning(
                    "%s did not answer challenge %d: slashed", challenge.node, challenge_id
                )
                report.slashed.append(challenge_id)
        return report
