"""Leaves and batches in the ledger: from a served step to a root committed on-chain.

A node stores each served step's leaf with its receipt signature (`add_leaf`; a second,
different leaf for the same slot is refused, since signing both is slashable equivocation),
seals pending leaves into a batch under a Merkle root (`seal_batch`), commits the root and
records the outcome (`mark_batch_committed` / `mark_batch_failed`), and later answers reveals
with the leaves of a session up to a step and their Merkle proofs (`session_leaves`,
`leaf_proof`). Functions take a `Session` and never commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from eth_abi.exceptions import EncodingError
from sqlalchemy import select
from sqlalchemy.orm import Session

from ledger.db.columns import check_address, check_bytes, check_int, check_time, utcnow
from ledger.db.models import SIGNATURE_LENGTH, Batch, BatchStatus, LeafRecord
from ledger.errors import EquivocationError, LedgerDbError
from ledger.merkle import MerkleTree
from ledger.types import Leaf

# ICommitments.commit takes uint32 leafCount and uint64 tokenCount.
MAX_BATCH_LEAVES = 2**32 - 1
MAX_BATCH_TOKENS = 2**64 - 1


def _leaf_hash(leaf: Leaf) -> bytes:
    for name in ("session_id", "model_id", "input_hash", "output_hash", "sketch_hash"):
        check_bytes(getattr(leaf, name), f"leaf {name.replace('_', ' ')}")
    if not (isinstance(leaf.span_start, int) and isinstance(leaf.span_end, int)) or not (
        0 <= leaf.span_start < leaf.span_end
    ):
        raise LedgerDbError(f"leaf span [{leaf.span_start}, {leaf.span_end}) is empty or invalid")
    try:
        return leaf.hash()  # abi-encodes: checks uint16 / uint32 ranges
    except (EncodingError, TypeError, ValueError) as exc:
        raise LedgerDbError(f"leaf does not fit its ABI types: {exc}") from None


def get_leaf(session: Session, leaf_hash: bytes) -> LeafRecord | None:
    """The stored leaf whose hash is `leaf_hash`, if any."""
    leaf_hash = check_bytes(leaf_hash, "leaf hash")
    return session.scalars(
        select(LeafRecord).where(LeafRecord.leaf_hash == leaf_hash)
    ).one_or_none()


def add_leaf(session: Session, leaf: Leaf, receipt_signature: bytes) -> LeafRecord:
    """Store `leaf` and the node's receipt signature over it, pending (in no batch yet).
    Storing the same leaf with the same signature again returns the stored row.
    `EquivocationError` if the slot (session, model, span, step) holds a different leaf;
    the signature is not verified here (see `ledger.eip712.recover_receipt_signer`)."""
    leaf_hash = _leaf_hash(leaf)
    signature = check_bytes(receipt_signature, "receipt signature", SIGNATURE_LENGTH)
    session_id, model_id, span_start, span_end, step = leaf.slot()
    existing = session.scalars(
        select(LeafRecord).where(
            LeafRecord.session_id == session_id,
            LeafRecord.model_id == model_id,
            LeafRecord.span_start == span_start,
            LeafRecord.span_end == span_end,
            LeafRecord.step == step,
        )
    ).one_or_none()
    if existing is not None:
        if existing.leaf_hash != leaf_hash:
            raise EquivocationError(
                f"session 0x{session_id.hex()} span [{span_start}, {span_end}) step {step} "
                f"already has leaf 0x{existing.leaf_hash.hex()}"
            )
        if existing.receipt_signature != signature:
            raise LedgerDbError(f"leaf 0x{leaf_hash.hex()} is stored with another signature")
        return existing
    record = LeafRecord(
        session_id=session_id,
        model_id=model_id,
        span_start=span_start,
        span_end=span_end,
        step=step,
        tokens=leaf.tokens,
        input_hash=leaf.input_hash,
        output_hash=leaf.output_hash,
        sketch_hash=leaf.sketch_hash,
        issued_at=check_int(leaf.issued_at, "leaf issued at"),  # SQL BIGINT: below 2**63
        leaf_hash=leaf_hash,
        receipt_signature=signature,
    )
    session.add(record)
    session.flush()
    return record


def pending_leaves(
    session: Session, *, model_id: bytes | None = None, limit: int | None = None
) -> list[LeafRecord]:
    """Leaves in no batch yet, oldest first (optionally of one model, at most `limit`)."""
    query = select(LeafRecord).where(LeafRecord.batch_id.is_(None))
    if model_id is not None:
        query = query.where(LeafRecord.model_id == check_bytes(model_id, "model id"))
    query = query.order_by(LeafRecord.id)
    if limit is not None:
        query = query.limit(check_int(limit, "limit", low=1))
    return list(session.scalars(query))


def seal_batch(session: Session, leaves: Sequence[LeafRecord], *, node: str) -> Batch:
    """Put `leaves` (pending, one model) into a new pending batch of `node`, in the order given:
    leaf i gets index i and the batch gets their Merkle root, leaf and token counts."""
    node = check_address(node, "node")
    if not leaves:
        raise LedgerDbError("cannot seal an empty batch")
    if len(leaves) > MAX_BATCH_LEAVES:
        raise LedgerDbError(f"a batch holds at most {MAX_BATCH_LEAVES} leaves")
    if len({id(leaf) for leaf in leaves}) != len(leaves):
        raise LedgerDbError("a leaf appears twice in the batch")
    model_ids = {leaf.model_id for leaf in leaves}
    if len(model_ids) != 1:
        raise LedgerDbError(f"a batch is for one model, got {len(model_ids)}")
    for leaf in leaves:
        if leaf.batch_id is not None or leaf.batch is not None:
            raise LedgerDbError(f"leaf 0x{leaf.leaf_hash.hex()} is already in a batch")
    _lock_pending(session, leaves)
    token_count = sum(leaf.tokens for leaf in leaves)
    if token_count > MAX_BATCH_TOKENS:
        raise LedgerDbError(f"a batch covers at most {MAX_BATCH_TOKENS} tokens")
    tree = MerkleTree([leaf.leaf_hash for leaf in leaves])
    batch = Batch(
        node=node,
        model_id=model_ids.pop(),
        root=tree.root,
        leaf_count=len(leaves),
        token_count=token_count,
        status=BatchStatus.PENDING,
    )
    session.add(batch)
    for index, leaf in enumerate(leaves):
        leaf.batch = batch
        leaf.index_in_batch = index
    session.flush()
    return batch


# leaves locked per statement by `_lock_pending` (well below every backend's parameter limit)
_LOCK_CHUNK = 1000


def _lock_pending(session: Session, leaves: Sequence[LeafRecord]) -> None:
    """Lock the rows of `leaves` until the transaction ends (`SELECT ... FOR UPDATE` on
    PostgreSQL; SQLite ignores the clause) and check that each is still in no batch: a leaf
    sealed by another transaction since it was read is refused, never moved to a second
    batch (which would leave the first batch's root over leaves it no longer holds)."""
    session.flush()
    ids = [leaf.id for leaf in leaves]
    still = 0
    for start in range(0, len(ids), _LOCK_CHUNK):
        chunk = ids[start : start + _LOCK_CHUNK]
        still += len(
            session.scalars(
                select(LeafRecord.id)
                .where(LeafRecord.id.in_(chunk), LeafRecord.batch_id.is_(None))
                .with_for_update()
            ).all()
        )
    if still != len(ids):
        raise LedgerDbError(
            f"{len(ids) - still} of the leaves were sealed into another batch meanwhile"
        )


def batch_tree(batch: Batch) -> MerkleTree:
    """The Merkle tree of `batch`'s leaves, rebuilt from the ledger."""
    tree = MerkleTree([leaf.leaf_hash for leaf in batch.leaves])
    if tree.root != batch.root:
        raise LedgerDbError(f"batch {batch.id}: stored leaves do not give the stored root")
    return tree


def leaf_proof(leaf: LeafRecord) -> list[bytes]:
    """The Merkle proof of a sealed leaf at its index under its batch's root (`IndexedMerkle`:
    verified with `index_in_batch` and the batch's `leaf_count`)."""
    if leaf.batch is None or leaf.index_in_batch is None:
        raise LedgerDbError(f"leaf 0x{leaf.leaf_hash.hex()} is not in a batch yet")
    return batch_tree(leaf.batch).proof(leaf.index_in_batch)


def mark_batch_committed(
    session: Session,
    batch: Batch,
    *,
    chain_batch_id: int,
    tx_hash: bytes,
    committed_at: datetime | None = None,
) -> Batch:
    """Record that `batch`'s root is on-chain as batch `chain_batch_id`, committed by
    `tx_hash`. Repeating it with the same id is a no-op; another id is refused."""
    chain_batch_id = check_int(chain_batch_id, "chain batch id", low=1)
    tx_hash = check_bytes(tx_hash, "tx hash")
    committed_at = utcnow() if committed_at is None else check_time(committed_at, "committed_at")
    if batch.status is BatchStatus.COMMITTED:
        if batch.chain_batch_id != chain_batch_id:
            raise LedgerDbError(
                f"batch {batch.id} is already committed as on-chain batch {batch.chain_batch_id}"
            )
        return batch
    batch.status = BatchStatus.COMMITTED
    batch.chain_batch_id = chain_batch_id
    batch.tx_hash = tx_hash
    batch.committed_at = committed_at
    batch.error = None
    session.flush()
    return batch


def mark_batch_failed(
    session: Session, batch: Batch, error: str, *, tx_hash: bytes | None = None
) -> Batch:
    """Record that committing `batch` failed (it stays sealed and may be committed later)."""
    if batch.status is BatchStatus.COMMITTED:
        raise LedgerDbError(f"batch {batch.id} is already committed")
    batch.status = BatchStatus.FAILED
    batch.error = str(error)
    if tx_hash is not None:
        batch.tx_hash = check_bytes(tx_hash, "tx hash")
    session.flush()
    return batch


def batches_with_status(session: Session, status: BatchStatus | str) -> list[Batch]:
    """Batches in `status`, oldest first (e.g. the pending and failed ones to commit)."""
    try:
        status = BatchStatus(status)
    except ValueError as exc:
        raise LedgerDbError(str(exc)) from None
    return list(session.scalars(select(Batch).where(Batch.status == status).order_by(Batch.id)))


def get_batch(session: Session, *, chain_batch_id: int) -> Batch | None:
    """Our batch committed on-chain as `chain_batch_id`, if any."""
    chain_batch_id = check_int(chain_batch_id, "chain batch id", low=1)
    return session.scalars(
        select(Batch).where(Batch.chain_batch_id == chain_batch_id).order_by(Batch.id.desc())
    ).first()


def batch_with_root(session: Session, root: bytes) -> Batch | None:
    """Our batch sealed under Merkle root `root`, if any (roots are unique in the ledger)."""
    root = check_bytes(root, "root")
    return session.scalars(select(Batch).where(Batch.root == root)).one_or_none()


def session_leaves(
    session: Session,
    session_id: bytes,
    span_start: int,
    span_end: int,
    *,
    up_to_step: int | None = None,
    model_id: bytes | None = None,
) -> list[LeafRecord]:
    """The leaves of one inference session over one span, by step, up to `up_to_step`
    included (all if None): what a node reveals to a verifier auditing a step."""
    query = select(LeafRecord).where(
        LeafRecord.session_id == check_bytes(session_id, "session id"),
        LeafRecord.span_start == check_int(span_start, "span start"),
        LeafRecord.span_end == check_int(span_end, "span end"),
    )
    if up_to_step is not None:
        query = query.where(LeafRecord.step <= check_int(up_to_step, "step"))
    if model_id is not None:
        query = query.where(LeafRecord.model_id == check_bytes(model_id, "model id"))
    return list(session.scalars(query.order_by(LeafRecord.step)))
