"""`ReceiptKeeper`: every receipt the client was given goes into its ledger.

    keeper = ReceiptKeeper(ledger, chain_id=chain.chain_id, evidence_dir=config.evidence_dir(me))
    keeper.keep(receipt, server=..., peer_id=..., channel_id=..., sent=..., received=...,
                cost=..., problem=None)
    keeper.flush()   # every receipt kept so far is in the ledger
    keeper.close()   # flush, then stop the writer

Valid receipts are written by one background thread, in the order they were kept, so that a
step does not wait for the database. A refused receipt (`problem` set, see
`client.receipts.check_receipt`) is evidence: it is written at once, after everything kept
before it, and the output the node sent with it is saved beside the ledger (`evidence_file`).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import save_file

from client.receipts import ReceiptProblem
from ledger.db import Ledger, record_receipt
from node.protocol import SignedReceipt


class ReceiptKeeper:
    """Writes a client's receipts to its ledger (see the module doc). Close it when done."""

    def __init__(self, ledger: Ledger, *, chain_id: int, evidence_dir: Path) -> None:
        self._ledger = ledger
        self._chain_id = chain_id
        self._evidence_dir = evidence_dir  # where the outputs behind refused receipts go
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="client-ledger")
        self._pending: list[Future[None]] = []  # writes handed to the writer, in order

    def keep(
        self,
        receipt: SignedReceipt,
        *,
        server: str,
        peer_id: str,
        channel_id: int,
        sent: bytes,
        received: bytes,
        cost: int,
        problem: tuple[ReceiptProblem, str] | None,
        output: torch.Tensor | None = None,
    ) -> None:
        """Store a receipt of `server` (at `peer_id`, paid on `channel_id`) in the ledger:
        valid ones in the background (in order), invalid ones (evidence) at once, with the
        `output` received for it, if given, as a safetensors file under the evidence folder
        (`evidence_file`): the receipt and that tensor show anyone what the node signed
        against what it sent."""
        ledger, chain_id = self._ledger, self._chain_id
        if problem is not None and output is not None:
            path = self.evidence_file(receipt)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"output": output.detach().cpu().contiguous()}, str(path))

        def write() -> None:
            with ledger.begin() as db:
                record_receipt(
                    db,
                    chain_id=chain_id,
                    server=server,
                    peer_id=peer_id,
                    channel_id=channel_id,
                    leaf=receipt.leaf,
                    signature=receipt.signature,
                    sent_hash=sent,
                    received_hash=received,
                    cost=cost,
                    problem=None if problem is None else problem[0].value,
                    detail=None if problem is None else problem[1],
                )

        if problem is not None:
            self.flush()
            write()
            return
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._writer.submit(write))

    def evidence_file(self, receipt: SignedReceipt) -> Path:
        """Where the output behind a refused `receipt` is kept."""
        leaf = receipt.leaf
        name = f"{leaf.session_id.hex()}-{leaf.span_start}-{leaf.span_end}-{leaf.step}"
        return self._evidence_dir / f"{name}.safetensors"

    def flush(self) -> None:
        """Wait until every receipt handed to `keep` is in the ledger."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        """Flush, then stop the writer thread (also when a write failed)."""
        try:
            self.flush()
        finally:
            self._writer.shutdown(wait=True)
