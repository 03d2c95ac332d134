"""Checking a server's receipt for one step, as a pure function.

A node answers every step with an EIP-712 `Receipt` over the step's leaf. The client accepts
the step only if the receipt is signed by the server's registered address and states exactly
what happened: the client's session id, the model, the span and step asked for, the tokens
sent, `inputHash` = `node.tensors.tensor_hash` of the hidden states the client sent,
`outputHash` = the hash of the hidden states it received, `sketchHash` = the hash of the
sketch of those hidden states (`node.sketch`: the client recomputes it, so a node cannot commit
the sketch of one output and send another), and, for every span after the first of a step, `inputHash` equal to the previous span's `outputHash` (chain of custody), and
`issuedAt` within `MAX_RECEIPT_CLOCK_SKEW` of the client's own clock (the node's commit deadline
counts from `issuedAt`: a backdated receipt shortens it, a postdated one stretches it). Anything
else is a `ReceiptProblem`: the step is discarded, the server is treated as failed and the
receipt is kept as evidence.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ledger.eip712 import Domain, recover_receipt_signer
from ledger.errors import LedgerError
from node.protocol import SignedReceipt

# How far a receipt's issuedAt may be from the client's clock when the reply arrives, in
# seconds: room for clock drift and a slow step, far below any sane commit deadline.
MAX_RECEIPT_CLOCK_SKEW = 600


class ReceiptProblem(enum.StrEnum):
    """What is wrong with a receipt (stored with the evidence)."""

    BAD_SIGNATURE = "bad_signature"  # malformed, or recovers no signer
    WRONG_SIGNER = "wrong_signer"  # signed by someone other than the server's registered address
    WRONG_LEAF = "wrong_leaf"  # session, model, span, step or tokens differ from the request
    INPUT_HASH = "input_hash"  # not the hash of the hidden states sent
    OUTPUT_HASH = "output_hash"  # not the hash of the hidden states received
    SKETCH_HASH = "sketch_hash"  # not the hash of the sketch of the hidden states received
    CUSTODY = "custody"  # input hash differs from the previous span's output hash
    ISSUED_AT = "issued_at"  # signed at a time too far from the client's clock


@dataclass(frozen=True)
class ExpectedLeaf:
    """What a correct receipt for one step states."""

    signer: str  # the server's registered address (checksummed)
    session_id: bytes
    model_id: bytes
    span: tuple[int, int]
    step: int
    tokens: int  # batch x new tokens
    input_hash: bytes  # tensor_hash of what was sent
    output_hash: bytes  # tensor_hash of what was received
    sketch_hash: bytes  # node.sketch's hash of the sketch of what was received
    received_at: int  # the client's clock when the reply arrived (unix seconds)
    previous_output_hash: bytes | None = None  # the previous span's output hash this step


def check_receipt(
    domain: Domain, receipt: SignedReceipt, expected: ExpectedLeaf
) -> tuple[ReceiptProblem, str] | None:
    """None when `receipt` is right, else the problem and a sentence saying what differs."""
    leaf = receipt.leaf
    try:
        signer = recover_receipt_signer(domain, leaf, receipt.signature)
    except LedgerError as exc:
        return ReceiptProblem.BAD_SIGNATURE, f"the receipt signature is invalid: {exc}"
    if signer != expected.signer:
        return (
            ReceiptProblem.WRONG_SIGNER,
            f"the receipt is signed by {signer}, not by the server's registered {expected.signer}",
        )
    stated = (leaf.session_id, leaf.model_id, (leaf.span_start, leaf.span_end), leaf.step)
    wanted = (expected.session_id, expected.model_id, expected.span, expected.step)
    if stated != wanted or leaf.tokens != expected.tokens:
        return (
            ReceiptProblem.WRONG_LEAF,
            f"the receipt is for session 0x{leaf.session_id.hex()[:16]} span "
            f"[{leaf.span_start}, {leaf.span_end}) step {leaf.step} with {leaf.tokens} tokens; "
            f"asked: session 0x{expected.session_id.hex()[:16]} span "
            f"[{expected.span[0]}, {expected.span[1]}) step {expected.step} with "
            f"{expected.tokens} tokens",
        )
    if leaf.input_hash != expected.input_hash:
        return (
            ReceiptProblem.INPUT_HASH,
            f"the receipt's input hash 0x{leaf.input_hash.hex()} is not the hash of the hidden "
            f"states sent (0x{expected.input_hash.hex()})",
        )
    if leaf.output_hash != expected.output_hash:
        return (
            ReceiptProblem.OUTPUT_HASH,
            f"the receipt's output hash 0x{leaf.output_hash.hex()} is not the hash of the hidden "
            f"states received (0x{expected.output_hash.hex()})",
        )
    if leaf.sketch_hash != expected.sketch_hash:
        return (
            ReceiptProblem.SKETCH_HASH,
            f"the receipt's sketch hash 0x{leaf.sketch_hash.hex()} is not the hash of the sketch "
            f"of the hidden states received (0x{expected.sketch_hash.hex()}): the node committed "
            "to another output than the one it sent",
        )
    if expected.previous_output_hash is not None and leaf.input_hash != (
        expected.previous_output_hash
    ):
        return (
            ReceiptProblem.CUSTODY,
            f"the receipt's input hash 0x{leaf.input_hash.hex()} is not the previous span's "
            f"output hash 0x{expected.previous_output_hash.hex()}",
        )
    skew = leaf.issued_at - expected.received_at
    if abs(skew) > MAX_RECEIPT_CLOCK_SKEW:
        return (
            ReceiptProblem.ISSUED_AT,
            f"the receipt is issued at {leaf.issued_at}, {abs(skew)} s "
            f"{'after' if skew > 0 else 'before'} this client's clock ({expected.received_at}); "
            f"at most {MAX_RECEIPT_CLOCK_SKEW} s either way is accepted",
        )
    return None
