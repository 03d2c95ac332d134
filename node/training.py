"""What a node keeps between a training forward and its backward, and the backward's checks.

A client that trains through the swarm (`client.training`) runs each hop's part of a batch as
a stateless forward (`rpc_forward`, the leaf's step 0) and later sends the gradient of the
loss with respect to that hop's output back (`rpc_backward`). The node keeps no activations in
between: the backward request carries the forward's input again, and the node recomputes the
forward with autograd before propagating the gradient (Petals does the same), so concurrent
trainers cost it memory only while their backward runs.

What it keeps is a `ForwardRecord` per forward it served: the span, the input's and the mask's
hashes and when it expires, in a `ForwardLog` bounded in entries and in time. A backward is
served once per forward, for the same span, on the same input and mask, before the record
expires; anything else is refused with `ErrorCode.NO_FORWARD` before any payment. Its leaf is
step `BACKWARD_STEP` of the forward's session: its inputHash is the hash of the output
gradient received (equal to the next span's backward outputHash: the chain of custody runs
backward too), its outputHash the hash of the input gradient sent, and its sketch the backward
kind of sketch (`node.sketch`), so the leaf itself says it is a backward.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from node.protocol import ErrorCode, ProtocolError

# How long a node keeps a forward's record for its backward (seconds), and how many it keeps:
# a trainer's backward follows its forward within one training step.
DEFAULT_BACKWARD_TTL = 600.0
DEFAULT_MAX_FORWARDS = 4096
# What a backward costs against a forward of the same tokens, when the node sets no price of
# its own: it recomputes the forward, then propagates (about twice a forward's work).
BACKWARD_PRICE_FACTOR = 2


@dataclass(frozen=True)
class ForwardRecord:
    """A forward this node served, awaiting its backward."""

    span: tuple[int, int]
    input_hash: bytes  # tensor_hash of the hidden states the forward received
    mask_hash: bytes  # node.sketch.mask_hash of its mask
    channel_id: int  # the channel that paid for it: the backward is paid on the same
    expires_at: float  # time.monotonic() after which the backward is refused
    prompts_hash: bytes | None = None  # tensor_hash of the deep prompts it added, if any


class ForwardLog:
    """The forwards served and not yet propagated back, oldest first; bounded in entries
    (the oldest is forgotten first) and in time. The node's event loop is its only user."""

    def __init__(
        self,
        ttl: float = DEFAULT_BACKWARD_TTL,
        max_entries: int = DEFAULT_MAX_FORWARDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError("a forward log keeps at least one forward for some time")
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._records: OrderedDict[bytes, ForwardRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def record(
        self,
        session_id: bytes,
        *,
        span: tuple[int, int],
        input_hash: bytes,
        mask_hash: bytes,
        channel_id: int,
        prompts_hash: bytes | None = None,
    ) -> None:
        """Keep a served forward for its backward."""
        self._expire()
        self._records[session_id] = ForwardRecord(
            span, input_hash, mask_hash, channel_id, self._clock() + self.ttl, prompts_hash
        )
        while len(self._records) > self.max_entries:
            self._records.popitem(last=False)

    def take(
        self,
        session_id: bytes,
        *,
        span: tuple[int, int],
        input_hash: bytes,
        mask_hash: bytes,
        channel_id: int,
        prompts_hash: bytes | None = None,
    ) -> ForwardRecord:
        """The forward a backward propagates through, removed (a forward has one backward;
        `restore` puts it back when the backward is not served). `ProtocolError(NO_FORWARD)`
        when there is none to match."""
        self._expire()
        record = self._records.get(session_id)
        if record is not None and record.expires_at <= self._clock():  # a restored one
            del self._records[session_id]
            record = None
        if record is None:
            raise ProtocolError(
                ErrorCode.NO_FORWARD,
                f"no forward of session 0x{session_id.hex()[:16]} awaits a backward here (never "
                f"served, already propagated back, or older than {self.ttl:g} s)",
            )
        if record.span != span:
            raise ProtocolError(
                ErrorCode.NO_FORWARD,
                f"the forward of this session ran blocks [{record.span[0]}, {record.span[1]}), "
                f"not [{span[0]}, {span[1]})",
            )
        if record.input_hash != input_hash or record.mask_hash != mask_hash:
            raise ProtocolError(
                ErrorCode.NO_FORWARD,
                "the backward's hidden states or mask are not the ones its forward received",
            )
        if record.prompts_hash != prompts_hash:
            raise ProtocolError(
                ErrorCode.NO_FORWARD,
                "the backward's deep prompts are not the ones its forward added"
                if record.prompts_hash is not None and prompts_hash is not None
                else "the backward and its forward disagree on carrying deep prompts",
            )
        if record.channel_id != channel_id:
            raise ProtocolError(
                ErrorCode.WRONG_CHANNEL,
                f"the forward was paid on channel {record.channel_id}, the backward on "
                f"{channel_id}",
            )
        del self._records[session_id]
        return record

    def restore(self, session_id: bytes, record: ForwardRecord) -> None:
        """Put back a record `take` removed (its backward was refused before it was served)."""
        self._records[session_id] = record

    def _expire(self) -> None:
        now = self._clock()
        while self._records:
            session_id, record = next(iter(self._records.items()))
            if record.expires_at > now:
                break
            del self._records[session_id]
