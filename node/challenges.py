"""Answering receipt challenges: every receipt a node signed is an obligation it proves on demand.

A client that holds one of this node's receipts may challenge it on-chain once the receipt's
commit deadline (`Slasher.commitDeadline` after its `issued_at`) has passed
(`Slasher.challengeReceipt`); unless the node shows, within the response window, that it
committed the leaf by that deadline, anyone slashes it (`Slasher.slashUnanswered`). An honest
node commits every leaf within minutes, so it can always answer: `ChallengeAnswerer` follows
the `ReceiptChallenged` events naming this node (every `challenge_poll_interval`) and answers
each open one with the leaf's batch, position and Merkle proof from the node's ledger. The
answer earns the node the challenger's bond. A challenge it cannot answer (a leaf it never
stored, or committed too late) is logged as an error: it will cost a slash.
"""

from __future__ import annotations

import logging

from ledger.chain import Chain, ChainError
from ledger.contracts import Commitments, Slasher
from ledger.contracts.slasher import ChallengeStatus
from ledger.db import BatchStatus, Ledger, get_leaf, leaf_proof
from ledger.types import BatchId
from ledger.units import format_time

logger = logging.getLogger(__name__)


class ChallengeAnswerer:
    """Follows the challenges of this node's receipts and answers each open one. Blocking
    (chain and ledger): call `answer_open` from a worker thread."""

    def __init__(
        self,
        chain: Chain,
        ledger: Ledger,
        slasher: Slasher,
        commitments: Commitments,
        *,
        node: str,
        from_block: int,
    ) -> None:
        self.chain = chain
        self.ledger = ledger
        self.slasher = slasher
        self.commitments = commitments
        self.node = node
        self.from_block = from_block  # where batch headers are looked up (the deployment's block)
        self._cursor = from_block  # the next block whose challenge events are read
        self._open: set[int] = set()  # challenges seen and not yet answered or given up
        self.answered = 0

    def answer_open(self) -> list[int]:
        """Read new challenges of this node and answer every open one; the ids answered."""
        latest = self.chain.block_number()
        if latest >= self._cursor:
            self._open.update(
                self.slasher.receipt_challenges(
                    from_block=self._cursor, to_block=latest, node=self.node
                )
            )
            self._cursor = latest + 1
        answered = []
        for challenge_id in sorted(self._open):
            try:
                done = self._answer(challenge_id)
            except ChainError as exc:  # try again next time, while the window lasts
                logger.warning("answering receipt challenge %d failed: %s", challenge_id, exc)
                continue
            self._open.discard(challenge_id)
            if done:
                answered.append(challenge_id)
        self.answered += len(answered)
        return answered

    def _answer(self, challenge_id: int) -> bool:
        """Answer one challenge; False when there is nothing (more) to do about it."""
        challenge = self.slasher.get_challenge(challenge_id)
        if challenge.status is not ChallengeStatus.OPEN:
            return False
        if challenge.answer_by < self.chain.timestamp():
            logger.error(
                "receipt challenge %d expired unanswered at %s: this node will be slashed",
                challenge_id,
                format_time(challenge.answer_by),
            )
            return False
        with self.ledger.begin() as db:
            row = get_leaf(db, challenge.leaf)
            batch = row.batch if row is not None else None
            if row is None or batch is None or batch.status is not BatchStatus.COMMITTED:
                logger.error(
                    "receipt challenge %d names leaf 0x%s, which this node %s: it cannot answer "
                    "and will be slashed",
                    challenge_id,
                    challenge.leaf.hex(),
                    "never stored" if row is None else "has not committed",
                )
                return False
            leaf, index, proof = row.to_leaf(), row.index_in_batch, leaf_proof(row)
            chain_batch_id = batch.chain_batch_id
        assert index is not None and chain_batch_id is not None  # committed leaves have both
        on_chain = self.commitments.get_batch(BatchId(chain_batch_id), from_block=self.from_block)
        result = self.slasher.answer_challenge(challenge_id, leaf, on_chain, index, proof)
        logger.info(
            "answered receipt challenge %d: leaf %d of batch %d (tx %s)",
            challenge_id,
            index,
            chain_batch_id,
            result.tx_hash,
        )
        return True
