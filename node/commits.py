"""Commitments: the leaf and signed receipt of every served step, the inputs kept for reveals,
and the Merkle roots committed on-chain.

Per step (`Receipts.make_with_sketch`, in the compute thread): the leaf of DESIGN.md —
session, model id, span, step, tokens, keccak of the exact input and output tensors, keccak of
the output's sketch (which also commits the step's attention mask and a 16-bit node's block
states), and the unix time it is signed at (`issuedAt`: the leaf must be committed by that time
plus the Slasher's commit deadline) — and the node's EIP-712 receipt over it. Each slot
(session, span, step) is signed once: steps come strictly in order, a session id is never
served twice, and a retried ledger write stores the receipt already signed, never a new one
(a second receipt for a slot, even one differing only in its time, is equivocation). Then
(`LeafWriter.submit`, in the ledger thread, before the reply is sent: a receipt obliges the
node to commit its leaf) the step's inputs (hidden states as received, the step's own columns
of its mask, and the encoded sketch the leaf commits) go to a safetensors file under the node's
inputs directory and the leaf to the ledger, with the file's index, concurrent steps' leaves
grouped into one transaction.
`Committer.commit_pending` first settles the commit transactions sent before a crash (by hash
and nonce: a mined one is never sent again, and nothing is sent while one may still land), then
seals pending leaves into batches and commits each root (`Commitments.commit`, which refuses a
root the node already committed), recording the on-chain batch id; `prune_inputs` deletes
inputs whose challenge window closed. `build_reveal` assembles what a verifier gets for a leaf from the
ledger, and `Reveal.messages` streams it from disk one step at a time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import torch
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from sqlalchemy.exc import IntegrityError

from ledger.chain import ChainError, ContractRevert, TxFate
from ledger.contracts import Commitments
from ledger.contracts.commitments import ROOT_ALREADY_COMMITTED
from ledger.db import (
    BatchStatus,
    Ledger,
    add_leaf,
    add_served_steps,
    batch_tree,
    batch_with_root,
    batches_with_status,
    delete_inputs,
    expired_input_spans,
    get_batch,
    mark_batch_committed,
    mark_batch_failed,
    pending_leaves,
    pending_txs,
    record_input,
    seal_batch,
    session_inputs,
    session_leaves,
)
from ledger.db.columns import utcnow
from ledger.db.models import Batch
from ledger.eip712 import Domain, sign_receipt
from ledger.errors import LedgerError
from ledger.merkle import MerkleTree
from ledger.types import Leaf, ModelId
from node.errors import SketchFormatError
from node.protocol import (
    BACKWARD_STEP,
    ErrorCode,
    Msg,
    ProtocolError,
    RevealedStep,
    RevealResponse,
    SignedReceipt,
    stream_frame,
)
from node.sketch import Sketch, backward_sketch, mask_hash, sketch
from node.states import states_hash
from node.tensors import tensor_hash

logger = logging.getLogger(__name__)

# Bytes per element of the dtypes stored hidden states come in (safetensors' names).
_STORED_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}
# What `LeafWriter` stores per step: the signed receipt, hidden states, mask, encoded sketch
# and, for a 16-bit node, its block states (`node.states`).
_Step = tuple[
    SignedReceipt, torch.Tensor, torch.Tensor, bytes, torch.Tensor | None, torch.Tensor | None
]


class Receipts:
    """Builds and signs the leaf of each served step, stamped with the time it is signed."""

    def __init__(
        self,
        *,
        domain: Domain,
        account: LocalAccount,
        model_id: ModelId,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.domain = domain
        self.account = account
        self.model_id = model_id
        self.clock = clock  # unix seconds; the receipt's issuedAt

    def make_with_sketch(
        self,
        *,
        session_id: bytes,
        span: tuple[int, int],
        step: int,
        tokens: int,
        hidden_in: torch.Tensor,
        hidden_out: torch.Tensor,
        mask: torch.Tensor,
        states: torch.Tensor | None = None,
        quantization: str | None = None,
        prompts_hash: bytes | None = None,
    ) -> tuple[SignedReceipt, bytes]:
        """The signed leaf of one step (`hidden_in`/`hidden_out` are the exact tensors received
        and sent) and the encoded sketch whose hash the leaf commits, kept for reveals: it also
        commits the step's own columns of `mask` ([batch, past + tokens], as the step was
        computed with), a 16-bit node's block `states` (`node.states.stack_states`) and its
        weights' `quantization` (`node.quantize`) and the `tensor_hash` of the deep prompts of
        its session or call (version 5)."""
        issued_at = int(self.clock())
        hashed = None if states is None else states_hash(states)
        masked = mask_hash(mask, hidden_in.shape[1])
        encoded = sketch(
            hidden_out,
            mask_hash=masked,
            states_hash=hashed,
            quantization=quantization,
            prompts_hash=prompts_hash,
        ).encode()
        leaf = Leaf(
            session_id=session_id,
            model_id=self.model_id,
            span_start=span[0],
            span_end=span[1],
            step=step,
            tokens=tokens,
            input_hash=tensor_hash(hidden_in),
            output_hash=tensor_hash(hidden_out),
            sketch_hash=keccak(encoded),
            issued_at=issued_at,
        )
        signature = sign_receipt(self.domain, leaf, self.account)
        return SignedReceipt(leaf, signature, hashed), encoded

    def make_backward(
        self,
        *,
        session_id: bytes,
        span: tuple[int, int],
        tokens: int,
        grad_output: torch.Tensor,
        grad_input: torch.Tensor,
        mask: torch.Tensor,
        prompts_hash: bytes | None = None,
        grad_prompts: torch.Tensor | None = None,
    ) -> tuple[SignedReceipt, bytes]:
        """The signed leaf of a backward (`node.training`): step `BACKWARD_STEP` of its
        forward's session, from the output gradient received to the input gradient sent, with
        the backward's sketch (version 4) of the latter, or with the deep prompts' hash and the
        `grad_prompts` sent, version 6; and that encoded sketch."""
        masked = mask_hash(mask, grad_output.shape[1])
        encoded = backward_sketch(
            grad_input,
            mask_hash=masked,
            prompts_hash=prompts_hash,
            prompts_grad_hash=None if grad_prompts is None else tensor_hash(grad_prompts),
        ).encode()
        leaf = Leaf(
            session_id=session_id,
            model_id=self.model_id,
            span_start=span[0],
            span_end=span[1],
            step=BACKWARD_STEP,
            tokens=tokens,
            input_hash=tensor_hash(grad_output),
            output_hash=tensor_hash(grad_input),
            sketch_hash=keccak(encoded),
            issued_at=int(self.clock()),
        )
        return SignedReceipt(leaf, sign_receipt(self.domain, leaf, self.account), None), encoded


class InputStore:
    """Step inputs as safetensors files: `<root>/<session hex>/<start>-<end>/<step>.safetensors`
    holding `hidden` [batch, tokens, hidden], `mask` [batch, tokens] (the step's own columns of
    its attention mask: the columns before them are the earlier steps', which the node checked
    against its cache when it served the step), `sketch` (uint8, the encoded sketch the
    step's leaf commits) when one was given, and a 16-bit node's `states` [blocks, batch,
    tokens, hidden] (`node.states`). A session's files thus grow linearly with its
    length. Files written before protocol 3 hold the whole mask [batch, past + tokens]; `load`
    reads only its last `tokens` columns from them, so both layouts read the same."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def relative(session_id: bytes, start: int, end: int, step: int) -> str:
        return f"{session_id.hex()}/{start}-{end}/{step}.safetensors"

    def save(
        self,
        session_id: bytes,
        start: int,
        end: int,
        step: int,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        sketch: bytes = b"",
        states: torch.Tensor | None = None,
        prompts: torch.Tensor | None = None,
    ) -> str:
        """Store one step's inputs: `hidden` [batch, tokens, hidden] and its attention mask,
        [batch, past + tokens] as received (only its last `tokens` columns are kept) or
        [batch, tokens]; the encoded sketch, block states and `prompts` when given (a training
        forward's deep prompts, its backward's gradient of them)."""
        rel = self.relative(session_id, start, end, step)
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tokens = hidden.shape[1]
        # mask: [batch, past + tokens] -> the step's own columns [batch, tokens]
        new_columns = mask[:, mask.shape[1] - tokens :].contiguous()
        tensors = {"hidden": hidden.contiguous(), "mask": new_columns}
        if sketch:
            tensors["sketch"] = torch.frombuffer(bytearray(sketch), dtype=torch.uint8)
        if states is not None:
            tensors["states"] = states.contiguous()
        if prompts is not None:
            tensors["prompts"] = prompts.contiguous()
        save_file(tensors, str(path))
        return rel

    def load(self, rel: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A step's `hidden` [batch, tokens, hidden] and its own mask columns [batch, tokens]
        (read from disk alone, also from a file holding the whole mask). `ValueError` for a
        file whose tensors do not fit together; OSError/SafetensorError when unreadable."""
        with safe_open(str(self.root / rel), framework="pt") as f:
            hidden = f.get_tensor("hidden")
            stored = f.get_slice("mask")
            batch, length = stored.get_shape()
            tokens = hidden.shape[1] if hidden.ndim == 3 else -1
            if hidden.ndim != 3 or batch != hidden.shape[0] or not 0 < tokens <= length:
                raise ValueError(
                    f"{rel}: mask {[batch, length]} does not cover hidden states "
                    f"{list(hidden.shape)}"
                )
            mask = stored[:, length - tokens :].contiguous()  # [batch, tokens]
        return hidden, mask

    def shapes(self, rel: str) -> tuple[list[int], str]:
        """A step's hidden-state shape and dtype (safetensors' name, e.g. "F32"), read from the
        file's header alone."""
        with safe_open(str(self.root / rel), framework="pt") as f:
            hidden = f.get_slice("hidden")
            return list(hidden.get_shape()), str(hidden.get_dtype())

    def load_states(self, rel: str) -> torch.Tensor | None:
        """A step's block states [blocks, batch, tokens, hidden], None if none were stored."""
        with safe_open(str(self.root / rel), framework="pt") as f:
            if "states" not in f.keys():  # noqa: SIM118 (not a dict)
                return None
            return f.get_tensor("states")

    def states_shape(self, rel: str) -> tuple[list[int], str] | None:
        """The shape and dtype of a step's stored block states, from the header; None if none."""
        with safe_open(str(self.root / rel), framework="pt") as f:
            if "states" not in f.keys():  # noqa: SIM118 (not a dict)
                return None
            states = f.get_slice("states")
            return list(states.get_shape()), str(states.get_dtype())

    def load_prompts(self, rel: str) -> torch.Tensor | None:
        """A step's stored deep prompts (or, for a backward, their gradient), None if none."""
        with safe_open(str(self.root / rel), framework="pt") as f:
            if "prompts" not in f.keys():  # noqa: SIM118 (not a dict)
                return None
            return f.get_tensor("prompts")

    def prompts_shape(self, rel: str) -> tuple[list[int], str] | None:
        """The shape and dtype of a step's stored prompts, from the header; None if none."""
        with safe_open(str(self.root / rel), framework="pt") as f:
            if "prompts" not in f.keys():  # noqa: SIM118 (not a dict)
                return None
            prompts = f.get_slice("prompts")
            return list(prompts.get_shape()), str(prompts.get_dtype())

    def load_sketch(self, rel: str) -> bytes | None:
        """The encoded sketch stored with a step's inputs, None if none was stored."""
        with safe_open(str(self.root / rel), framework="pt") as f:
            if "sketch" not in f.keys():  # noqa: SIM118 (not a dict)
                return None
            return f.get_tensor("sketch").numpy().tobytes()

    def delete(self, rels: Sequence[str]) -> None:
        dirs: set[Path] = set()
        for rel in rels:
            path = self.root / rel
            path.unlink(missing_ok=True)
            dirs.add(path.parent)
        for directory in dirs:  # <session>/<span>/ and then <session>/ once empty
            for folder in (directory, directory.parent):
                if folder != self.root and folder.is_dir() and not any(folder.iterdir()):
                    shutil.rmtree(folder, ignore_errors=True)


class LeafWriter:
    """Stores each served step's leaf and inputs from the ledger thread before its receipt is
    sent: `submit` starts the write and returns a future the handler awaits before replying.

    Why before: a receipt obliges the node to commit its leaf (docs/protocol.md §20a), so a
    receipt that left a node whose ledger lacks the leaf is a slash waiting to happen (a node
    killed between replying and a deferred write kept the step's voucher and lost its leaf).
    Cost, group commit: a write starts as soon as a leaf is submitted and nothing is being
    written; leaves submitted while a write is in progress wait and go together in the next
    single transaction (at most `max_group`), so a busy node pays about one ledger commit per
    group and a lone decode step one. The step's input file is written first, then its leaf and
    the row indexing that file in one transaction, so a stored leaf always has its inputs.
    Durability: what the issue needs is surviving a killed process (kill -9), and a transaction
    in SQLite's WAL and a file in the page cache do; so the leaf transaction is not fsynced
    (`_insert_unsynced`, about 1 ms per lone step on a busy 2-core machine, against 1-3.7 ms
    with the fsync of the ledger's synchronous=FULL), and the next voucher write's fsync makes
    it survive a power loss as well. Input files are never fsynced: after a power loss a
    reveal of the latest steps may fail (and be judged withheld). Each future completes with
    its own step's outcome: a slot already holding the same leaf is a retry and succeeds, one
    holding another leaf fails with `EquivocationError`."""

    def __init__(
        self,
        ledger: Ledger,
        store: InputStore,
        executor: Executor,
        *,
        max_group: int = 64,
    ) -> None:
        self.ledger = ledger
        self.store = store
        self.max_group = max_group
        self._executor = executor
        self._queue: list[tuple[_Step, asyncio.Future[None]]] = []
        self._writing: asyncio.Future[list[BaseException | None]] | None = None
        self.written = 0  # leaves stored by this process
        self.queued = 0  # leaves submitted and not stored yet

    def submit(
        self,
        receipt: SignedReceipt,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        sketch: bytes = b"",
        states: torch.Tensor | None = None,
        prompts: torch.Tensor | None = None,
    ) -> asyncio.Future[None]:
        """Queue one step's leaf, inputs, encoded sketch, block states (16-bit nodes) and deep
        prompts (training) for the ledger; the future completes once they are stored (or with
        the error that refused them)."""
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # the writer logs a failure; a caller that never awaits the future gets no warning
        stored.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append(((receipt, hidden, mask, sketch, states, prompts), stored))
        self.queued += 1
        if self._writing is None:
            self._start()
        return stored

    def _start(self) -> None:
        group, self._queue = self._queue[: self.max_group], self._queue[self.max_group :]
        writing = asyncio.get_running_loop().run_in_executor(
            self._executor, self._write, [step for step, _ in group]
        )
        self._writing = writing
        writing.add_done_callback(lambda f: self._done(f, [w for _, w in group]))

    def _done(
        self,
        future: asyncio.Future[list[BaseException | None]],
        waiters: list[asyncio.Future[None]],
    ) -> None:
        self._writing = None
        self.queued -= len(waiters)
        if future.cancelled():  # the loop is closing
            for waiter in waiters:
                waiter.cancel()
            return
        outcomes: list[BaseException | None]
        if future.exception() is not None:
            error = future.exception()
            logger.error("storing %d leaves failed", len(waiters), exc_info=error)
            outcomes = [error] * len(waiters)
        else:
            outcomes = future.result()
        for waiter, outcome in zip(waiters, outcomes, strict=True):
            if waiter.done():
                continue
            if outcome is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(outcome)
        if self._queue:
            self._start()  # the leaves submitted meanwhile, in one transaction

    def _write(self, group: list[_Step]) -> list[BaseException | None]:
        """Store `group` (ledger thread): input files, then every leaf and input row in one
        transaction. Returns each step's error (None: stored)."""
        paths = []
        for receipt, hidden, mask, encoded, states, prompts in group:
            leaf = receipt.leaf
            paths.append(
                self.store.save(
                    leaf.session_id,
                    leaf.span_start,
                    leaf.span_end,
                    leaf.step,
                    hidden,
                    mask,
                    encoded,
                    states,
                    prompts,
                )
            )
        steps = [(r.leaf, r.signature, rel) for (r, *_), rel in zip(group, paths, strict=True)]
        try:
            self._insert_unsynced(steps)
        except IntegrityError:
            # a slot already filled (a retry after a crash?): one by one, so that a repeat is
            # accepted and an equivocation is refused by name
            outcomes = [self._write_one(*step) for step in steps]
            self.written += outcomes.count(None)
            return outcomes
        self.written += len(group)
        return [None] * len(group)

    def _insert_unsynced(self, steps: list[tuple[Leaf, bytes, str]]) -> None:
        """`add_served_steps` in one transaction that SQLite writes to its WAL without an
        fsync (synchronous=NORMAL on this connection for this transaction, then set back):
        durable once it returns against a killed process, and against a power loss from the
        next commit of the ledger's other writes (a voucher's), whose fsync (synchronous=FULL)
        covers the whole WAL. Other backends: an ordinary transaction."""
        with self.ledger.engine.connect() as connection:
            if connection.dialect.name != "sqlite":
                with connection.begin():
                    add_served_steps(connection, steps)
                return
            synchronous = int(connection.exec_driver_sql("PRAGMA synchronous").scalar_one())
            connection.exec_driver_sql("PRAGMA synchronous=NORMAL")  # outside a transaction
            connection.commit()
            try:
                with connection.begin():
                    add_served_steps(connection, steps)
            finally:
                connection.exec_driver_sql(f"PRAGMA synchronous={synchronous}")
                connection.commit()

    def _write_one(self, leaf: Leaf, signature: bytes, rel: str) -> BaseException | None:
        try:
            with self.ledger.begin() as db:
                add_leaf(db, leaf, signature)
        except LedgerError as exc:
            logger.error("leaf of step %d refused: %s", leaf.step, exc)
            return exc
        with suppress(IntegrityError), self.ledger.begin() as db:  # indexed already
            record_input(
                db,
                session_id=leaf.session_id,
                span_start=leaf.span_start,
                span_end=leaf.span_end,
                step=leaf.step,
                path=rel,
            )
        return None

    async def flush(self) -> None:
        """Wait until every submitted leaf is stored (or refused)."""
        while self._writing is not None:
            await asyncio.wait([self._writing])


class CommitsPending(Protocol):
    """What the server commits through: a `Committer`, or a cheat's stand-in (node/faults.py)."""

    def commit_pending(self) -> list[int]: ...


class Committer:
    """Seals pending leaves into batches and commits their roots (blocking; worker thread)."""

    def __init__(
        self,
        ledger: Ledger,
        commitments: Commitments,
        *,
        node: str,
        model_id: ModelId,
        max_leaves: int,
    ) -> None:
        self.ledger = ledger
        self.commitments = commitments
        self.node = node
        self.model_id = model_id
        self.max_leaves = max_leaves
        self.committed_batches = 0  # by this process

    def commit_pending(self) -> list[int]:
        """Settle the commit transactions sent before (`reconcile`), then commit every batch left
        sealed but uncommitted, then seal and commit the pending leaves, `max_leaves` per batch.
        Sends nothing while an earlier commit transaction is still pending. Returns the on-chain
        batch ids committed (or found committed)."""
        try:
            committed, settled = self.reconcile()
        except (ChainError, LedgerError, OSError) as exc:
            logger.warning("cannot reconcile the commit transactions sent before: %s", exc)
            return []
        if not settled:
            return committed
        with self.ledger.begin() as db:
            retry = [
                b.id
                for status in (BatchStatus.PENDING, BatchStatus.FAILED)
                for b in batches_with_status(db, status)
                if b.model_id == self.model_id
            ]
        for batch_id in retry:
            chain_id = self._commit(batch_id)
            if chain_id is None:
                return committed  # the chain refuses; try again next time
            committed.append(chain_id)
        while True:
            with self.ledger.begin() as db:
                leaves = pending_leaves(db, model_id=self.model_id, limit=self.max_leaves)
                if not leaves:
                    return committed
                batch_id = seal_batch(db, leaves, node=self.node).id
            chain_id = self._commit(batch_id)
            if chain_id is None:
                return committed
            committed.append(chain_id)

    def reconcile(self) -> tuple[list[int], bool]:
        """Settle every commit transaction the ledger recorded as sent and never saw mined (the
        node stopped while one was pending), asking the chain by hash and then by nonce
        (`Commitments.reconcile`): a mined one marks its batch committed under the id of its
        `BatchCommitted` event, so it is never sent again; a reverted or dropped one leaves its
        batch to `_commit`, which first looks its root up on-chain. Returns the on-chain batch
        ids found committed and whether every transaction settled (False while one is pending:
        it may still land, so nothing may be sent)."""
        with self.ledger.begin() as db:
            sent = [
                (tx.tx_hash, tx.nonce)
                for tx in pending_txs(db, sender=self.node)
                if tx.function == self.commitments.commit_action
                and tx.to == self.commitments.address
            ]
        found: list[int] = []
        settled = True
        for tx_hash, nonce in sent:
            hex_hash = "0x" + tx_hash.hex()
            outcome = self.commitments.reconcile(hex_hash, nonce)
            if outcome.fate is TxFate.PENDING:
                logger.info(
                    "commit transaction %s (nonce %d) is still pending: committing nothing "
                    "until it is mined or dropped",
                    hex_hash,
                    nonce,
                )
                settled = False
            elif outcome.fate is TxFate.MINED:
                assert outcome.result is not None  # a mined outcome carries its receipt
                batch = self.commitments.committed_batch(outcome.result)
                if self._adopt(batch.root, batch.batch_id, hex_hash) is not None:
                    found.append(batch.batch_id)
            else:
                logger.warning(
                    "commit transaction %s (nonce %d) %s: %s",
                    hex_hash,
                    nonce,
                    outcome.fate,
                    outcome.revert or outcome.detail,
                )
        return found, settled

    def _adopt(self, root: bytes, chain_batch_id: int, tx_hash: str) -> int | None:
        """Mark our batch under `root` committed as on-chain batch `chain_batch_id` (by
        `tx_hash`), a commit this process did not see mined. None if no batch of this ledger
        has that root."""
        with self.ledger.begin() as db:
            batch = batch_with_root(db, root)
            if batch is None:
                logger.error(
                    "on-chain batch %d (root 0x%s, tx %s) is no batch of this ledger",
                    chain_batch_id,
                    root.hex(),
                    tx_hash,
                )
                return None
            mark_batch_committed(
                db,
                batch,
                chain_batch_id=chain_batch_id,
                tx_hash=bytes.fromhex(tx_hash.removeprefix("0x")),
            )
            local_id = batch.id
        logger.info(
            "batch %d (root 0x%s) is on-chain as batch %d, committed earlier (tx %s)",
            local_id,
            root.hex(),
            chain_batch_id,
            tx_hash,
        )
        return chain_batch_id

    def _commit(self, batch_id: int) -> int | None:
        with self.ledger.begin() as db:
            batch = db.get(Batch, batch_id)
            assert batch is not None
            root, count, tokens = batch.root, batch.leaf_count, batch.token_count
        try:
            # a root already on-chain (an earlier transaction that landed unseen) is never sent
            # again: the contract would refuse it, and the ledger must name that batch
            earlier = self.commitments.batch_of_root(self.node, root)
            if earlier is not None:
                event = self.commitments.batch_committed(earlier)
                return self._adopt(root, earlier, event.tx_hash)
            result = self.commitments.commit(self.model_id, root, count)
        except ContractRevert as exc:
            if exc.name == ROOT_ALREADY_COMMITTED:
                # sent before and mined since the check (adopt it), or still pending (next time)
                return self._adopt_mined(batch_id, root, count, exc)
            self._failed(batch_id, count, exc)
            return None
        except (ChainError, OSError) as exc:
            self._failed(batch_id, count, exc)
            return None
        chain_batch_id = int(self.commitments.committed_batch_id(result))
        with self.ledger.begin() as db:
            batch = db.get(Batch, batch_id)
            assert batch is not None
            mark_batch_committed(
                db,
                batch,
                chain_batch_id=chain_batch_id,
                tx_hash=bytes.fromhex(result.tx_hash.removeprefix("0x")),
            )
        self.committed_batches += 1
        logger.info(
            "committed batch %d: %d leaves, %d tokens, root 0x%s (tx %s)",
            chain_batch_id,
            count,
            tokens,
            root.hex(),
            result.tx_hash,
        )
        return chain_batch_id

    def _adopt_mined(
        self, batch_id: int, root: bytes, count: int, refused: ContractRevert
    ) -> int | None:
        try:
            earlier = self.commitments.batch_of_root(self.node, root)
            if earlier is None:
                self._failed(batch_id, count, refused)  # an earlier send is pending
                return None
            event = self.commitments.batch_committed(earlier)
        except (ChainError, OSError) as exc:
            self._failed(batch_id, count, exc)
            return None
        return self._adopt(root, earlier, event.tx_hash)

    def _failed(self, batch_id: int, count: int, exc: Exception) -> None:
        logger.warning("committing batch %d (%d leaves) failed: %s", batch_id, count, exc)
        with self.ledger.begin() as db:
            batch = db.get(Batch, batch_id)
            assert batch is not None
            mark_batch_failed(db, batch, str(exc))


def prune_inputs(ledger: Ledger, store: InputStore, *, challenge_window: float) -> int:
    """Delete the stored inputs no reveal can need any more (their leaves' challenge windows
    closed, or never committed and older than the window). Returns session spans pruned."""
    cutoff = utcnow() - timedelta(seconds=challenge_window)
    with ledger.begin() as db:
        spans = expired_input_spans(db, committed_before=cutoff, unused_before=cutoff)
        paths = [p for key in spans for p in delete_inputs(db, *key)]
    store.delete(paths)
    if spans:
        logger.info("pruned the stored inputs of %d session spans", len(spans))
    return len(spans)


@dataclass(frozen=True)
class Reveal:
    """A reveal ready to stream (`build_reveal`): what the ledger holds for it, read in one
    transaction already closed, and where the steps' inputs lie on disk. `messages` streams
    the `revealed` frame, loading one step's stored inputs at a time."""

    response: RevealResponse
    store: InputStore
    paths: list[str]  # steps 0..k's stored inputs, in order
    sizes: list[int]  # byte size of each tensor of the frame, in order
    sketches: list[Sketch]  # full: every step's committed sketch, in order

    def tensors(self) -> Iterator[torch.Tensor]:
        """The frame's tensors (`RevealResponse`): each step's hidden states, read from disk
        when the frame reaches it, then the mask of step k (the steps' own columns, in order),
        then (full) every step's sketch, then (`response.states`) each step's block states, read
        from disk one at a time. `ProtocolError(NOT_FOUND)` for a file that became unreadable."""
        columns: list[torch.Tensor] = []  # per step: [batch, tokens] int64
        for rel in self.paths:
            try:
                hidden, mask = self.store.load(rel)
            except (OSError, SafetensorError, KeyError, ValueError) as exc:
                raise ProtocolError(
                    ErrorCode.NOT_FOUND, f"stored inputs unreadable: {exc}"
                ) from None
            columns.append(mask.to(torch.int64))
            yield hidden  # [batch, tokens, hidden]
        yield torch.cat(columns, dim=1)  # mask: [batch, positions]
        if self.sketches:  # every step's, concatenated along the tokens axis
            yield torch.cat([c.indices for c in self.sketches], dim=1)
            yield torch.cat([c.values for c in self.sketches], dim=1)
        if self.response.states:
            for rel in self.paths:
                try:
                    states = self.store.load_states(rel)
                except (OSError, SafetensorError) as exc:
                    raise ProtocolError(
                        ErrorCode.NOT_FOUND, f"stored block states unreadable: {exc}"
                    ) from None
                if states is None:
                    raise ProtocolError(ErrorCode.NOT_FOUND, "stored block states are gone")
                yield states  # [blocks, batch, tokens, hidden]
        if self.response.prompts:  # step 0's prompts, then a backward's gradient of them
            for rel in self.paths[: self.response.prompt_tensors]:
                try:
                    prompts = self.store.load_prompts(rel)
                except (OSError, SafetensorError) as exc:
                    raise ProtocolError(
                        ErrorCode.NOT_FOUND, f"stored prompts unreadable: {exc}"
                    ) from None
                if prompts is None:
                    raise ProtocolError(ErrorCode.NOT_FOUND, "stored prompts are gone")
                yield prompts  # [blocks, P, hidden]

    def messages(self, message_type: type[Msg]) -> Iterator[Msg]:
        """The frame's protobuf messages: the metadata (every step's leaf and proof) first,
        then the tensors in order; at most one step's inputs and one message's chunks are
        held at a time besides the mask (8 bytes per position)."""
        return stream_frame(self.response.to_wire(), self.tensors(), self.sizes, message_type)


def build_reveal(
    ledger: Ledger,
    store: InputStore,
    *,
    node: str,
    batch_id: int,
    leaf_index: int,
    full: bool = False,
) -> Reveal:
    """What a verifier gets for leaf `leaf_index` of on-chain batch `batch_id`: the session's
    steps 0..k over that span (leaf, batch id, position in the batch, Merkle proof each) and
    their inputs (each step's hidden states, then step k's mask: `RevealResponse`); with
    `full`, also the batch's leaf hashes, every step's committed sketch (indices, values, each
    concatenated along the tokens axis) and,
    when the node stored them (16-bit spans, `node.states`), every step's block states.
    The ledger is read in one transaction, closed before this returns; the stored inputs are
    only checked here (headers) and read while the frame streams (`Reveal.messages`).
    NOT_FOUND when this node has no such leaf or inputs."""
    with ledger.begin() as db:
        batch = get_batch(db, chain_batch_id=batch_id)
        if batch is None or batch.node != node or not 0 <= leaf_index < len(batch.leaves):
            raise ProtocolError(
                ErrorCode.NOT_FOUND, f"this node committed no leaf {leaf_index} in batch {batch_id}"
            )
        target = batch.leaves[leaf_index]
        batch_leaves = [leaf.leaf_hash for leaf in batch.leaves] if full else []
        rows = session_leaves(
            db,
            target.session_id,
            target.span_start,
            target.span_end,
            up_to_step=target.step,
            model_id=target.model_id,
        )
        if [r.step for r in rows] != list(range(target.step + 1)):
            raise ProtocolError(
                ErrorCode.NOT_FOUND, f"steps of the session before step {target.step} are missing"
            )
        steps: list[RevealedStep] = []
        trees: dict[int, MerkleTree] = {}  # a session's steps share a few batches
        for row in rows:
            if row.batch is None or row.batch.chain_batch_id is None:
                raise ProtocolError(
                    ErrorCode.NOT_FOUND, f"step {row.step} of the session is not committed yet"
                )
            assert row.index_in_batch is not None  # a row in a batch has its index
            tree = trees.get(row.batch.id)
            if tree is None:
                tree = trees[row.batch.id] = batch_tree(row.batch)
            steps.append(
                RevealedStep(
                    row.to_leaf(),
                    row.batch.chain_batch_id,
                    row.index_in_batch,
                    tree.proof(row.index_in_batch),
                )
            )
        inputs = session_inputs(
            db, target.session_id, target.span_start, target.span_end, up_to_step=target.step
        )
        paths = [i.path for i in inputs]
    if len(paths) != len(steps):
        raise ProtocolError(ErrorCode.NOT_FOUND, "the inputs of this session were pruned")
    sizes: list[int] = []
    batch_size: int | None = None
    positions = 0
    for step, rel in enumerate(paths):
        try:
            shape, dtype = store.shapes(rel)
        except (OSError, SafetensorError, KeyError) as exc:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"stored inputs unreadable: {exc}") from None
        if (
            len(shape) != 3
            or dtype not in _STORED_ITEMSIZE
            or (batch_size is not None and shape[0] != batch_size)
        ):
            raise ProtocolError(
                ErrorCode.NOT_FOUND, f"the stored inputs of step {step} are not the session's"
            )
        batch_size = shape[0]
        positions += shape[1]
        sizes.append(math.prod(shape) * _STORED_ITEMSIZE[dtype])
    assert batch_size is not None  # a session has step 0
    sizes.append(batch_size * positions * torch.int64.itemsize)  # the mask
    sketches: list[Sketch] = []
    if full:
        for step, rel in enumerate(paths):
            try:
                encoded = store.load_sketch(rel)
                committed = Sketch.decode(encoded) if encoded is not None else None
            except (OSError, SafetensorError, SketchFormatError) as exc:
                raise ProtocolError(
                    ErrorCode.NOT_FOUND, f"stored sketch of step {step} unreadable: {exc}"
                ) from None
            if committed is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"no sketch was stored for step {step}")
            sketches.append(committed)
        if len({(c.indices.shape[0], c.k) for c in sketches}) > 1:
            raise ProtocolError(
                ErrorCode.NOT_FOUND, "the session's stored sketches differ in shape"
            )
        indices = sum(c.indices.numel() * c.indices.element_size() for c in sketches)
        values = sum(c.values.numel() * c.values.element_size() for c in sketches)
        sizes += [indices, values]
    with_states = bool(sketches) and sketches[-1].states_hash is not None
    if with_states:
        sizes += _states_sizes(store, paths)
    quantization = sketches[-1].quantization if sketches else None
    exponent = sketches[-1].exponent if sketches else None  # a backward's (version 4)
    with_prompts = bool(sketches) and sketches[-1].prompts_hash is not None
    if with_prompts:
        sizes += _prompts_sizes(store, paths[: 2 if exponent is not None else 1])
    response = RevealResponse(
        steps, full, batch_leaves, with_states, quantization, exponent, with_prompts
    )
    return Reveal(response, store, paths, sizes, sketches)


def _prompts_sizes(store: InputStore, paths: list[str]) -> list[int]:
    """The byte size of the stored deep prompts of the steps at `paths` (step 0's prompts, a
    backward's gradient of them); NOT_FOUND when a step has none or they are unreadable."""
    sizes = []
    for step, rel in enumerate(paths):
        try:
            found = store.prompts_shape(rel)
        except (OSError, SafetensorError) as exc:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"stored prompts unreadable: {exc}") from None
        if found is None or found[1] not in _STORED_ITEMSIZE or len(found[0]) != 3:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"step {step} has no stored prompts")
        shape, dtype = found
        sizes.append(math.prod(shape) * _STORED_ITEMSIZE[dtype])
    return sizes


def _states_sizes(store: InputStore, paths: list[str]) -> list[int]:
    """The byte size of every step's stored block states (from the files' headers);
    NOT_FOUND when a step has none or they are unreadable."""
    sizes = []
    for step, rel in enumerate(paths):
        try:
            found = store.states_shape(rel)
        except (OSError, SafetensorError) as exc:
            raise ProtocolError(
                ErrorCode.NOT_FOUND, f"stored block states unreadable: {exc}"
            ) from None
        if found is None or found[1] not in _STORED_ITEMSIZE or len(found[0]) != 4:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"step {step} has no stored block states")
        shape, dtype = found
        sizes.append(math.prod(shape) * _STORED_ITEMSIZE[dtype])
    return sizes


__all__ = [
    "Committer",
    "InputStore",
    "LeafWriter",
    "Receipts",
    "Reveal",
    "build_reveal",
    "prune_inputs",
]
