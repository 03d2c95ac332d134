"""A node's stored step inputs: written with each step's leaf, revealed to a verifier while the
leaf's challenge window is open, deleted from disk (and refused to a verifier) once it closed;
inputs of leaves not yet committed stay whatever their age."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from eth_account import Account
from eth_utils import keccak

from ledger.db import (
    Ledger,
    mark_batch_committed,
    open_ledger,
    pending_leaves,
    seal_batch,
    sqlite_url,
)
from ledger.db.columns import utcnow
from ledger.eip712 import Domain, recover_receipt_signer
from ledger.errors import EquivocationError
from ledger.merkle import MerkleTree, verify
from ledger.types import model_id
from node.commits import InputStore, LeafWriter, Receipts, build_reveal, prune_inputs
from node.protocol import ErrorCode, ProtocolError
from node.sketch import Sketch, mask_hash
from node.states import stack_states, states_hash

SALT = bytes.fromhex("5a17" * 16)  # a Slasher deployment's EIP-712 domain salt

WINDOW = 3600.0  # the challenge window, seconds
SLASHER = "0x" + "5a" * 20
STEPS = 3
SPAN = (0, 2)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = open_ledger(sqlite_url(tmp_path / "ledger.sqlite"))
    yield opened
    opened.close()


def _serve(ledger: Ledger, store: InputStore, sessions: list[bytes]) -> None:
    """Each session's STEPS steps as the node stores them: leaf, signed receipt, inputs, sketch."""
    account = Account.create()
    receipts = Receipts(
        domain=Domain.slasher(31337, SLASHER, SALT), account=account, model_id=model_id("tiny")
    )

    async def run() -> None:
        with ThreadPoolExecutor(1) as executor:
            writer = LeafWriter(ledger, store, executor)
            for session_id in sessions:
                for step in range(STEPS):
                    hidden = torch.randn(1, 1, 16)
                    mask = torch.ones(1, step + 1, dtype=torch.long)
                    receipt, encoded = receipts.make_with_sketch(
                        session_id=session_id,
                        span=SPAN,
                        step=step,
                        tokens=1,
                        hidden_in=hidden,
                        hidden_out=hidden * 2,
                        mask=mask,
                    )
                    writer.submit(receipt, hidden, mask, encoded)
            await writer.flush()
            assert writer.written == len(sessions) * STEPS

    asyncio.run(run())


def _files(store: InputStore) -> set[str]:
    return {str(p.relative_to(store.root)) for p in store.root.rglob("*.safetensors")}


def test_inputs_are_revealed_in_the_window_and_deleted_after_it(
    ledger: Ledger, tmp_path: Path
) -> None:
    node = Account.create().address  # checksummed, as the ledger stores it
    store = InputStore(tmp_path / "inputs")
    old, recent, pending = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    _serve(ledger, store, [old, recent, pending])
    assert len(_files(store)) == 3 * STEPS
    with ledger.begin() as db:  # old's leaves committed two windows ago, recent's just now
        by_session: dict[bytes, list] = {}
        for leaf in pending_leaves(db):
            by_session.setdefault(bytes(leaf.session_id), []).append(leaf)
        long_ago = utcnow() - timedelta(seconds=2 * WINDOW)
        for chain_id, (session_id, when) in enumerate([(old, long_ago), (recent, utcnow())], 1):
            batch = seal_batch(db, by_session[session_id], node=node)
            mark_batch_committed(
                db,
                batch,
                chain_batch_id=chain_id,
                tx_hash=bytes([chain_id]) * 32,
                committed_at=when,
            )

    # while nothing is pruned, a verifier gets the old session's inputs up to the leaf
    reveal = build_reveal(ledger, store, node=node, batch_id=1, leaf_index=2, full=True)
    response, tensors = reveal.response, list(reveal.tensors())
    assert [s.leaf.step for s in response.steps] == [0, 1, 2]
    assert len(tensors) == STEPS + 3  # hidden states per step, one mask, the steps' sketches
    assert tensors[STEPS + 1].shape == (1, STEPS, 8)  # every step's sketch indices
    assert tensors[STEPS].shape == (1, STEPS)  # the mask covers every step's position
    # each step names its position in its batch (of STEPS leaves), and its proof holds there
    root = MerkleTree(response.batch_leaves).root
    for position, step in enumerate(response.steps):
        assert step.leaf_index == position
        assert verify(step.proof, root, step.leaf.hash(), position, STEPS)
        assert not verify(step.proof, root, step.leaf.hash(), (position + 1) % STEPS, STEPS)

    assert prune_inputs(ledger, store, challenge_window=WINDOW) == 1
    left = _files(store)
    assert not any(path.startswith(old.hex()) for path in left)
    assert not (store.root / old.hex()).exists()  # its folders went with it
    assert sum(path.startswith(recent.hex()) for path in left) == STEPS  # window still open
    assert sum(path.startswith(pending.hex()) for path in left) == STEPS  # never committed yet
    with pytest.raises(ProtocolError) as refused:
        build_reveal(ledger, store, node=node, batch_id=1, leaf_index=2)
    assert refused.value.code is ErrorCode.NOT_FOUND
    assert "pruned" in str(refused.value)
    response = build_reveal(ledger, store, node=node, batch_id=2, leaf_index=1).response
    assert [s.leaf.step for s in response.steps] == [0, 1]

    # a second pass finds nothing more to delete
    assert prune_inputs(ledger, store, challenge_window=WINDOW) == 0
    assert len(_files(store)) == 2 * STEPS


def test_a_receipt_is_stamped_with_its_time_signed_over_it_and_stored_once(
    ledger: Ledger, tmp_path: Path
) -> None:
    account = Account.create()
    domain = Domain.slasher(31337, SLASHER, SALT)
    times = iter([1_767_225_600.9, 1_767_225_660.0])
    receipts = Receipts(
        domain=domain, account=account, model_id=model_id("tiny"), clock=lambda: next(times)
    )
    hidden = torch.randn(1, 1, 16)
    mask = torch.ones(1, 1, dtype=torch.long)

    def make() -> tuple:
        return receipts.make_with_sketch(
            session_id=b"\x04" * 32, span=SPAN, step=0, tokens=1, hidden_in=hidden,
            hidden_out=hidden * 2, mask=mask,
        )  # fmt: skip

    receipt, encoded = make()
    assert receipt.leaf.issued_at == 1_767_225_600  # whole seconds, as the contract takes them
    assert recover_receipt_signer(domain, receipt.leaf, receipt.signature) == account.address
    moved = dataclasses.replace(receipt.leaf, issued_at=1_767_225_601)
    assert recover_receipt_signer(domain, moved, receipt.signature) != account.address
    # the same step signed a minute later: another receipt for the slot (equivocation)
    again, _ = make()
    assert again.leaf.issued_at == 1_767_225_660 and again.leaf.hash() != receipt.leaf.hash()

    async def run() -> None:
        with ThreadPoolExecutor(1) as executor:
            writer = LeafWriter(ledger, InputStore(tmp_path / "inputs"), executor)
            await writer.submit(receipt, hidden, mask, encoded)
            await writer.submit(receipt, hidden, mask, encoded)  # a retry: the same receipt
            with pytest.raises(EquivocationError):  # refused: the slot holds the first
                await writer.submit(again, hidden, mask, encoded)
            await writer.flush()

    asyncio.run(run())
    with ledger.begin() as db:
        stored = pending_leaves(db)
        assert [row.to_leaf() for row in stored] == [receipt.leaf]
        assert stored[0].issued_at == 1_767_225_600
        assert stored[0].receipt_signature == receipt.signature


def test_a_16bit_node_stores_and_reveals_every_steps_block_states(
    ledger: Ledger, tmp_path: Path
) -> None:
    """What a blockwise audit needs (node.states): each step's block outputs, stored with its
    inputs, committed through its sketch and revealed after the sketch, one per step."""
    node = Account.create().address
    store = InputStore(tmp_path / "inputs")
    receipts = Receipts(
        domain=Domain.slasher(31337, SLASHER, SALT),
        account=Account.create(),
        model_id=model_id("t"),
    )
    session = b"\x04" * 32
    served = []

    async def run() -> None:
        with ThreadPoolExecutor(1) as executor:
            writer = LeafWriter(ledger, store, executor)
            for step in range(STEPS):
                tokens = 4 if step == 0 else 1
                hidden = torch.randn(1, tokens, 16).bfloat16()
                output = hidden * 3
                states = stack_states([hidden * 2, hidden * 2.5, output], output)  # 3 blocks
                mask = torch.ones(1, 3 + step + 1, dtype=torch.long)
                receipt, encoded = receipts.make_with_sketch(
                    session_id=session, span=(0, 3), step=step, tokens=tokens,
                    hidden_in=hidden, hidden_out=output, mask=mask, states=states,
                )  # fmt: skip
                committed = Sketch.decode(encoded)
                assert committed.states_hash == states_hash(states)
                assert committed.mask_hash == mask_hash(mask, tokens)
                assert receipt.leaf.sketch_hash == keccak(encoded)
                assert receipt.states_hash == states_hash(states)  # disclosed to the client
                served.append(states)
                writer.submit(receipt, hidden, mask, encoded, states)
            await writer.flush()

    asyncio.run(run())
    with ledger.begin() as db:
        batch = seal_batch(db, pending_leaves(db), node=node)
        mark_batch_committed(db, batch, chain_batch_id=1, tx_hash=b"\x01" * 32)
    reveal = build_reveal(ledger, store, node=node, batch_id=1, leaf_index=2, full=True)
    assert reveal.response.states and reveal.response.tensor_count == 2 * STEPS + 3
    tensors = list(reveal.tensors())
    assert len(tensors) == reveal.response.tensor_count
    assert [t.numel() * t.element_size() for t in tensors] == reveal.sizes
    for stored, revealed in zip(served, tensors[STEPS + 3 :], strict=True):
        assert revealed.dtype == torch.bfloat16 and torch.equal(stored, revealed)
    # a plain reveal (no sketch) carries no states
    plain = build_reveal(ledger, store, node=node, batch_id=1, leaf_index=2)
    assert not plain.response.states and len(list(plain.tensors())) == STEPS + 1
