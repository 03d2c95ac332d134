"""`node serve` without commitments: the baseline `bench_node.py` measures commitments against.

    .venv/bin/python benchmarks/uncommitted_node.py serve --model ... (every `node serve` option)

The node is the real one, built with three parts replaced (`node.build.Wrapping`): its receipts
are unsigned leaves of zero hashes (no sketch, no tensor hash, no signature), it stores no leaf
and no step inputs, and it commits nothing. Everything else (payments, vouchers in the ledger,
the compute thread, the transport) is what `node serve` runs. Only this benchmark starts it:
such a node's receipts bind it to nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import torch

from ledger.types import Leaf
from node.build import Wrapping
from node.cli import app
from node.commits import CommitsPending, LeafWriter, Receipts
from node.protocol import SignedReceipt

ZERO32 = b"\x00" * 32
UNSIGNED = b"\x00" * 65


class UnsignedReceipts(Receipts):
    """Receipts of zero hashes and a zero signature: nothing hashed, sketched or signed."""

    def __init__(self, receipts: Receipts) -> None:
        super().__init__(
            domain=receipts.domain,
            account=receipts.account,
            model_id=receipts.model_id,
            clock=receipts.clock,
        )

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
        leaf = Leaf(
            session_id,
            self.model_id,
            *span,
            step,
            tokens,
            ZERO32,
            ZERO32,
            ZERO32,
            int(self.clock()),
        )
        return SignedReceipt(leaf, UNSIGNED), b""


class NoLeaves(LeafWriter):
    """A leaf writer that stores nothing."""

    def __init__(self, writer: LeafWriter) -> None:
        super().__init__(writer.ledger, writer.store, writer._executor)  # noqa: SLF001

    def submit(self, *step: Any, **_: Any) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class NeverCommits:
    """A committer with nothing to commit."""

    def commit_pending(self) -> list[int]:
        return []


def _never_commits(committer: CommitsPending) -> CommitsPending:
    return NeverCommits()


WITHOUT_COMMITMENTS = Wrapping(receipts=UnsignedReceipts, writer=NoLeaves, committer=_never_commits)

if __name__ == "__main__":
    app(prog_name="uncommitted_node.py", obj=WITHOUT_COMMITMENTS)
