"""Wire and domain types of the node protocol: DHT records, RPC frames and messages, errors.

Everything a compatible client, server or verifier must agree on lives here; docs/protocol.md
describes the same in prose. Messages travel as hivemind `ExpertRequest`/`ExpertResponse`
protobufs over libp2p streams. A *frame* is one logical message: msgpack metadata plus zero or
more tensors, split over as many protobuf messages as needed to keep each under the ~2 MiB
payload cap of the transport (tensors are cut into chunks with hivemind's streaming helpers).

All input from the network is untrusted: every `from_wire` validates types and ranges (with
the checks of `node.fields`) and raises `ProtocolError` with an `ErrorCode`; nothing here uses
`assert` on peer data.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import msgpack
import torch
from hivemind.proto import runtime_pb2
from hivemind.utils.streaming import split_for_streaming

from ledger.types import Leaf, Voucher
from node import fields
from node.fields import FieldError
from node.keepalive import DEFAULT_SILENCE_TIMEOUT as DEFAULT_SILENCE_TIMEOUT  # re-exported
from node.keepalive import KEEPALIVE_INTERVAL as KEEPALIVE_INTERVAL  # re-exported
from node.precisions import QUANTIZATIONS, QUANTIZED_DTYPE_NAMES, precision_name
from node.sketch import SKETCH_TOP_K

# 2: a leaf carries `issued` (the receipt's issuedAt), and Merkle proofs are positional.
# 3: a reveal carries each step's hidden states and ONE attention mask (the last step's; the
#    earlier steps' masks are its prefixes), so its size grows linearly with the session.
# 4: a node at work on a step or a forward sends a `working` frame every KEEPALIVE_INTERVAL,
#    so a client tells a dead node from a slow one within its silence timeout.
# 5: a step's sketch commits its attention mask and a 16-bit node's block states; receipts
#    disclose the states hash; full reveals carry every step's sketch and block states.
# 6: a node may serve quantized weights (int8, nf4): its record says `quant`, its sketches
#    (version 3) and full reveals say which.
# 7: pipelined steps: a step may name the next hop (`push_to`), to which the node pushes its
#    output (`rpc_push`), and may take its input from the previous hop's push (`pushed_from`).
# 8: training: a stateless forward may be followed by its backward (`rpc_backward`), priced
#    per token per block in the record (`bprice`), committed as step 1 of the forward's session
#    with a version-4 (backward) sketch.
# 9: deep prompts: a training forward and its backward may carry per-block prompts, committed
#    by sketch versions 5 and 6; the backward answers their gradient too; reveals carry them.
PROTOCOL_VERSION = 9

# The step of a backward's leaf: the forward it propagates through is step 0 of its session.
BACKWARD_STEP = 1


# A leaf's issuedAt is a uint64 on-chain; the wire takes it only up to 2**63 - 1, what a ledger
# (SQL BIGINT) can keep as evidence. No clock is anywhere near either bound.
MAX_ISSUED_AT = 2**63 - 1

# Tensor bytes per protobuf message part; with metadata, each message stays well under 2 MiB.
CHUNK_BYTES = 512 * 1024
# Chunks per protobuf message: 2 x CHUNK_BYTES + metadata stays under the cap.
CHUNKS_PER_MESSAGE = 2
# Upper bound on one frame's total tensor bytes a peer may send before we refuse it.
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
# Upper bound on a frame's msgpack metadata.
MAX_METADATA_BYTES = 256 * 1024
# Upper bound on one request message a node reads (checked at its length prefix, before it is
# buffered, node/streams.py): CHUNKS_PER_MESSAGE chunks and the first message's metadata fit.
MAX_REQUEST_MESSAGE_BYTES = 2 * 1024 * 1024
# Upper bound on protobuf messages in one frame (CHUNK_BYTES each at most).
MAX_MESSAGES_PER_FRAME = 1024

# A `revealed` frame carries a whole session's inputs over a span. Verifiers read reveals up to
# these caps, and a node opens no session whose largest reveal could exceed them
# (`reveal_limits`), so an honest node can always reveal what it served.
MAX_REVEAL_BYTES = 1024 * 1024 * 1024  # tensor bytes
MAX_REVEAL_METADATA_BYTES = 32 * 1024 * 1024  # every step's leaf and proof, the batch's leaves
MAX_REVEAL_MESSAGES = 65536
# Leaves of one batch a full reveal may list (so its Merkle proofs have at most 16 hashes).
MAX_BATCH_LEAVES = 2**16

# The node's RPC handlers on the libp2p daemon: "{service}.{method}" (hivemind `ServicerBase`
# names handlers after the servicer class, which `node.handler` keeps equal to SERVICE_NAME).
SERVICE_NAME = "StakeswarmNode"
RPC_INFERENCE = f"{SERVICE_NAME}.rpc_inference"  # bidirectional stream: one session
RPC_FORWARD = f"{SERVICE_NAME}.rpc_forward"  # stream in, stream out: one stateless step
RPC_INFO = f"{SERVICE_NAME}.rpc_info"  # unary: `InfoResponse`
RPC_REVEAL = f"{SERVICE_NAME}.rpc_reveal"  # unary in, stream out: `RevealResponse`
RPC_PUSH = f"{SERVICE_NAME}.rpc_push"  # stream in, stream out: a step's input, `Pushed`
RPC_BACKWARD = f"{SERVICE_NAME}.rpc_backward"  # stream in, stream out: one forward's backward

HIDDEN_DTYPES = frozenset({"float32", "float16", "bfloat16"})
MASK_DTYPE = "int64"
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8}


class ErrorCode(enum.StrEnum):
    """Why a node refused a request. Sent to the caller; the server keeps serving others."""

    BAD_REQUEST = "bad_request"  # malformed frame or metadata
    BAD_TENSOR = "bad_tensor"  # wrong shape, dtype, NaN or inf
    TOO_LARGE = "too_large"  # payload over the frame limit
    UNKNOWN_SESSION = "unknown_session"
    SESSION_EXPIRED = "session_expired"
    SESSION_EXISTS = "session_exists"  # a session id may be used once per node
    OUT_OF_ORDER = "out_of_order"  # step number not the next one
    SPAN_MISMATCH = "span_mismatch"  # asked for blocks this node does not serve
    CACHE_FULL = "cache_full"  # not enough KV cache tokens left
    LENGTH_EXCEEDED = "length_exceeded"  # session longer than its declared max length
    BAD_VOUCHER = "bad_voucher"  # bad signature, wrong signer
    WRONG_CHANNEL = "wrong_channel"  # channel unknown, closed, expiring, or not to this node
    REPLAYED_VOUCHER = "replayed_voucher"  # not higher than a voucher already accepted
    PAYMENT_BEHIND = "payment_behind"  # voucher below what is owed less the credit window
    UNAUTHORIZED = "unauthorized"  # reveal by someone who is not an active verifier
    NOT_FOUND = "not_found"  # reveal of a leaf the node does not have
    INTERNAL = "internal"  # the node failed; not the caller's fault
    # The registry no longer counts the node as active (its stake does not cover its span, e.g.
    # after a slash): it takes no session, step or payment until it is staked again. Added in
    # protocol 1 without a version bump: older peers read an unknown code as INTERNAL.
    NODE_INACTIVE = "node_inactive"
    # The node is shutting down (or moving its span) and takes no new session, step or forward;
    # nothing was charged. Retry on another node; the node did nothing wrong. Added in protocol
    # 1 without a version bump, like NODE_INACTIVE.
    SHUTTING_DOWN = "shutting_down"
    # The node holds as many incoming tensor bytes as it allows, all connections together
    # (`--max-incoming-mb`); nothing was charged. Retry shortly or on another node; the node did
    # nothing wrong. Added in protocol 4.
    BUSY = "busy"
    # A pipelined step's input (pushed by the previous hop, or by the client) did not arrive in
    # time; nothing was charged and the session is as before. Added in protocol 7.
    NO_INPUT = "no_input"
    # A backward for no forward this node holds: never served, already propagated back, for
    # other inputs or another span, or older than the node keeps forwards; nothing was charged.
    # Added in protocol 8.
    NO_FORWARD = "no_forward"


class ProtocolError(Exception):
    """A request or reply that breaks the protocol, with the code sent back to the peer."""

    def __init__(self, code: ErrorCode, message: str, *, spent: bool = False):
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.spent = spent  # the step's voucher was accepted before the failure (ErrorReply)


# ---------------------------------------------------------------------------------------------
# DHT records
# ---------------------------------------------------------------------------------------------


class ServerState(enum.IntEnum):
    OFFLINE = 0
    JOINING = 1
    ONLINE = 2


def block_key(model_name: str, block: int) -> str:
    """DHT key of one block: `{model}.{block}`; subkey is the server's peer id."""
    return f"{model_name}.{block}"


@dataclass(frozen=True)
class ServerInfo:
    """What a server announces for each block it serves (DHT value, also the `info` RPC)."""

    state: ServerState
    span_start: int  # first block served
    span_end: int  # one past the last block served
    throughput: float  # tokens/s of a decode step through the whole span, measured
    price_per_token_per_block: int  # Wei
    eth_address: str  # the node's registered address; signs receipts
    dtype: str  # declared compute dtype: float32 | float16 | bfloat16
    cache_tokens_left: int  # KV cache tokens still free
    credit_window: int = 0  # Wei the node serves ahead of payment per channel
    version: int = PROTOCOL_VERSION
    http_port: int = 0  # the node's status API on its host, 0 if none
    quantization: str | None = None  # declared quantized weights: int8 | nf4; None: full
    backward_price_per_token_per_block: int = 0  # Wei; 0: the node serves no backward

    @property
    def precision(self) -> str:
        """What it serves, as people read it: `bfloat16`, `bfloat16+int8`."""
        return precision_name(self.dtype, self.quantization)

    @property
    def price_per_token(self) -> int:
        """Wei per token through the whole span: price per block times span length."""
        return self.price_per_token_per_block * (self.span_end - self.span_start)

    @property
    def backward_price_per_token(self) -> int:
        """Wei per token of a backward through the whole span (0: no backward served)."""
        return self.backward_price_per_token_per_block * (self.span_end - self.span_start)

    def to_wire(self) -> dict[str, Any]:
        return {
            "state": int(self.state),
            "span": [self.span_start, self.span_end],
            "throughput": float(self.throughput),
            "price": self.price_per_token_per_block,
            "eth": self.eth_address,
            "dtype": self.dtype,
            "cache_left": self.cache_tokens_left,
            "credit": self.credit_window,
            "version": self.version,
            "http_port": self.http_port,
            "bprice": self.backward_price_per_token_per_block,
        } | ({} if self.quantization is None else {"quant": self.quantization})

    @classmethod
    def from_wire(cls, raw: Any) -> ServerInfo:
        d = _require_map(raw, "server info")
        span = d.get("span")
        if not (isinstance(span, list | tuple) and len(span) == 2):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "server info: span must be [start, end]")
        start, end = _int(span[0], "span start", 0), _int(span[1], "span end", 1)
        if start >= end:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"server info: empty span [{start}, {end})")
        try:
            state = ServerState(_int(d.get("state"), "state", 0))
        except ValueError as e:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"server info: {e}") from None
        dtype = _str(d.get("dtype"), "dtype")
        if dtype not in HIDDEN_DTYPES:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"server info: unknown dtype {dtype!r}")
        quantization = d.get("quant")
        if quantization is not None and (
            quantization not in QUANTIZATIONS or dtype not in QUANTIZED_DTYPE_NAMES
        ):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"server info: quantization {quantization!r} in {dtype} is not a precision "
                f"(one of {', '.join(QUANTIZATIONS)}, in {', '.join(QUANTIZED_DTYPE_NAMES)})",
            )
        throughput = d.get("throughput")
        if not isinstance(throughput, int | float) or not throughput >= 0:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "server info: throughput must be >= 0")
        return cls(
            state=state,
            span_start=start,
            span_end=end,
            throughput=float(throughput),
            price_per_token_per_block=_int(d.get("price"), "price", 0),
            eth_address=_address(d.get("eth"), "eth"),
            dtype=dtype,
            cache_tokens_left=_int(d.get("cache_left"), "cache_left", 0),
            credit_window=_int(d.get("credit", 0), "credit", 0),
            version=_int(d.get("version"), "version", 0),
            http_port=_int(d.get("http_port", 0), "http_port", 0),
            quantization=quantization,
            backward_price_per_token_per_block=_int(d.get("bprice", 0), "bprice", 0),
        )


# ---------------------------------------------------------------------------------------------
# Messages (frame metadata); `type` tells them apart
# ---------------------------------------------------------------------------------------------


def voucher_to_wire(v: Voucher) -> dict[str, Any]:
    return {
        "channel": v.channel_id,
        "amount": _uint_to_wire(v.cumulative_amount),
        "sig": v.signature,
    }


def voucher_from_wire(raw: Any) -> Voucher:
    d = _require_map(raw, "voucher")
    return Voucher(
        channel_id=_int(d.get("channel"), "voucher channel", 1),
        cumulative_amount=_uint_from_wire(d.get("amount"), "voucher amount"),
        signature=_bytes(d.get("sig"), "voucher signature", 65),
    )


def leaf_to_wire(leaf: Leaf) -> dict[str, Any]:
    return {
        "session": leaf.session_id,
        "model": leaf.model_id,
        "span": [leaf.span_start, leaf.span_end],
        "step": leaf.step,
        "tokens": leaf.tokens,
        "in": leaf.input_hash,
        "out": leaf.output_hash,
        "sketch": leaf.sketch_hash,
        "issued": leaf.issued_at,  # uint64: msgpack carries it as an unsigned int
    }


def leaf_from_wire(raw: Any) -> Leaf:
    d = _require_map(raw, "leaf")
    span = d.get("span")
    if not (isinstance(span, list | tuple) and len(span) == 2):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "leaf: span must be [start, end]")
    return Leaf(
        session_id=_bytes(d.get("session"), "leaf session", 32),
        model_id=_bytes(d.get("model"), "leaf model", 32),
        span_start=_int(span[0], "leaf span start", 0, 2**16 - 1),
        span_end=_int(span[1], "leaf span end", 1, 2**16 - 1),
        step=_int(d.get("step"), "leaf step", 0, 2**32 - 1),
        tokens=_int(d.get("tokens"), "leaf tokens", 0, 2**32 - 1),
        input_hash=_bytes(d.get("in"), "leaf input hash", 32),
        output_hash=_bytes(d.get("out"), "leaf output hash", 32),
        sketch_hash=_bytes(d.get("sketch"), "leaf sketch hash", 32),
        issued_at=_int(d.get("issued"), "leaf issued at (unix seconds)", 0, MAX_ISSUED_AT),
    )


@dataclass(frozen=True)
class SignedReceipt:
    """A node's EIP-712 `Receipt` over a leaf: its signed statement of what it computed.

    A node serving in 16 bits adds `states_hash` (not signed): the hash of its block states that
    the leaf's sketchHash commits (`node.states`, a version-2 sketch), without which a client
    could not check that the sketchHash is the sketch of the output it received."""

    leaf: Leaf
    signature: bytes  # 65 bytes
    states_hash: bytes | None = None  # 32 bytes; 16-bit nodes

    def to_wire(self) -> dict[str, Any]:
        wire = {"leaf": leaf_to_wire(self.leaf), "sig": self.signature}
        if self.states_hash is not None:
            wire["states"] = self.states_hash
        return wire

    @classmethod
    def from_wire(cls, raw: Any) -> SignedReceipt:
        d = _require_map(raw, "receipt")
        states = d.get("states")
        return cls(
            leaf=leaf_from_wire(d.get("leaf")),
            signature=_bytes(d.get("sig"), "receipt signature", 65),
            states_hash=None if states is None else _bytes(states, "receipt states hash", 32),
        )


@dataclass(frozen=True)
class OpenSession:
    """First frame of an inference stream: reserve a KV cache for a span. The frame may carry
    one tensor (protocol 9): deep prompts `[span blocks, P, hidden]` (float32, P <= max_length)
    that the node adds to the first step's first P positions before each block, and whose
    hash every step's sketch commits (version 5); only a node that serves backwards takes
    them (a tuned model's, audited in float32)."""

    session_id: bytes  # 32 bytes, fresh per session; a node accepts each id once
    span_start: int
    span_end: int
    max_length: int  # tokens per sequence the session may reach (prompt + generated)
    batch_size: int
    channel_id: int  # the client's payment channel to this node
    dtype: str = "float32"  # dtype of the hidden states the client sends

    TYPE = "open"

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "session": self.session_id,
            "span": [self.span_start, self.span_end],
            "max_length": self.max_length,
            "batch": self.batch_size,
            "channel": self.channel_id,
            "dtype": self.dtype,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> OpenSession:
        span = d.get("span")
        if not (isinstance(span, list | tuple) and len(span) == 2):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "open: span must be [start, end]")
        dtype = _str(d.get("dtype", "float32"), "dtype")
        if dtype not in HIDDEN_DTYPES:
            raise ProtocolError(ErrorCode.BAD_TENSOR, f"open: unsupported dtype {dtype!r}")
        return cls(
            session_id=_bytes(d.get("session"), "session id", 32),
            span_start=_int(span[0], "span start", 0, 2**16 - 1),
            span_end=_int(span[1], "span end", 1, 2**16 - 1),
            max_length=_int(d.get("max_length"), "max_length", 1, 2**20),
            batch_size=_int(d.get("batch"), "batch", 1, 2**12),
            channel_id=_int(d.get("channel"), "channel", 1),
            dtype=dtype,
        )


@dataclass(frozen=True)
class SessionOpened:
    """The node's answer to `OpenSession`."""

    session_id: bytes
    node: str  # the node's address (signs receipts)
    idle_timeout: float  # seconds without a step before the node drops the session

    TYPE = "opened"

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "session": self.session_id,
            "node": self.node,
            "idle": self.idle_timeout,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> SessionOpened:
        idle = d.get("idle")
        if not isinstance(idle, int | float) or idle <= 0:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "opened: idle timeout must be > 0")
        return cls(
            _bytes(d.get("session"), "session id", 32), _address(d.get("node"), "node"), float(idle)
        )


@dataclass(frozen=True)
class PushTarget:
    """Where a node sends a pipelined step's output: the next hop's peer, its session and the
    step that output is the input of (the hops' step numbers differ after a failover)."""

    peer_id: str  # base58
    session_id: bytes
    step: int

    def to_wire(self) -> dict[str, Any]:
        return {"peer": self.peer_id, "session": self.session_id, "step": self.step}

    @classmethod
    def from_wire(cls, raw: Any) -> PushTarget:
        d = _require_map(raw, "push_to")
        peer = _str(d.get("peer"), "push_to peer")
        if not 1 <= len(peer) <= 128 or not peer.isalnum():
            raise ProtocolError(ErrorCode.BAD_REQUEST, "push_to: a malformed peer id")
        return cls(
            peer_id=peer,
            session_id=_bytes(d.get("session"), "push_to session id", 32),
            step=_int(d.get("step"), "push_to step", 0, 2**32 - 1),
        )


@dataclass(frozen=True)
class StepRequest:
    """One inference step. Tensors: hidden `[batch, tokens, hidden]` in the session dtype and
    attention mask `[batch, past + tokens]` int64 (0 = padding).

    Pipelined (protocol 7): with `pushed_from` the frame carries only the mask, and the hidden
    states arrive by `rpc_push`, from the node `pushed_from` (with its signed receipt of them) or
    from the session's own client; the voucher is checked once they are there. With `push_to`
    the node sends its output there (`PushRequest`) before it answers, and says whether it was
    taken (`StepResponse.pushed`)."""

    step: int  # 0, 1, 2, ... within the session
    voucher: Voucher  # cumulative for the channel, covering this step less the credit window
    push_to: PushTarget | None = None
    pushed_from: str | None = None  # the previous hop's address

    TYPE = "step"

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "type": self.TYPE,
            "step": self.step,
            "voucher": voucher_to_wire(self.voucher),
        }
        if self.push_to is not None:
            wire["push_to"] = self.push_to.to_wire()
        if self.pushed_from is not None:
            wire["pushed_from"] = self.pushed_from
        return wire

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> StepRequest:
        push_to, pushed_from = d.get("push_to"), d.get("pushed_from")
        return cls(
            step=_int(d.get("step"), "step", 0, 2**32 - 1),
            voucher=voucher_from_wire(d.get("voucher")),
            push_to=None if push_to is None else PushTarget.from_wire(push_to),
            pushed_from=None if pushed_from is None else _address(pushed_from, "pushed_from"),
        )


@dataclass(frozen=True)
class StepResponse:
    """The node's answer to a step. Tensor: output hidden `[batch, tokens, hidden]`. `pushed`:
    whether the step's `push_to` took the output (None: no push asked)."""

    step: int
    receipt: SignedReceipt
    pushed: bool | None = None

    TYPE = "step_done"

    def to_wire(self) -> dict[str, Any]:
        wire = {"type": self.TYPE, "step": self.step, "receipt": self.receipt.to_wire()}
        if self.pushed is not None:
            wire["pushed"] = self.pushed
        return wire

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> StepResponse:
        pushed = d.get("pushed")
        if pushed is not None and not isinstance(pushed, bool):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "step_done: pushed must be a boolean")
        return cls(
            step=_int(d.get("step"), "step", 0),
            receipt=SignedReceipt.from_wire(d.get("receipt")),
            pushed=pushed,
        )


@dataclass(frozen=True)
class PushRequest:
    """A pipelined step's input for session `session_id`, step `step` (`rpc_push`). Tensor:
    hidden `[batch, tokens, hidden]` in the session dtype. From the previous hop it carries that
    hop's signed receipt, whose output hash must be the tensor's; from the session's client it
    carries none (the stream's peer id says who sent it)."""

    session_id: bytes
    step: int
    receipt: SignedReceipt | None = None

    TYPE = "push"

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.TYPE, "session": self.session_id, "step": self.step}
        if self.receipt is not None:
            wire["receipt"] = self.receipt.to_wire()
        return wire

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> PushRequest:
        receipt = d.get("receipt")
        return cls(
            session_id=_bytes(d.get("session"), "session id", 32),
            step=_int(d.get("step"), "step", 0, 2**32 - 1),
            receipt=None if receipt is None else SignedReceipt.from_wire(receipt),
        )


@dataclass(frozen=True)
class Pushed:
    """The answer to a push: the input was taken for the step."""

    TYPE = "pushed"

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE}


@dataclass(frozen=True)
class Working:
    """A keepalive: the node is still at work on the request (docs/protocol.md §5). Sent every
    `KEEPALIVE_INTERVAL` from the request's first message until its reply; never inside a
    frame."""

    TYPE = "working"

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE}


@dataclass(frozen=True)
class ForwardRequest:
    """A stateless forward through a span: an `OpenSession` and one `StepRequest` in one frame.
    Tensors as in `StepRequest` (mask `[batch, tokens]`), then, for a training forward with
    deep prompts (protocol 9), the prompts `[span blocks, P, hidden]` the node adds to the
    first P positions before each block (only a node that serves backwards takes them)."""

    session_id: bytes
    span_start: int
    span_end: int
    voucher: Voucher
    dtype: str = "float32"

    TYPE = "forward"

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "session": self.session_id,
            "span": [self.span_start, self.span_end],
            "voucher": voucher_to_wire(self.voucher),
            "dtype": self.dtype,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ForwardRequest:
        voucher = voucher_from_wire(d.get("voucher"))
        # the span, session and dtype rules are those of opening a session
        opened = OpenSession.from_wire(
            {**d, "max_length": 1, "batch": 1, "channel": voucher.channel_id}
        )
        return cls(opened.session_id, opened.span_start, opened.span_end, voucher, opened.dtype)


@dataclass(frozen=True)
class BackwardRequest:
    """The backward of a stateless forward this node served (protocol 8): the same session id
    and span, paid on the same channel. Tensors: the forward's hidden `[batch, tokens, hidden]`
    and mask `[batch, tokens]` again (the node recomputes the forward; it keeps only their
    hashes), then the gradient of the loss with respect to the forward's output, of the
    hidden states' shape and dtype, and the forward's deep prompts if it had them (protocol
    9). Answered with a `StepResponse` (step `BACKWARD_STEP`) and the gradient with respect to
    the hidden states, then, with prompts, the gradient with respect to them."""

    session_id: bytes
    span_start: int
    span_end: int
    voucher: Voucher

    TYPE = "backward"

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "session": self.session_id,
            "span": [self.span_start, self.span_end],
            "voucher": voucher_to_wire(self.voucher),
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> BackwardRequest:
        forward = ForwardRequest.from_wire(d)
        return cls(forward.session_id, forward.span_start, forward.span_end, forward.voucher)


@dataclass(frozen=True)
class RevealRequest:
    """A verifier asks for the inputs behind a committed leaf (batch `batch_id`, index `leaf_index`).
    `signature` is the verifier's EIP-191 signature of `reveal_message(...)`; only active
    verifiers may see clients' hidden states. With `full`, the node also sends what an audit
    compares against: the leaf's committed sketch and the leaf hashes of its whole batch (from
    which the verifier rebuilds the root and its own proof of the leaf at `leaf_index`)."""

    node: str  # the node asked (binds the signature to it)
    batch_id: int  # on-chain batch id
    leaf_index: int  # index of the leaf in the batch
    issued_at: int  # unix seconds; the node refuses stale requests
    verifier: str
    signature: bytes
    full: bool = False  # also the committed sketch and the batch's leaf hashes

    TYPE = "reveal"

    def message(self) -> str:
        return reveal_message(self.node, self.batch_id, self.leaf_index, self.issued_at)

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "type": self.TYPE,
            "node": self.node,
            "batch": self.batch_id,
            "index": self.leaf_index,
            "at": self.issued_at,
            "verifier": self.verifier,
            "sig": self.signature,
        }
        if self.full:
            wire["full"] = True
        return wire

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> RevealRequest:
        full = d.get("full", False)
        if not isinstance(full, bool):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "reveal: full must be a boolean")
        return cls(
            node=_address(d.get("node"), "node"),
            batch_id=_int(d.get("batch"), "batch", 1),
            leaf_index=_int(d.get("index"), "index", 0, 2**32 - 1),
            issued_at=_int(d.get("at"), "issued at", 0),
            verifier=_address(d.get("verifier"), "verifier"),
            signature=_bytes(d.get("sig"), "signature", 65),
            full=full,
        )


def reveal_message(node: str, batch_id: int, leaf_index: int, issued_at: int) -> str:
    """The text a verifier signs (EIP-191) to ask `node` for a reveal."""
    return f"stakeswarm reveal v{PROTOCOL_VERSION}: node {node.lower()} batch {batch_id} leaf {leaf_index} at {issued_at}"


@dataclass(frozen=True)
class RevealedStep:
    """One step of a revealed session span: its leaf, where that leaf was committed (batch and
    position) and the proof."""

    leaf: Leaf
    batch_id: int
    leaf_index: int  # the leaf's position in its batch (uint32): positional proofs need it
    proof: list[bytes]  # Merkle proof of the leaf at `leaf_index` under the batch's root

    def to_wire(self) -> dict[str, Any]:
        return {
            "leaf": leaf_to_wire(self.leaf),
            "batch": self.batch_id,
            "index": self.leaf_index,
            "proof": list(self.proof),
        }

    @classmethod
    def from_wire(cls, raw: Any) -> RevealedStep:
        d = _require_map(raw, "revealed step")
        proof = d.get("proof")
        if not isinstance(proof, list) or len(proof) > 64:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "revealed step: proof must be a list of <= 64 hashes"
            )
        return cls(
            leaf=leaf_from_wire(d.get("leaf")),
            batch_id=_int(d.get("batch"), "batch", 1),
            leaf_index=_int(d.get("index"), "revealed step: leaf index", 0, 2**32 - 1),
            proof=[_bytes(p, "proof node", 32) for p in proof],
        )


@dataclass(frozen=True)
class RevealResponse:
    """The node's reveal: every step 0..k of the leaf's session over its span, in order.
    Tensors: each step's input hidden states `[batch, tokens, hidden]` in step order, then ONE
    attention mask, step k's `[batch, positions]` int64 (positions: the tokens of steps 0..k;
    step i's own mask is its first `past + tokens` columns, as the node checked when it served
    step i): a reveal grows linearly with the session (`reveal_limits` bounds it).
    A `full` reveal (see `RevealRequest`) adds `batch_leaves`, the leaf hashes of the target
    leaf's batch in order, and two tensors after the mask: every step's committed sketch
    concatenated along the tokens axis in step order, the indices (int64) then the values
    (float16), `[batch, positions, k]` each (a step's positions, re-encoded with the hidden
    size, the hash of the step's mask columns and of its block states, see `node.sketch`,
    hash to the step's sketchHash).
    A full reveal of a node that serves in 16 bits also sets `states` and ends with every
    step's block states `[blocks, batch, tokens, hidden]` in step order (`node.states`: all
    but the last block's outputs hash to the states hash in that step's sketch, the last is
    the output the step's outputHash commits). A node serving quantized weights says which in
    `quantization` (its sketches, version 3, commit it). When the leaf is a backward (step
    `BACKWARD_STEP` of a stateless forward's session, protocol 8), `exponent` is its sketch's
    (version 4): step 1's "hidden states" are the output gradient it received. When the
    session carried deep prompts (protocol 9, sketch versions 5 and 6), `prompts` is set and
    the frame ends with step 0's prompts `[blocks, P, hidden]` and, for a backward, step 1's
    gradient of them (each hashes to its sketch's field)."""

    steps: list[RevealedStep] = field(default_factory=list)
    full: bool = False
    batch_leaves: list[bytes] = field(default_factory=list)  # full only
    states: bool = False  # full only: every step's block states follow the sketch
    quantization: str | None = None  # full only: the weights the sketches commit (version 3)
    exponent: int | None = None  # full only: the last step is a backward (sketch version 4)
    prompts: bool = False  # full only: each step's deep prompts (or gradient) end the frame

    TYPE = "revealed"

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.TYPE, "steps": [s.to_wire() for s in self.steps]}
        if self.full:
            wire["full"] = True
            wire["leaves"] = list(self.batch_leaves)
            if self.states:
                wire["states"] = True
            if self.quantization is not None:
                wire["quant"] = self.quantization
            if self.exponent is not None:
                wire["bexp"] = self.exponent
            if self.prompts:
                wire["prompts"] = True
        return wire

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> RevealResponse:
        steps = d.get("steps")
        if not isinstance(steps, list) or not steps:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "revealed: steps must be a non-empty list")
        full = d.get("full", False) is True
        leaves: list[bytes] = []
        if full:
            raw = d.get("leaves")
            if not isinstance(raw, list) or not raw or len(raw) > MAX_BATCH_LEAVES:
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST,
                    f"revealed: leaves must be a list of 1 to {MAX_BATCH_LEAVES} hashes",
                )
            leaves = [_bytes(leaf, "batch leaf", 32) for leaf in raw]
        states = full and d.get("states", False) is True
        quantization = d.get("quant") if full else None
        if quantization is not None and quantization not in QUANTIZATIONS:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"revealed: unknown quantization {quantization!r}"
            )
        exponent = None
        if full and d.get("bexp") is not None:
            exponent = _int(d.get("bexp"), "revealed: backward exponent", -128, 127)
            if len(steps) != BACKWARD_STEP + 1:
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST, "revealed: a backward is step 1 of its session"
                )
        prompts = full and d.get("prompts", False) is True
        if prompts and states:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "revealed: deep prompts go with a float32 session"
            )
        return cls(
            [RevealedStep.from_wire(s) for s in steps],
            full,
            leaves,
            states,
            quantization,
            exponent,
            prompts,
        )

    @property
    def tensor_count(self) -> int:
        """How many tensors the frame carries: hidden states per step, the mask, the steps'
        sketches (two tensors) when full, block states per step when `states`, and the
        prompts (and a backward's gradient of them) when `prompts`."""
        steps = len(self.steps)
        return (
            steps
            + 1
            + (2 if self.full else 0)
            + (steps if self.states else 0)
            + (self.prompt_tensors)
        )

    @property
    def prompt_tensors(self) -> int:
        """Deep-prompt tensors ending the frame: step 0's prompts, a backward's gradient."""
        if not self.prompts:
            return 0
        return 2 if self.exponent is not None else 1


@dataclass(frozen=True)
class ErrorReply:
    """A refusal. Fatal ones end the stream; the server keeps serving everyone else. After a
    non-fatal one (`fatal` False) the session is as it was before the refused step, and the
    client may send that step again.

    `spent` says whether the refused step's voucher counts as spent (docs/protocol.md,
    "When a voucher is spent"): True once the node accepted it (checked it and began storing
    it), whatever happened to the step afterwards; the node keeps and may redeem it, and the
    client builds its next voucher on it. False: the node never held it, and the client signs
    the next one from the previous amount again."""

    code: ErrorCode
    message: str
    fatal: bool = True  # the node ended the stream (no further frames will be read)
    spent: bool = False  # the step's voucher was accepted before the step failed

    TYPE = "error"

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "code": self.code.value,
            "message": self.message,
            "fatal": self.fatal,
            "spent": self.spent,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ErrorReply:
        try:
            code = ErrorCode(_str(d.get("code"), "code"))
        except ValueError:
            code = ErrorCode.INTERNAL
        fatal = d.get("fatal", True)
        spent = d.get("spent", False)
        if not isinstance(spent, bool):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "error: spent must be a boolean")
        message = _str(d.get("message", ""), "message")[:2000]
        return cls(code, message, fatal is not False, spent)


@dataclass(frozen=True)
class InfoResponse:
    """The `info` RPC's answer: which model and node this is and what it announces."""

    model: str  # the model name (its id on-chain is keccak256 of it)
    peer_id: str  # base58 libp2p peer id
    total_blocks: int  # decoder blocks of the whole model
    server: ServerInfo

    TYPE = "info"

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "model": self.model,
            "peer": self.peer_id,
            "blocks": self.total_blocks,
            "server": self.server.to_wire(),
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> InfoResponse:
        return cls(
            model=_str(d.get("model"), "model"),
            peer_id=_str(d.get("peer"), "peer id"),
            total_blocks=_int(d.get("blocks"), "blocks", 1, 2**16),
            server=ServerInfo.from_wire(d.get("server")),
        )


# ---------------------------------------------------------------------------------------------
# Frames: metadata + tensors over several protobuf messages
# ---------------------------------------------------------------------------------------------

Msg = TypeVar("Msg", runtime_pb2.ExpertRequest, runtime_pb2.ExpertResponse)


@dataclass
class Frame:
    """One logical message: metadata (with a `type`) and tensors."""

    metadata: dict[str, Any]
    tensors: list[torch.Tensor] = field(default_factory=list)

    @property
    def type(self) -> str:
        return str(self.metadata.get("type", ""))


def serialize_tensor(tensor: torch.Tensor) -> runtime_pb2.Tensor:
    """The tensor's exact bytes, uncompressed. bfloat16 travels as its raw 2-byte words (not
    hivemind's legacy fp32 upcast), so the bytes hashed are the bytes sent for every dtype."""
    tensor = tensor.detach().cpu().contiguous()
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in _ITEMSIZE:
        raise ProtocolError(ErrorCode.BAD_TENSOR, f"dtype {dtype!r} cannot be sent")
    raw = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor
    return runtime_pb2.Tensor(
        buffer=raw.numpy().tobytes(),
        size=list(tensor.shape),
        dtype=dtype,
        compression=runtime_pb2.CompressionType.NONE,
    )


def encode_frame(frame: Frame, message_type: type[Msg]) -> Iterator[Msg]:
    """Split a frame into protobuf messages: the first carries the metadata and the count."""
    sizes = [tensor.numel() * tensor.element_size() for tensor in frame.tensors]
    return stream_frame(frame.metadata, frame.tensors, sizes, message_type)


def tensor_chunks(nbytes: int) -> int:
    """Chunks (protobuf `Tensor` parts) a tensor of `nbytes` bytes travels in: at least one."""
    return max(1, math.ceil(nbytes / CHUNK_BYTES))


def frame_message_count(chunks: int) -> int:
    """Protobuf messages of a frame whose tensors travel in `chunks` chunks: at least one."""
    return max(1, math.ceil(chunks / CHUNKS_PER_MESSAGE))


def stream_frame(
    metadata: dict[str, Any],
    tensors: Iterable[torch.Tensor],
    sizes: Sequence[int],
    message_type: type[Msg],
) -> Iterator[Msg]:
    """`encode_frame` for tensors produced one at a time (a node's reveal loads them from disk
    as it goes): the same messages, but only one tensor and one message's chunks are held at
    once. `sizes` are the tensors' byte sizes, known before the first message (its header
    announces the message count); a tensor of another size, or another number of tensors, is
    `ProtocolError(INTERNAL)` (the frame would break mid-stream)."""
    count = frame_message_count(sum(tensor_chunks(size) for size in sizes))
    header = msgpack.packb({"n": count, "m": metadata}, use_bin_type=True)
    sent = 0
    group: list[runtime_pb2.Tensor] = []
    produced = 0
    for tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if produced >= len(sizes) or nbytes != sizes[produced]:
            expected = sizes[produced] if produced < len(sizes) else "no"
            raise ProtocolError(
                ErrorCode.INTERNAL,
                f"frame tensor {produced} has {nbytes} bytes, {expected} were announced",
            )
        produced += 1
        for part in split_for_streaming(serialize_tensor(tensor), CHUNK_BYTES):
            group.append(part)
            if len(group) == CHUNKS_PER_MESSAGE:
                yield message_type(tensors=group, metadata=header if sent == 0 else b"")
                sent += 1
                group = []
    if produced != len(sizes):
        raise ProtocolError(
            ErrorCode.INTERNAL, f"the frame announced {len(sizes)} tensors, {produced} came"
        )
    if group or sent == 0:
        yield message_type(tensors=group, metadata=header if sent == 0 else b"")
        sent += 1
    assert sent == count, "the announced message count is the one sent"


async def read_frame(
    stream: AsyncIterator[Msg],
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    *,
    max_metadata_bytes: int = MAX_METADATA_BYTES,
    max_messages: int = MAX_MESSAGES_PER_FRAME,
    reserve: Callable[[int], None] | None = None,
) -> Frame | None:
    """Read one frame from a stream of protobuf messages; None when the stream ended cleanly
    before a new frame. Tensors are built one by one as their chunks arrive, each validated
    (size against `max_bytes`, dtype, shape) before it is built, so the reader holds the frame
    once. A reader that asked for a large answer (a verifier's reveal of a long session) may
    allow more metadata and more messages than the defaults (`MAX_REVEAL_*`). `reserve` is
    called with each tensor's byte size before its chunks are kept (a node's budget of
    incoming bytes; it raises to refuse the frame)."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        return None
    count, metadata = _parse_header(first.metadata, max_metadata_bytes, max_messages)
    tensors = _TensorAssembler(max_bytes, reserve)
    tensors.add(first.tensors)
    for _ in range(count - 1):
        try:
            message = await anext(stream)
        except StopAsyncIteration:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "stream ended inside a frame") from None
        if message.metadata:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "metadata inside a frame's continuation")
        tensors.add(message.tensors)
    return Frame(metadata, tensors.finish())


def decode_frame(messages: Iterable[Msg], max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Frame:
    """Decode a frame from already received messages (unary replies)."""
    messages = list(messages)
    if not messages:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "empty frame")
    count, metadata = _parse_header(messages[0].metadata)
    if count != len(messages):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"frame announced {count} messages, got {len(messages)}"
        )
    tensors = _TensorAssembler(max_bytes)
    for message in messages:
        tensors.add(message.tensors)
    return Frame(metadata, tensors.finish())


def _parse_header(
    raw: bytes,
    max_metadata_bytes: int = MAX_METADATA_BYTES,
    max_messages: int = MAX_MESSAGES_PER_FRAME,
) -> tuple[int, dict[str, Any]]:
    if not raw:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "frame without metadata")
    if len(raw) > max_metadata_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"metadata exceeds {max_metadata_bytes} bytes")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"metadata is not msgpack: {e}") from None
    d = _require_map(header, "frame header")
    count = _int(d.get("n"), "message count", 1, max_messages)
    metadata = _require_map(d.get("m"), "metadata")
    _str(metadata.get("type"), "type")
    return count, metadata


_TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
}


class _TensorAssembler:
    """Builds a frame's tensors as their chunks arrive: a reader holds the tensors built so far
    and the chunks of one tensor, never the whole frame twice. Each tensor's head chunk is
    validated (compression, dtype, its size against the frame's limit) before its other
    chunks are kept, and its bytes against its shape before it is built."""

    def __init__(self, max_bytes: int, reserve: Callable[[int], None] | None = None) -> None:
        self.max_bytes = max_bytes
        self._reserve = reserve  # told each tensor's bytes before its chunks are kept
        self.tensors: list[torch.Tensor] = []
        self._announced = 0  # tensor bytes announced by the heads so far
        self._received = 0  # chunk bytes received so far
        self._chunks: list[runtime_pb2.Tensor] = []  # of the tensor being assembled
        self._expected = 0  # chunks of the tensor being assembled

    def add(self, parts: Iterable[runtime_pb2.Tensor]) -> None:
        for part in parts:
            self._received += len(part.buffer)
            if self._received > self.max_bytes:
                raise ProtocolError(ErrorCode.TOO_LARGE, f"frame exceeds {self.max_bytes} bytes")
            if not self._chunks:
                self._expected = self._check_head(part)
            self._chunks.append(part)
            if len(self._chunks) == self._expected:
                self.tensors.append(self._build())
                self._chunks = []

    def finish(self) -> list[torch.Tensor]:
        if self._chunks:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "tensor chunks missing from frame")
        return self.tensors

    def _check_head(self, head: runtime_pb2.Tensor) -> int:
        chunks = head.chunks or 1
        if chunks < 1:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "tensor chunks missing from frame")
        if head.compression != runtime_pb2.CompressionType.NONE:
            raise ProtocolError(ErrorCode.BAD_TENSOR, "compressed tensors are not accepted")
        if head.dtype not in _ITEMSIZE:
            raise ProtocolError(ErrorCode.BAD_TENSOR, f"dtype {head.dtype!r} not accepted")
        nbytes = math.prod(head.size) * _ITEMSIZE[head.dtype]
        self._announced += nbytes
        if self._announced > self.max_bytes:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"frame exceeds {self.max_bytes} bytes")
        if self._reserve is not None:
            self._reserve(nbytes)
        return chunks

    def _build(self) -> torch.Tensor:
        head = self._chunks[0]
        shape, dtype = list(head.size), head.dtype
        needed = math.prod(shape) * _ITEMSIZE[dtype]
        got = sum(len(chunk.buffer) for chunk in self._chunks)
        if got != needed:
            raise ProtocolError(
                ErrorCode.BAD_TENSOR, f"tensor {shape} {dtype} needs {needed} bytes, got {got}"
            )
        if needed == 0:
            return torch.empty(shape, dtype=_TORCH_DTYPES[dtype])
        buffer = bytearray(needed)  # the one copy: the tensor's memory
        offset = 0
        for chunk in self._chunks:
            buffer[offset : offset + len(chunk.buffer)] = chunk.buffer
            offset += len(chunk.buffer)
        if dtype == "bfloat16":  # travels as its raw 2-byte words
            return torch.frombuffer(buffer, dtype=torch.int16).view(torch.bfloat16).reshape(shape)
        return torch.frombuffer(buffer, dtype=_TORCH_DTYPES[dtype]).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Reveal limits: the largest `revealed` frame a session can need, against the protocol's caps
# ---------------------------------------------------------------------------------------------


def _packed(value: Any) -> int:
    return len(msgpack.packb(value, use_bin_type=True))


_HASH = b"\xff" * 32
_LARGEST_LEAF = Leaf(
    _HASH, _HASH, 2**16 - 1, 2**16 - 1, 2**32 - 1, 2**32 - 1, _HASH, _HASH, _HASH, MAX_ISSUED_AT
)
# Proof hashes of a leaf in a batch of at most MAX_BATCH_LEAVES leaves: ceil(log2(leaves)).
_MAX_PROOF = (MAX_BATCH_LEAVES - 1).bit_length()
# One revealed step at its largest (a batch id up to 2**64 - 1, what msgpack carries).
_REVEALED_STEP_BYTES = _packed(
    {
        "leaf": leaf_to_wire(_LARGEST_LEAF),
        "batch": 2**64 - 1,
        "index": 2**32 - 1,
        "proof": [_HASH] * _MAX_PROOF,
    }
)
_BATCH_LEAF_BYTES = _packed(_HASH)
# The frame header and the `revealed` map around its two lists (each list header up to 5 bytes).
_REVEAL_ENVELOPE_BYTES = (
    _packed(
        {
            "n": 2**32 - 1,
            "m": {"type": "revealed", "steps": [], "full": True, "leaves": [], "states": True},
        }
    )
    + 2 * 4
)
# Sketch bytes per position: K indices (int64) and K values (float16).
_SKETCH_BYTES_PER_POSITION = SKETCH_TOP_K * (_ITEMSIZE["int64"] + _ITEMSIZE["float16"])


@dataclass(frozen=True)
class RevealSize:
    """Upper bounds on one full `revealed` frame, and the caps every verifier reads up to."""

    tensor_bytes: int  # hidden states, the mask, the sketch
    metadata_bytes: int  # the msgpack header: every step's leaf and proof, the batch's leaves
    messages: int  # protobuf messages of the frame

    def excess(self) -> list[str]:
        """The protocol caps this reveal would break, in words (empty when it fits)."""
        over = []
        if self.tensor_bytes > MAX_REVEAL_BYTES:
            over.append(f"{self.tensor_bytes} tensor bytes > {MAX_REVEAL_BYTES}")
        if self.metadata_bytes > MAX_REVEAL_METADATA_BYTES:
            over.append(f"{self.metadata_bytes} metadata bytes > {MAX_REVEAL_METADATA_BYTES}")
        if self.messages > MAX_REVEAL_MESSAGES:
            over.append(f"{self.messages} messages > {MAX_REVEAL_MESSAGES}")
        return over

    @property
    def fits(self) -> bool:
        return not self.excess()


def reveal_limits(
    *, hidden_size: int, dtype: str, batch: int, max_length: int, blocks: int = 0
) -> RevealSize:
    """The largest full reveal (any leaf) of a session of `batch` sequences of up to
    `max_length` positions over a span of `hidden_size` in `dtype`, with the block states of
    `blocks` blocks per position (a 16-bit node's span, `node.states`; 0: none):

    - tensors: every position's hidden states (`batch * max_length * hidden_size` items, and
      `blocks` times that for the states), the mask (`batch * max_length` int64) and every
      step's sketch;
    - metadata: `max_length` steps (one token each, the most leaves a session can have), each
      a leaf with a proof in a batch of MAX_BATCH_LEAVES leaves, and that batch's leaf hashes;
    - messages: every tensor (per step its hidden states and block states, the mask, the
      sketches' two) in whole chunks.

    A node opens no session whose bound exceeds the caps (`RevealSize.fits`), and a verifier
    reads reveals up to the caps: an honest node can always reveal what it served."""
    if dtype not in HIDDEN_DTYPES:
        raise ValueError(f"unknown hidden dtype {dtype!r}")
    if min(hidden_size, batch, max_length) < 1:
        raise ValueError("hidden_size, batch and max_length must be >= 1")
    positions = batch * max_length
    tensor_bytes = positions * (
        (1 + blocks) * hidden_size * _ITEMSIZE[dtype]
        + _ITEMSIZE[MASK_DTYPE]
        + _SKETCH_BYTES_PER_POSITION
    )
    tensors = max_length + 1 + 2 + (max_length if blocks else 0)
    chunks = math.ceil(tensor_bytes / CHUNK_BYTES) + tensors  # a partial last chunk per tensor
    metadata_bytes = (
        _REVEAL_ENVELOPE_BYTES
        + max_length * _REVEALED_STEP_BYTES
        + MAX_BATCH_LEAVES * _BATCH_LEAF_BYTES
    )
    return RevealSize(tensor_bytes, metadata_bytes, frame_message_count(chunks))


def longest_revealable(*, hidden_size: int, dtype: str, batch: int, blocks: int = 0) -> int:
    """The largest `max_length` whose sessions of `batch` sequences stay revealable (0: none),
    with the block states of `blocks` blocks (`reveal_limits`)."""
    low, high = 0, 2**20  # OpenSession's bound on max_length
    while low < high:
        mid = (low + high + 1) // 2
        size = reveal_limits(
            hidden_size=hidden_size, dtype=dtype, batch=batch, max_length=mid, blocks=blocks
        )
        if size.fits:
            low = mid
        else:
            high = mid - 1
    return low


# ---------------------------------------------------------------------------------------------
# Untrusted values: the checks of node.fields, refused as BAD_REQUEST
# ---------------------------------------------------------------------------------------------

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _bad_request(check: Callable[_P, _T]) -> Callable[_P, _T]:
    """`check` (a `node.fields` check) raising `ProtocolError(BAD_REQUEST)` for a bad value."""

    @functools.wraps(check)
    def refusing(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return check(*args, **kwargs)
        except FieldError as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, str(exc)) from None

    return refusing


_require_map = _bad_request(fields.mapping)
_int = _bad_request(fields.integer)
_str = _bad_request(fields.text)
_bytes = _bad_request(fields.fixed_bytes)
_address = _bad_request(fields.address)


def _uint_to_wire(value: int) -> int | bytes:
    # msgpack ints stop at 64 bits; larger amounts travel as 32-byte big-endian.
    return value if value < 2**63 else value.to_bytes(32, "big")


def _uint_from_wire(raw: Any, what: str) -> int:
    if isinstance(raw, bytes) and len(raw) == 32:
        return int.from_bytes(raw, "big")
    return _int(raw, what, 0, 2**63 - 1)
