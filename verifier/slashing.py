"""`Slashing`: from our findings and the quorum's to slashes on-chain, and their records.

    slashing = Slashing(ledger=..., contracts=..., account=..., domain=..., quorum=q,
                        is_active=verifier_is_active)
    await slashing.accuse(proven, Reason.MISMATCH)           # a leaf the node showed
    await slashing.accuse_withheld(node, batch_id, index)    # a leaf it never showed
    slashing.consider(board_findings, batch_of=..., queue_audit=...)   # the quorum's
    slashing.record_slashes(start_block, end_block)          # slashes our verdicts were in

Every finding we sign is kept in the ledger (`ledger.db.record_verdict`; a withheld one under
`verdicts.withheld_key`), shared through the `VerdictBoard` when the quorum needs more than us,
and submitted as soon as `quorum` valid signatures of active verifiers agree, ours among them
(a quorum without us is for its signers to submit). Slashes are recorded with the bounty they
paid us.

One sampled leaf, one slash: `slash` proves the leaf's position and the contract marks it, as
`slashWithheld` marks a position, so either refuses a position the other took. We do not sign a
verdict against a shown leaf whose position was already slashed as withheld (it would revert),
and a node that shows the leaf is audited, not accused of withholding it.

One slash per batch, and only while it pays: no slash is sent for a batch its node was already
slashed for (`slashed_batches`, from our slashes and every slash event seen), nor against a node
whose stake no longer pays a bounty worth the slash's gas (`verifier.worth`, through
`Standings`, read fresh before each submission).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from eth_account.signers.local import LocalAccount
from sqlalchemy import select

from ledger.chain import ChainError, ContractRevert
from ledger.contracts import Batch, Contracts
from ledger.contracts.slasher import LeafSlashed, LeafWithheldSlashed
from ledger.db import (
    Ledger,
    Slash,
    SlashReason,
    is_slash_recorded,
    record_slash,
    record_verdict,
    verdicts_for,
)
from ledger.eip712 import Domain
from ledger.types import BatchId, Reason, Verdict
from ledger.units import TokenUnits
from verifier.audit import ProvenLeaf
from verifier.standing import Standings
from verifier.verdicts import (
    Accusation,
    SharedFindings,
    SlashOutcome,
    VerdictBoard,
    WithheldAccusation,
    sign,
    sign_withheld_verdict,
    submit_slash,
    submit_withheld_slash,
    withheld_as_record,
    withheld_from_record,
    withheld_key,
)

logger = logging.getLogger(__name__)

_SLASH_REASONS = {Reason.MISMATCH: SlashReason.MISMATCH, Reason.WITHHELD: SlashReason.WITHHELD}


class Slashing:
    """Our verdicts and the quorum's, towards slashes. Blocking methods read the chain and the
    ledger: call them from worker threads."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        contracts: Contracts,
        account: LocalAccount,
        domain: Domain,
        quorum: int,
        is_active: Callable[[str], bool],
        batch_of: Callable[[int], Batch],
        standings: Standings,
        units: TokenUnits,
        board: VerdictBoard | None = None,
    ) -> None:
        self.ledger = ledger
        self.contracts = contracts
        self.account = account
        self.address = account.address
        self.domain = domain
        self.quorum = quorum
        self.is_active = is_active  # whether a verifier is active on-chain (cached by the caller)
        self.batch_of = batch_of  # a committed batch's header by id (cached by the caller)
        self.board = board  # where findings are shared; needed only when quorum > 1
        self.standings = standings  # whether a node is still worth a slash
        self.units = units  # how amounts are shown
        # (node, batch id) of every slash seen: one per batch is enough (`verifier.queue`)
        with ledger.begin() as db:
            rows = db.execute(select(Slash.node, Slash.batch_id).where(Slash.batch_id.is_not(None)))
            self.slashed_batches: set[tuple[str, int]] = {
                (n, int(b)) for n, b in rows if b is not None
            }
        self._evidence: dict[tuple[bytes, Reason], ProvenLeaf] = {}
        self._lock = threading.Lock()  # one submission at a time
        # submissions the chain failed (not refused): tried again by `retry_failed`
        self._failed: dict[bytes, Callable[[], bool]] = {}

    # --- our findings ------------------------------------------------------------------------

    async def accuse(self, proven: ProvenLeaf, reason: Reason) -> None:
        """Sign, keep and share a verdict against a leaf the node showed; slash on quorum.
        Nothing when the leaf's position was already slashed as withheld."""
        slasher = self.contracts.slasher
        batch_id = BatchId(proven.batch_id)
        try:
            withheld = await asyncio.to_thread(
                slasher.is_withheld_slashed, batch_id, proven.leaf_index
            )
        except ChainError as exc:  # sign anyway: a verdict lost is worse than a rare second one
            logger.warning(
                "cannot read whether batch %d leaf %d was slashed as withheld: %s",
                proven.batch_id,
                proven.leaf_index,
                exc,
            )
            withheld = False
        if withheld:
            logger.warning(
                "batch %d leaf %d of %s was already slashed as withheld: no second verdict",
                proven.batch_id,
                proven.leaf_index,
                proven.node,
            )
            return
        verdict = sign(self.domain, proven, reason, self.account)
        await asyncio.to_thread(self._keep, verdict)
        self._evidence[(proven.leaf_hash, reason)] = proven
        if self.quorum > 1 and self.board is not None:
            await self.board.publish(Accusation(verdict, proven))
        await asyncio.to_thread(self.try_slash, proven.leaf_hash, reason)

    async def accuse_withheld(self, node: str, batch_id: int, leaf_index: int) -> None:
        """Sign, keep and share our finding that `node` did not reveal leaf `leaf_index` of
        batch `batch_id` (we asked until our deadline); slash on quorum."""
        verdict = sign_withheld_verdict(self.domain, node, batch_id, leaf_index, self.account)
        await asyncio.to_thread(self._keep, withheld_as_record(verdict))
        if self.quorum > 1 and self.board is not None:
            await self.board.publish(WithheldAccusation(verdict))
        await asyncio.to_thread(self.try_slash_withheld, node, batch_id, leaf_index)

    def _keep(self, verdict: Verdict) -> None:
        with self.ledger.begin() as db:
            record_verdict(db, verdict)

    # --- submitting ------------------------------------------------------------------------

    def try_slash(self, leaf_hash: bytes, reason: Reason) -> bool:
        """Submit the slash of a shown leaf once the quorum holds, ours among it; True if we did."""
        proven = self._evidence.get((leaf_hash, reason))
        if proven is None:
            return False
        slasher = self.contracts.slasher
        return self._submit(
            key=leaf_hash,
            reason=reason,
            node=proven.node,
            batch_id=proven.batch_id,
            what=f"leaf 0x{leaf_hash.hex()[:16]} ({reason.name.lower()})",
            slashed=lambda: slasher.is_leaf_slashed(proven.node, leaf_hash),
            submit=lambda verdicts: submit_slash(
                slasher, self.batch_of(proven.batch_id), proven, reason, verdicts
            ),
            again=lambda: self.try_slash(leaf_hash, reason),
        )

    def try_slash_withheld(self, node: str, batch_id: int, leaf_index: int) -> bool:
        """Submit the withheld slash of leaf `leaf_index` of batch `batch_id` once the quorum
        holds, ours among it; True if we did."""
        slasher = self.contracts.slasher

        def submit(verdicts: list[Verdict]) -> SlashOutcome:
            withheld = [withheld_from_record(v, leaf_index) for v in verdicts]
            return submit_withheld_slash(slasher, self.batch_of(batch_id), leaf_index, withheld)

        return self._submit(
            key=withheld_key(batch_id, leaf_index),
            reason=Reason.WITHHELD,
            node=node,
            batch_id=batch_id,
            what=f"batch {batch_id} leaf {leaf_index} (withheld, never shown)",
            slashed=lambda: slasher.is_withheld_slashed(BatchId(batch_id), leaf_index),
            submit=submit,
            again=lambda: self.try_slash_withheld(node, batch_id, leaf_index),
        )

    def _submit(
        self,
        *,
        key: bytes,
        reason: Reason,
        node: str,
        batch_id: int,
        what: str,
        slashed: Callable[[], bool],
        submit: Callable[[list[Verdict]], SlashOutcome],
        again: Callable[[], bool],
    ) -> bool:
        with self._lock:
            self._failed.pop(key, None)
            try:
                with self.ledger.begin() as db:
                    verdicts = [
                        v for v in verdicts_for(db, key, reason) if self.is_active(v.signer)
                    ]
                if len(verdicts) < self.quorum or self.address not in {v.signer for v in verdicts}:
                    return False
                if slashed():
                    return False
                refusal = self._not_worth(node, batch_id, reason)
                if refusal is not None:
                    # the node's skip is logged once (`Standings`); this, per leaf, is detail
                    logger.debug("not slashing %s for %s: %s", node, what, refusal)
                    return False
                outcome = submit(verdicts)
            except ContractRevert as exc:
                logger.warning("the slash of %s was refused: %s", what, exc)
                return False
            except ChainError as exc:
                logger.warning(
                    "could not submit the slash of %s (tried again later): %s", what, exc
                )
                self._failed[key] = again
                return False
            with self.ledger.begin() as db:
                tx_hash = bytes.fromhex(outcome.tx.tx_hash.removeprefix("0x"))
                if not is_slash_recorded(db, tx_hash):
                    record_slash(
                        db,
                        node=node,
                        batch_id=batch_id,
                        leaf_hash=key,
                        reason=_SLASH_REASONS[reason],
                        amount=outcome.amount,
                        bounty=outcome.bounty_per_verifier,
                        tx_hash=tx_hash,
                    )
            self._slashed(node, batch_id)
        logger.warning(
            "slashed %s for %s: %s taken, bounty %s per verifier (tx %s)",
            node,
            what,
            self.units.exact(outcome.amount),
            self.units.show(outcome.bounty_per_verifier),
            outcome.tx.tx_hash,
        )
        return True

    def _not_worth(self, node: str, batch_id: int, reason: Reason) -> str | None:
        """Why a slash of `node` for a leaf of batch `batch_id` must not be sent, or None: the
        node was already slashed for that batch, or the slash would not pay for its gas (read
        fresh, `verifier.worth`)."""
        if (node, batch_id) in self.slashed_batches:
            return f"it was already slashed for batch {batch_id}"
        self.standings.forget(node)
        stake = self.standings.of(node).worth.stake
        worth = self.standings.worth(stake, withheld=reason is Reason.WITHHELD)
        return None if worth.worth else worth.describe(self.units)

    def _slashed(self, node: str, batch_id: int) -> None:
        """A slash of `node` for batch `batch_id` landed: its stake changed."""
        self.slashed_batches.add((node, batch_id))
        self.standings.forget(node)

    def retry_failed(self) -> int:
        """Try again the submissions the chain failed (not refused); how many went through."""
        with self._lock:
            retries, self._failed = self._failed, {}
        return sum(again() for again in retries.values())

    # --- the quorum's findings ---------------------------------------------------------------

    def consider(
        self,
        findings: SharedFindings,
        *,
        batch_of: Callable[[int], Batch],
        queue_audit: Callable[[Batch, int, bytes | None], None],
    ) -> None:
        """Keep the valid shared findings of active verifiers, have their leaves audited by us
        too (`queue_audit(batch, leaf_index, leaf_hash or None)`: we sign only what we find
        ourselves), and slash whatever reached the quorum."""
        pending: set[tuple[bytes, Reason]] = set()
        for accusation in findings.accusations:
            verdict, proven = accusation.verdict, accusation.proven
            try:
                batch = batch_of(verdict.batch_id)
            except LookupError:
                continue
            if not accusation.check(self.domain, batch.root, batch.node, batch.leaf_count):
                logger.debug("ignoring an invalid shared verdict %s", accusation.subkey)
                continue
            if not self.is_active(verdict.signer):
                continue
            self._keep(verdict)
            if verdict.signer != self.address:
                queue_audit(batch, proven.leaf_index, verdict.leaf)
            self._evidence.setdefault((verdict.leaf, Reason(verdict.reason)), proven)
            pending.add((verdict.leaf, Reason(verdict.reason)))
        withheld_pending: set[tuple[str, int, int]] = set()
        for finding in findings.withheld:
            withheld = finding.verdict
            try:
                batch = batch_of(withheld.batch_id)
            except LookupError:
                continue
            if not finding.check(self.domain, batch) or not self.is_active(withheld.signer):
                logger.debug("ignoring an invalid shared withheld finding %s", finding.subkey)
                continue
            self._keep(withheld_as_record(withheld))
            if withheld.signer != self.address:
                queue_audit(batch, withheld.leaf_index, None)
            withheld_pending.add((batch.node, batch.batch_id, withheld.leaf_index))
        for leaf_hash, reason in pending:
            self.try_slash(leaf_hash, reason)
        for node, batch_id, leaf_index in withheld_pending:
            self.try_slash_withheld(node, batch_id, leaf_index)

    # --- what reached the chain --------------------------------------------------------------

    def record_slashes(self, start: int, end: int) -> None:
        """Record the slashes in blocks [start, end] that carried a finding of ours."""
        slasher = self.contracts.slasher
        for event in slasher.leaves_slashed(from_block=start, to_block=end):
            self._record_event(
                key=event.leaf,
                reason=Reason(event.reason),
                event=event,
                what=f"leaf 0x{event.leaf.hex()[:16]}",
            )
        for withheld in slasher.leaves_withheld_slashed(from_block=start, to_block=end):
            self._record_event(
                key=withheld_key(withheld.batch_id, withheld.leaf_index),
                reason=Reason.WITHHELD,
                event=withheld,
                what=f"batch {withheld.batch_id} leaf {withheld.leaf_index} (withheld)",
            )

    def _record_event(
        self, *, key: bytes, reason: Reason, event: LeafSlashed | LeafWithheldSlashed, what: str
    ) -> None:
        self._slashed(event.node, int(event.batch_id))  # anyone's slash: the stake changed
        with self.ledger.begin() as db:
            signers = {v.signer for v in verdicts_for(db, key, reason)}
            tx_hash = bytes.fromhex(event.tx_hash.removeprefix("0x"))
            if self.address not in signers or is_slash_recorded(db, tx_hash):
                return
            record_slash(
                db,
                node=event.node,
                batch_id=event.batch_id,
                leaf_hash=key,
                reason=_SLASH_REASONS[reason],
                amount=event.amount,
                bounty=event.bounty_per_verifier,
                tx_hash=tx_hash,
            )
        logger.info(
            "slash of %s for %s recorded: %s taken, bounty %s",
            event.node,
            what,
            self.units.exact(event.amount),
            self.units.show(event.bounty_per_verifier),
        )
