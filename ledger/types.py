"""Domain types shared by every component: ids, units and the signed structures.

The field order and Solidity types of `Leaf` mirror `ISlasher.Leaf`; `Voucher` mirrors the
EIP-712 type of `IPaymentChannels`; `Verdict` the one of `ISlasher`. `ledger/eip712.py` turns
them into digests and signatures.
"""

from __future__ import annotations

import enum
from dataclasses import astuple, dataclass
from decimal import Decimal, InvalidOperation
from typing import NewType

from eth_abi import encode as abi_encode
from eth_utils import keccak

Address = NewType("Address", str)  # checksummed 0x-address
Wei = NewType("Wei", int)  # stake-token base units
ModelId = NewType("ModelId", bytes)  # 32 bytes: keccak256 of the model's name
ChannelId = NewType("ChannelId", int)
BatchId = NewType("BatchId", int)
BlockIndex = NewType("BlockIndex", int)


def parse_token_amount(text: str, what: str = "amount") -> Decimal:
    """Whole tokens with optional decimals ("100", "0.25") as a finite, non-negative Decimal;
    ValueError naming `what` otherwise. Each edge (CLI, config) turns it into its own error."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"{what} {text!r} is not a number of tokens") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{what} must be a non-negative number of tokens, got {text!r}")
    return value


def to_base_units(tokens: Decimal, decimals: int, what: str = "amount") -> Wei:
    """Whole tokens (with decimals) in base units; ValueError naming `what` when it has more
    than `decimals` decimals."""
    scaled = tokens.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{what} {tokens} has more than {decimals} decimals")
    return Wei(int(scaled))


def model_id(name: str) -> ModelId:
    """The on-chain id of a model: keccak256 of its name as UTF-8 (e.g. "SmolLM2-135M-Instruct")."""
    return ModelId(keccak(text=name))


LEAF_ABI_TYPES = (
    "bytes32",  # sessionId
    "bytes32",  # modelId
    "uint16",  # spanStart
    "uint16",  # spanEnd
    "uint32",  # step
    "uint32",  # tokens
    "bytes32",  # inputHash
    "bytes32",  # outputHash
    "bytes32",  # sketchHash
    "uint64",  # issuedAt
)


@dataclass(frozen=True)
class Leaf:
    """What a node commits for one served step of one session over one span."""

    session_id: bytes  # 32 bytes
    model_id: bytes  # 32 bytes
    span_start: int  # first block served
    span_end: int  # one past the last block served
    step: int  # 0-based step number within the session
    tokens: int  # token positions computed in this step (batch * new tokens)
    input_hash: bytes  # keccak256 of the exact input tensor bytes received
    output_hash: bytes  # keccak256 of the exact output tensor bytes sent
    sketch_hash: bytes  # keccak256 of the encoded sketch of the output
    issued_at: int  # unix seconds the node signed the receipt (uint64); starts its commit deadline

    def encode(self) -> bytes:
        """abi.encode of the fields in order, as Solidity computes it."""
        return abi_encode(list(LEAF_ABI_TYPES), list(astuple(self)))

    def hash(self) -> bytes:
        """The Merkle leaf: keccak256(abi.encode(...))."""
        return keccak(self.encode())

    def as_tuple(self) -> tuple:
        """The struct as web3 passes it to a contract call."""
        return astuple(self)

    def slot(self) -> tuple[bytes, bytes, int, int, int]:
        """The (session, model, span, step) a node may sign only once; two different leaves
        for one slot are equivocation."""
        return (self.session_id, self.model_id, self.span_start, self.span_end, self.step)


class Reason(enum.IntEnum):
    """Why verifiers found a leaf guilty (mirrors `ISlasher.Reason`)."""

    NONE = 0
    MISMATCH = 1
    WITHHELD = 2


@dataclass(frozen=True)
class Voucher:
    """A client's promise: the server may redeem up to `cumulative_amount` from the channel."""

    channel_id: int
    cumulative_amount: int  # Wei, cumulative over the channel's life
    signature: bytes = b""  # 65 bytes r || s || v over the EIP-712 digest


@dataclass(frozen=True)
class Verdict:
    """A verifier's signed finding against one committed leaf."""

    node: str  # Address of the node
    batch_id: int
    leaf: bytes  # the leaf hash
    reason: Reason
    signer: str = ""  # Address of the verifier
    signature: bytes = b""


@dataclass(frozen=True)
class WithheldVerdict:
    """A verifier's signed finding that a node did not reveal a sampled leaf by the deadline.

    Mirrors the EIP-712 `Withheld(address node,uint256 batchId,uint32 leafIndex)` of `ISlasher`:
    it names the leaf by its position in the batch, because the node never showed the leaf.
    """

    node: str  # Address of the node that committed the batch
    batch_id: int
    leaf_index: int  # position of the withheld leaf in the batch (uint32)
    signer: str = ""  # Address of the verifier
    signature: bytes = b""
