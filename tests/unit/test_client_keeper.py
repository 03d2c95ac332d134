"""The client's receipt keeper (`client.keeper.ReceiptKeeper`): valid receipts reach the ledger
in order, refused ones at once with the output behind them beside the ledger, and a failed
write is not lost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from client.keeper import ReceiptKeeper
from client.receipts import ReceiptProblem
from ledger.db import Ledger, ReceiptStatus, open_ledger, receipts_of, sqlite_url
from ledger.errors import LedgerDbError
from ledger.types import Leaf, model_id
from node.protocol import SignedReceipt

SERVER = "0x" + "aa" * 20
PEER = "12D3KooW" + "x" * 44
CHAIN = 31337


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = open_ledger(sqlite_url(tmp_path / "ledger.sqlite"))
    yield opened
    opened.close()


def _receipt(step: int, signature: bytes = b"\x05" * 65) -> SignedReceipt:
    leaf = Leaf(b"\x01" * 32, model_id("tiny"), 0, 3, step, 1, b"\x02" * 32, b"\x03" * 32,
                b"\x04" * 32, 1_767_225_600 + step)  # fmt: skip
    return SignedReceipt(leaf, signature)


def _keep(
    keeper: ReceiptKeeper,
    receipt: SignedReceipt,
    problem: tuple[ReceiptProblem, str] | None = None,
    output: torch.Tensor | None = None,
) -> None:
    keeper.keep(
        receipt, server=SERVER, peer_id=PEER, channel_id=1, sent=b"\x02" * 32,
        received=b"\x03" * 32, cost=3000, problem=problem, output=output,
    )  # fmt: skip


def test_receipts_reach_the_ledger_in_order_and_evidence_with_its_output(
    ledger: Ledger, tmp_path: Path
) -> None:
    keeper = ReceiptKeeper(ledger, chain_id=CHAIN, evidence_dir=tmp_path / "evidence")
    try:
        for step in range(5):
            _keep(keeper, _receipt(step))
        output = torch.arange(6, dtype=torch.float32).reshape(1, 2, 3)  # [batch, tokens, hidden]
        refused = _receipt(5)
        _keep(keeper, refused, (ReceiptProblem.OUTPUT_HASH, "differs"), output)
        # evidence is written at once, after everything kept before it
        with ledger.begin() as db:
            kept = receipts_of(db)
        assert [r.step for r in kept] == [0, 1, 2, 3, 4, 5]
        assert [r.status for r in kept] == [ReceiptStatus.VALID] * 5 + [ReceiptStatus.INVALID]
        path = keeper.evidence_file(refused)
        assert path.parent == tmp_path / "evidence"
        assert torch.equal(load_file(path)["output"], output)
    finally:
        keeper.close()


def test_a_failed_background_write_surfaces_on_flush(ledger: Ledger, tmp_path: Path) -> None:
    keeper = ReceiptKeeper(ledger, chain_id=CHAIN, evidence_dir=tmp_path / "evidence")
    _keep(keeper, _receipt(0, signature=b"\x05" * 64))  # refused by the ledger
    with pytest.raises(LedgerDbError, match="signature"):
        keeper.close()
    with ledger.begin() as db:
        assert receipts_of(db) == []
