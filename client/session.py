"""`InferenceSession`: the model's blocks run step by step on a chain of servers, paid per
step, checked per step, and re-routed when a server fails.

    with client.inference_session(max_length=64) as session:
        out = session.step(hidden, mask)    # hidden [batch, tokens, hidden_size] -> same shape

A step goes through the route's hops in order. For each hop the client pays a cumulative
voucher for the step's tokens at the hop's price, sends the hidden states and the attention
mask, and checks the signed receipt (`client.receipts.check_receipt`): signer, leaf, input
and output hashes, the hash of the sketch of the output it received (recomputed here, so that
what the node committed is what it sent), and the chain of custody from the previous hop. Every receipt is kept in the
ledger (invalid ones as evidence; `client.keeper.ReceiptKeeper`).

Each hop keeps its history: every input it was sent, in order. When a hop fails (gone,
refusing, a bad receipt, an expired session), the client avoids that server for a while,
routes the hop's blocks again, opens sessions on the new servers, replays the history to them
in one step (they compute, and are paid for, those tokens once) to rebuild their caches, and
carries on with the step. The failed server was paid only for the steps it answered.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING

import torch

from client.errors import (
    BadReceiptError,
    NoRouteError,
    PaymentRefusedError,
    ServerFailure,
    SessionStateError,
)
from client.payments import ClientChannel
from client.receipts import ExpectedLeaf, ReceiptProblem, check_receipt
from client.remote import RemoteError, RemoteSpanSession, RemoteUnavailableError
from ledger.types import ModelId, Voucher
from node.errors import BadTensorError
from node.protocol import ErrorCode, ProtocolError, PushRequest, PushTarget, SignedReceipt
from node.push import push_timeout
from node.routing import RouteHop, route_price
from node.sketch import mask_hash, sketch
from node.tensors import (
    check_attention_mask,
    check_hidden_states,
    check_prompts,
    dtype_from_name,
    tensor_hash,
)

if TYPE_CHECKING:
    from client.keeper import ReceiptKeeper
    from client.network import Network
    from client.payments import Payments
    from client.registry import ServerRegistry
    from client.router import Router
    from ledger.eip712 import Domain

logger = logging.getLogger(__name__)

# Refusals that mean our payment is wrong: not the server's fault, so no re-routing.
PAYMENT_CODES = frozenset(
    {
        ErrorCode.PAYMENT_BEHIND,
        ErrorCode.REPLAYED_VOUCHER,
        ErrorCode.BAD_VOUCHER,
        ErrorCode.WRONG_CHANNEL,
    }
)
# Fatal refusals that are no one's fault: reopen elsewhere without avoiding the server.
NO_BLAME_CODES = frozenset(
    {ErrorCode.SESSION_EXPIRED, ErrorCode.SHUTTING_DOWN, ErrorCode.BUSY, ErrorCode.NO_INPUT}
)
# Non-fatal refusals that mean our request is wrong (a client bug, not a server failure).
REQUEST_CODES = frozenset({ErrorCode.BAD_TENSOR, ErrorCode.OUT_OF_ORDER, ErrorCode.LENGTH_EXCEEDED})


@dataclass(frozen=True)
class SessionParts:
    """What an inference session works with: the parts of its client it calls and the few
    settings it reads (`client.client.SwarmClient` gives one to all its sessions)."""

    router: Router  # routes blocks to servers; told which servers failed or served
    network: Network  # opens, steps and closes server sessions
    registry: ServerRegistry  # forgets a server's on-chain standing when it refuses
    payments: Payments  # channels, vouchers, the budget and the chain's clock
    receipts: ReceiptKeeper  # keeps every receipt (invalid ones as evidence)
    step_lock: threading.RLock  # shared by the client's sessions: one step at a time
    receipt_domain: Domain  # the EIP-712 domain nodes sign receipts in
    model_id: ModelId  # the model's on-chain id, stated in every receipt
    total_blocks: int  # the model's blocks: a route covers [0, total_blocks)
    hidden_size: int  # the last dimension of the hidden states
    dtype: str  # the hidden states' dtype on the wire (`ClientConfig.dtype`)
    max_failovers: int  # server failures one step (or one route) may survive
    pipeline: bool  # servers push their outputs to the next hop (`ClientConfig.pipeline`)
    open_timeout: float  # seconds to open a session on a server
    step_timeout: float  # seconds a server may take for one step
    silence_timeout: float  # seconds a server at work on a step may send nothing

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtype_from_name(self.dtype)


@dataclass
class Hop:
    """One server session on the route, and everything it was sent."""

    route: RouteHop
    channel: ClientChannel
    remote: RemoteSpanSession
    history: torch.Tensor | None = None  # [batch, positions, hidden]: inputs sent, in order
    prompts_hash: bytes | None = None  # of the deep prompts it was opened with, if any

    @property
    def peer_id(self) -> str:
        return self.route.peer_id

    @property
    def address(self) -> str:
        return self.route.address


@dataclass(frozen=True)
class Sent:
    """A step sent to a hop and paid for, its answer not read yet."""

    step: int
    voucher: Voucher
    previous_voucher: Voucher | None
    cost: int


@dataclass
class Served:
    """What one server did for this session: tokens computed and Wei paid for them."""

    address: str
    peer_id: str
    tokens: int = 0
    cost: int = 0


class InferenceSession:
    """A session over every block of the model (see the module doc). Steps run one at a time;
    not for use from several threads at once."""

    def __init__(
        self,
        parts: SessionParts,
        *,
        max_length: int,
        batch_size: int | None = None,
        prompts: torch.Tensor | None = None,
    ) -> None:
        if max_length < 1:
            raise SessionStateError(f"max_length must be >= 1, got {max_length}")
        if batch_size is not None and batch_size < 1:
            raise SessionStateError(f"batch_size must be >= 1, got {batch_size}")
        if prompts is not None:
            prompts = prompts.detach().to(parts.torch_dtype).contiguous()
            try:
                check_prompts(
                    prompts,
                    blocks=parts.total_blocks,
                    hidden_size=parts.hidden_size,
                    dtype=parts.torch_dtype,
                    tokens=max_length,
                )
            except BadTensorError as exc:
                raise SessionStateError(str(exc)) from None
        # deep prompts [blocks, P, hidden]: each hop opens with its blocks' rows, added to the
        # first step's first P positions (which must cover them), routed through nodes that
        # take them (those that train)
        self.prompts = prompts
        self._parts = parts
        self.max_length = max_length
        self.batch_size = batch_size
        self.position = 0  # positions every server has processed
        self.mask: torch.Tensor | None = None  # [batch, position] int64 of what was processed
        self.hops: list[Hop] = []
        self.served: dict[str, Served] = {}
        self.failovers = 0  # servers replaced during this session
        self.pushed = 0  # steps whose input a server got straight from the previous one
        self.closed = False

    # --- public ----------------------------------------------------------------------------

    @property
    def route(self) -> list[RouteHop]:
        """The current route (empty before the first step)."""
        return [hop.route for hop in self.hops]

    def step(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run every block over `hidden` [batch, tokens, hidden_size] (the new positions) with
        `attention_mask` [batch, position + tokens] (0/1; None: no padding); returns the last
        block's output [batch, tokens, hidden_size] in float32 (before the final norm)."""
        if self.closed:
            raise SessionStateError("the inference session is closed")
        parts = self._parts
        try:
            check_hidden_states(hidden, hidden_size=parts.hidden_size, batch=self.batch_size)
        except BadTensorError as exc:
            raise SessionStateError(str(exc)) from None
        batch, tokens, _ = hidden.shape
        if self.batch_size is None:
            self.batch_size = batch
        if self.position + tokens > self.max_length:
            raise SessionStateError(
                f"this step would reach {self.position + tokens} positions; the session was "
                f"opened with max_length={self.max_length}"
            )
        mask = self._full_mask(attention_mask, batch, tokens)
        if self.prompts is not None and self.position == 0 and tokens < self.prompts.shape[1]:
            raise SessionStateError(
                f"the first step must cover the {self.prompts.shape[1]} deep prompt positions, "
                f"it has {tokens}"
            )
        with parts.step_lock:
            if not self.hops:
                self.hops = self._open_range(
                    0, parts.total_blocks, history=None, step_tokens=batch * tokens
                )
            parts.payments.budget.check(
                batch * tokens * route_price(self.route), f"a step of {batch * tokens} tokens"
            )
            x = self._through_route(hidden.to(parts.torch_dtype), mask)
            self.position += tokens
            self.mask = mask
        return x.float()

    def _through_route(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One step through every hop, replacing failed ones. Histories grow only once the
        whole step went through; if it does not, the hops that ran it are closed (their caches
        are ahead of this session now) and reopened with a replay on the next step.

        Pipelined (`SessionParts.pipeline`), the step goes out to every hop at once, each paid
        for its own tokens: the first hop gets `x`, each later one its input from the previous
        hop's push. Answers are read in route order, so every receipt is checked as in the
        client-mediated path, while the next hops compute. A hop whose input was not pushed
        (the previous hop failed, was replaced, or could not push) gets it from the client."""
        batch, tokens, _ = x.shape
        done: list[tuple[Hop, torch.Tensor]] = []
        sent: dict[int, Sent] = {}  # id(hop) -> its pipelined step, not read yet
        previous: bytes | None = None
        fed = True  # the current hop has its input (the first hop: in its step frame)
        failures = 0
        i = 0
        for hop in self.hops:
            if not hop.remote.closed and hop.remote.idle_expired():
                self._close_remote(hop.remote)  # the node dropped it: reopened on the way
        try:
            if self._parts.pipeline and len(self.hops) > 1:
                self._send_pipelined(x, mask, sent)
            while i < len(self.hops):
                hop = self.hops[i]
                pending = sent.pop(id(hop), None)
                try:
                    if pending is None:
                        out, previous = self._send(hop, x, mask, previous)
                        pushed: bool | None = False
                    else:
                        if not fed:
                            self._push_input(hop, pending, x)
                        out, previous, pushed = self._receive(hop, pending, x, mask, previous)
                        self.pushed += i > 0 and fed
                except ServerFailure as failure:
                    failures += 1
                    self._discard(hop, failure)
                    if failures > self._parts.max_failovers:
                        raise NoRouteError(
                            f"{failures} servers failed during one step; last: {failure}"
                        ) from failure
                    self.hops[i : i + 1] = self._open_range(
                        hop.route.start,
                        hop.route.end,
                        history=hop.history,
                        step_tokens=batch * tokens,
                    )
                    self.failovers += 1
                    continue  # `previous` still holds: the new hops get the same input
                done.append((hop, x))
                x = out
                fed = bool(pushed)
                i += 1
        except BaseException:
            for hop, _ in done:
                self._close_remote(hop.remote)
            for hop in self.hops:  # pipelined steps never answered: the nodes may hold them
                left = sent.pop(id(hop), None)
                if left is not None:
                    self._paid_for_nothing(hop, left.cost)
                    self._close_remote(hop.remote)
            raise
        for hop, sent_x in done:
            hop.history = sent_x if hop.history is None else torch.cat([hop.history, sent_x], dim=1)
        return x

    def _send_pipelined(self, x: torch.Tensor, mask: torch.Tensor, sent: dict[int, Sent]) -> None:
        """Send the step to every hop up to the first closed one (reopened on the way), each
        paid for its own tokens: the first hop at once, with `x`, then, while it computes, the
        others, each pushing to the next. Channels are topped up first (what may need the
        chain); a later hop's voucher that cannot be signed sends none of theirs (those signed
        are given back), and the first hop's step is then left unread."""
        parts = self._parts
        hops: list[Hop] = []
        for hop in self.hops:
            if hop.remote.closed:
                break
            hops.append(hop)
        if not hops:
            return
        batch, tokens, _ = x.shape
        for hop in hops:
            price = hop.route.price_per_token
            parts.payments.ensure_room(
                hop.channel,
                batch * tokens * price,
                price_per_token=price,
                session_tokens=batch * self.max_length,
            )

        def target(i: int) -> PushTarget | None:
            if i + 1 >= len(hops):
                return None
            after = hops[i + 1].remote
            return PushTarget(hops[i + 1].peer_id, after.session_id, after.next_step)

        first = self._pay(hops[0], x.shape)
        parts.network.send_step(
            hops[0].remote, x, mask, first.voucher, push_to=target(0), pushed_from=None
        )
        sent[id(hops[0])] = first
        paid: list[Sent] = []
        try:
            for hop in hops[1:]:
                paid.append(self._pay(hop, x.shape))
        except BaseException:
            for hop, pending in reversed(list(zip(hops[1:], paid, strict=False))):  # not sent
                parts.payments.refused(hop.channel, pending.voucher, pending.previous_voucher)
            raise
        for i, (hop, pending) in enumerate(zip(hops[1:], paid, strict=True), start=1):
            parts.network.send_step(
                hop.remote,
                None,
                mask,
                pending.voucher,
                push_to=target(i),
                pushed_from=hops[i - 1].address,
            )
            sent[id(hop)] = pending

    def _push_input(self, hop: Hop, pending: Sent, x: torch.Tensor) -> None:
        """Give a pipelined hop its input ourselves. A hop that refuses it (it computed on
        another input, from a hop since replaced) is reopened, no one's fault; one that cannot
        be reached or does not answer has failed. Either may have been paid for the step."""
        parts = self._parts
        try:
            parts.network.push(
                hop.peer_id,
                PushRequest(hop.remote.session_id, pending.step),
                x,
                timeout=push_timeout(parts.silence_timeout, x),
            )
        except ProtocolError as exc:
            self._paid_for_nothing(hop, pending.cost)
            raise ServerFailure(
                f"{hop.peer_id} did not take the input of step {pending.step}: {exc}",
                peer_id=hop.peer_id,
                ban=False,
            ) from exc
        except (ConnectionError, TimeoutError) as exc:
            self._paid_for_nothing(hop, pending.cost)
            raise ServerFailure(
                f"{hop.peer_id} did not answer the input of step {pending.step}: {exc}",
                peer_id=hop.peer_id,
            ) from exc

    def close(self) -> None:
        """End every server session (their caches are freed). Idempotent."""
        if self.closed:
            return
        self.closed = True
        for hop in self.hops:
            self._close_remote(hop.remote)
        self._parts.receipts.flush()

    def __enter__(self) -> InferenceSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals -------------------------------------------------------------------------

    def _full_mask(self, mask: torch.Tensor | None, batch: int, tokens: int) -> torch.Tensor:
        past = self.mask if self.mask is not None else torch.ones(batch, 0, dtype=torch.long)
        if mask is None:
            return torch.cat([past, torch.ones(batch, tokens, dtype=torch.long)], dim=1)
        mask = mask.to(torch.long)
        try:
            check_attention_mask(mask, batch=batch, length=self.position + tokens)
        except BadTensorError as exc:
            raise SessionStateError(str(exc)) from None
        if not torch.equal(mask[:, : self.position], past):
            raise SessionStateError("the attention mask disagrees with the session's history")
        return mask

    def _open_range(
        self, start: int, end: int, *, history: torch.Tensor | None, step_tokens: int
    ) -> list[Hop]:
        """Sessions on a new route over blocks `[start, end)`, with `history` (the inputs of
        block `start` so far) replayed through them; retried around failing servers. The
        budget must cover the replay and a step of `step_tokens` through the route before any
        channel is opened."""
        parts = self._parts
        assert self.batch_size is not None
        replayed = 0 if history is None else history.shape[0] * history.shape[1]
        failures = 0
        while True:
            route = parts.router.route(start, end, training=self.prompts is not None)
            what = f"a step of {step_tokens} tokens through blocks [{start}, {end})"
            if replayed:
                what = f"replaying {replayed} tokens and {what}"
            parts.payments.budget.check((replayed + step_tokens) * route_price(route), what)
            hops: list[Hop] = []
            try:
                for planned in route:
                    hops.append(self._open_hop(planned))
                if history is not None:
                    self._replay(hops, history)
                return hops
            except ServerFailure as failure:
                failures += 1
                for hop in hops:
                    self._discard(hop, failure if hop.peer_id == failure.peer_id else None)
                if failure.peer_id not in {h.peer_id for h in hops}:
                    parts.router.failed(failure.peer_id, str(failure))
                if failures > parts.max_failovers:
                    raise NoRouteError(
                        f"no working route through blocks [{start}, {end}) after {failures} "
                        f"failures; last: {failure}"
                    ) from failure

    def _open_hop(self, planned: RouteHop) -> Hop:
        parts = self._parts
        assert self.batch_size is not None
        session_tokens = self.batch_size * self.max_length
        channel = parts.payments.channel(
            planned.address, price_per_token=planned.price_per_token, session_tokens=session_tokens
        )
        parts.payments.ensure_room(
            channel, 0, price_per_token=planned.price_per_token, session_tokens=session_tokens
        )
        prompts = None if self.prompts is None else self.prompts[planned.start : planned.end]
        try:
            remote = parts.network.open_session(
                planned.peer_id,
                session_id=os.urandom(32),
                span=(planned.start, planned.end),
                max_length=self.max_length,
                batch_size=self.batch_size,
                channel_id=channel.channel_id,
                dtype=parts.dtype,
                timeout=parts.open_timeout,
                prompts=prompts,
            )
        except RemoteError as exc:
            parts.registry.forget(planned.peer_id)  # any refusal: re-read its standing
            if exc.code in PAYMENT_CODES:
                raise PaymentRefusedError(
                    f"server {planned.address} refused channel {channel.channel_id}: "
                    f"{exc.code.value}: {exc.message}",
                    code=exc.code.value,
                    server=planned.address,
                ) from exc
            raise ServerFailure(
                f"{planned.peer_id} refused a session: {exc}", peer_id=planned.peer_id
            ) from exc
        except (RemoteUnavailableError, ProtocolError, TimeoutError) as exc:
            raise ServerFailure(
                f"cannot open a session on {planned.peer_id}: {exc}", peer_id=planned.peer_id
            ) from exc
        if remote.node != planned.address:
            self._close_remote(remote)
            raise ServerFailure(
                f"{planned.peer_id} answered as {remote.node}, it announced {planned.address}",
                peer_id=planned.peer_id,
            )
        return Hop(
            planned, channel, remote, prompts_hash=None if prompts is None else tensor_hash(prompts)
        )

    def _replay(self, hops: Sequence[Hop], history: torch.Tensor) -> None:
        """Send `history` [batch, position, hidden] through `hops` in one step each, so their
        caches hold what the replaced server's held."""
        assert self.mask is not None
        x = history
        previous: bytes | None = None
        for hop in hops:
            out, previous = self._send(hop, x, self.mask, previous)
            hop.history = x
            x = out
        logger.info("replayed %d positions to %d new server(s)", history.shape[1], len(hops))

    def _send(
        self, hop: Hop, x: torch.Tensor, mask: torch.Tensor, previous: bytes | None
    ) -> tuple[torch.Tensor, bytes]:
        """One step on one hop: pay, send, check the receipt, keep it. Returns the output and
        its hash. `ServerFailure` when the server fails; `PaymentRefusedError` when it refuses
        the payment."""
        if hop.remote.closed:  # dropped after an unfinished step: reopen it, no one's fault
            raise ServerFailure(
                f"the session on {hop.peer_id} was closed", peer_id=hop.peer_id, ban=False
            )
        pending = self._pay(hop, x.shape)
        out, output_hash, _ = self._receive(hop, pending, x, mask, previous, send=True)
        return out, output_hash

    def _pay(self, hop: Hop, shape: torch.Size) -> Sent:
        """Pay for a step of `shape` [batch, tokens, hidden] on `hop` (not sent yet)."""
        parts = self._parts
        batch, tokens, _ = shape
        price = hop.route.price_per_token
        cost = batch * tokens * price
        session_tokens = batch * self.max_length
        parts.payments.ensure_room(
            hop.channel, cost, price_per_token=price, session_tokens=session_tokens
        )
        previous_voucher = hop.channel.voucher
        voucher = parts.payments.pay(hop.channel, cost)
        return Sent(hop.remote.next_step, voucher, previous_voucher, cost)

    def _receive(
        self,
        hop: Hop,
        pending: Sent,
        x: torch.Tensor,
        mask: torch.Tensor,
        previous: bytes | None,
        *,
        send: bool = False,
    ) -> tuple[torch.Tensor, bytes, bool | None]:
        """The answer to the step `pending` of `hop` with input `x` (sent first with `send`):
        its output, the output's hash and whether the hop pushed it on; the receipt checked
        and kept."""
        parts = self._parts
        batch, tokens, _ = x.shape
        cost, step, voucher = pending.cost, pending.step, pending.voucher
        try:
            if send:
                out, receipt = parts.network.step(
                    hop.remote,
                    x,
                    mask,
                    voucher,
                    timeout=parts.step_timeout,
                    silence=parts.silence_timeout,
                )
                pushed: bool | None = None
            else:
                out, receipt, pushed = parts.network.receive_step(
                    hop.remote, timeout=parts.step_timeout, silence=parts.silence_timeout
                )
        except RemoteError as exc:
            parts.registry.forget(hop.peer_id)  # any refusal: re-read its standing on-chain
            if exc.spent:  # the node kept the voucher: paid, nothing received
                self._paid_for_nothing(hop, cost)
            else:
                parts.payments.refused(hop.channel, voucher, pending.previous_voucher)
            if exc.code in PAYMENT_CODES:
                raise PaymentRefusedError(
                    f"server {hop.address} refused our payment on channel "
                    f"{hop.channel.channel_id}: {exc.code.value}: {exc.message}",
                    code=exc.code.value,
                    server=hop.address,
                ) from exc
            if not exc.fatal and exc.code in REQUEST_CODES:
                raise SessionStateError(f"server {hop.address} refused the step: {exc}") from exc
            raise ServerFailure(
                f"{hop.peer_id} failed step {step}: {exc}",
                peer_id=hop.peer_id,
                ban=exc.code not in NO_BLAME_CODES,
            ) from exc
        except KeyboardInterrupt:
            # interrupted while waiting (Ctrl-C): the node may hold the voucher, so it counts
            self._paid_for_nothing(hop, cost)
            raise
        except (RemoteUnavailableError, ProtocolError, TimeoutError) as exc:
            # no answer: the node may hold the voucher, so it counts as spent
            self._paid_for_nothing(hop, cost)
            raise ServerFailure(
                f"{hop.peer_id} failed step {step}: {exc}", peer_id=hop.peer_id
            ) from exc
        if out.shape != x.shape or out.dtype != x.dtype:
            raise ServerFailure(
                f"{hop.peer_id} returned {list(out.shape)} {out.dtype} for {list(x.shape)} "
                f"{x.dtype}",
                peer_id=hop.peer_id,
            )
        quantization = hop.route.info.quantization  # what the node declared in its record
        if quantization is not None and receipt.states_hash is None:
            raise ServerFailure(
                f"{hop.peer_id} serves {quantization} weights but its receipt of step {step} "
                "discloses no block states hash",
                peer_id=hop.peer_id,
            )
        if hop.prompts_hash is not None and receipt.states_hash is not None:
            raise ServerFailure(
                f"{hop.peer_id} disclosed block states for a session with deep prompts, which "
                "only float32 nodes serve",
                peer_id=hop.peer_id,
            )
        sent, received = tensor_hash(x), tensor_hash(out)
        # the sketch of what arrived: the node must have committed this one (client/receipts.py),
        # with the mask sent (its own columns) and, when the node serves in 16 bits, the hash
        # of its block states (node.states)
        sketched = sketch(
            out,
            mask_hash=mask_hash(mask, tokens),
            states_hash=receipt.states_hash,
            # the precision the node declared: a leaf committing another is refused
            quantization=quantization,
            prompts_hash=hop.prompts_hash,  # a session with deep prompts commits them
        ).hash()
        expected = ExpectedLeaf(
            signer=hop.address,
            session_id=hop.remote.session_id,
            model_id=parts.model_id,
            span=(hop.route.start, hop.route.end),
            step=step,
            tokens=batch * tokens,
            input_hash=sent,
            output_hash=received,
            sketch_hash=sketched,
            # the chain's time, as the node's: the receipt's commit deadline counts on-chain
            received_at=int(parts.payments.clock.now()),
            previous_output_hash=previous,
        )
        check_and_keep(
            parts,
            receipt,
            expected,
            peer_id=hop.peer_id,
            channel_id=hop.channel.channel_id,
            cost=cost,
            output=out,
            what=f"step {step}",
        )
        parts.router.succeeded(hop.peer_id)
        served = self.served.setdefault(hop.address, Served(hop.address, hop.peer_id))
        served.tokens += batch * tokens
        served.cost += cost
        return out, _output_hash(receipt), pushed

    def _paid_for_nothing(self, hop: Hop, cost: int) -> None:
        """A step's voucher is spent but no output came back: count what was paid."""
        served = self.served.setdefault(hop.address, Served(hop.address, hop.peer_id))
        served.cost += cost

    def _discard(self, hop: Hop, failure: ServerFailure | None) -> None:
        self._close_remote(hop.remote)
        if failure is not None and failure.ban:
            self._parts.router.failed(hop.peer_id, str(failure))
        elif failure is not None:
            logger.info("reopening blocks [%d, %d): %s", hop.route.start, hop.route.end, failure)

    def _close_remote(self, remote: RemoteSpanSession) -> None:
        try:
            self._parts.network.close_session(remote)
        except Exception as exc:  # closing a broken stream must not hide the real problem
            logger.debug("closing a session: %s", exc)


def check_and_keep(
    parts: SessionParts,
    receipt: SignedReceipt,
    expected: ExpectedLeaf,
    *,
    peer_id: str,
    channel_id: int,
    cost: int,
    output: torch.Tensor,
    what: str,
) -> None:
    """Check a server's `receipt` of one call (`what`, for the error) against what the client
    `expected`, keep it in the ledger (a bad one with its problem, as evidence), and raise
    `BadReceiptError` when it is bad. A receipt off only in its issuedAt is checked again
    after the chain's time is read anew (the client reads it now and then)."""
    problem = check_receipt(parts.receipt_domain, receipt, expected)
    if problem is not None and problem[0] is ReceiptProblem.ISSUED_AT:
        parts.payments.clock.refresh()
        expected = replace(expected, received_at=int(parts.payments.clock.now()))
        problem = check_receipt(parts.receipt_domain, receipt, expected)
    parts.receipts.keep(
        receipt,
        server=expected.signer,
        peer_id=peer_id,
        channel_id=channel_id,
        sent=expected.input_hash,
        received=expected.output_hash,
        cost=cost,
        problem=problem,
        output=output,
    )
    if problem is not None:
        kind, detail = problem
        raise BadReceiptError(
            f"{peer_id} ({expected.signer}) sent a bad receipt for {what}: {detail}",
            peer_id=peer_id,
            problem=kind.value,
        )


def _output_hash(receipt: SignedReceipt) -> bytes:
    return receipt.leaf.output_hash
