"""Training through the swarm: the remote blocks as one autograd function, every forward and
every backward a server computes paid per token, receipted and committed.

    blocks = TrainingRoute(client.for_sessions())
    out = remote_blocks(hidden, mask, blocks)   # hidden [batch, tokens, hidden_size]
    loss_of(out).backward()                     # gradients reach `hidden` (and what made it)
    out = remote_blocks(hidden, mask, blocks, prompts)  # deep prompts [blocks, P, hidden_size]

`remote_blocks` runs the batch through a route of servers that serve backwards (their record
has a backward price), each hop as a paid stateless forward (`rpc_forward`, leaf step 0 of a
session id of its own), and keeps each hop's input. Its backward sends each hop, last first,
its input again with the gradient of the loss with respect to its output (`rpc_backward`,
paid at the hop's backward price, leaf step `BACKWARD_STEP` of the same session), and chains
the gradients back to `hidden`. The servers' weights stay frozen: only what the client holds
(soft prompts, a head) is trained, by any torch optimizer.

Deep prompts (`tuning_mode="deep_ptune"`, protocol 9) travel with the batch: each hop gets
their rows for its blocks, `[span blocks, P, hidden_size]`, adds row i to the first P
positions before its block i, commits their hash (sketch version 5), and answers its backward
with their gradient too (committed with them, version 6), which `remote_blocks` returns to
the prompts.

Every answer is checked like an inference step (`client.receipts.check_receipt`): the signer,
the leaf, the hashes of what was sent and received, the sketch (of the output; for a backward,
the backward sketch of the gradient received, `node.sketch.backward_sketch`) and the chain of
custody (a forward's input is the previous hop's output; a backward's input, the next hop's
gradient), and every receipt is kept. A hop that fails in the forward is routed again and the
batch sent on from there; one that fails in the backward is replaced by a new route over its
blocks, which runs the hop's forward (paid) and then its backward. A server that did not
answer (a broken stream) may be chosen again once; one that fails twice, cannot be reached,
refuses or sends a bad receipt is avoided. Nothing is paid twice knowingly: a voucher the server refused is taken
back, one it may have kept (no answer) counts as spent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from client.errors import (
    NoRouteError,
    PaymentRefusedError,
    ServerFailure,
    SessionStateError,
)
from client.payments import ClientChannel
from client.receipts import ExpectedLeaf
from client.remote import RemoteError, RemoteUnavailableError, UnreachableError
from client.session import (
    NO_BLAME_CODES,
    PAYMENT_CODES,
    REQUEST_CODES,
    SessionParts,
    check_and_keep,
)
from ledger.types import Voucher
from node.errors import BadTensorError
from node.protocol import (
    BACKWARD_STEP,
    BackwardRequest,
    ErrorCode,
    ForwardRequest,
    ProtocolError,
    SignedReceipt,
)
from node.routing import RouteHop
from node.sketch import backward_sketch, mask_hash, sketch
from node.tensors import check_attention_mask, check_hidden_states, check_prompts, tensor_hash

logger = logging.getLogger(__name__)

# A backward refused for these reasons cannot be retried on the same server (it no longer
# holds the forward): its blocks are run again, forward then backward, elsewhere.
FORWARD_LOST_CODES = frozenset({ErrorCode.NO_FORWARD})


@dataclass
class TrainingHop:
    """One server's part of a training forward: what it was sent, awaiting its backward."""

    route: RouteHop
    channel: ClientChannel
    session_id: bytes  # the forward's session id (the backward names it)
    hidden: torch.Tensor  # [batch, tokens, hidden_size]: the input sent
    output_hash: bytes  # the hash of the output received
    prompts: torch.Tensor | None = None  # [span blocks, P, hidden_size]: deep prompts sent

    @property
    def peer_id(self) -> str:
        return self.route.peer_id


@dataclass
class Spent:
    """What training cost so far, per kind of call (Wei and tokens computed)."""

    forward_wei: int = 0
    backward_wei: int = 0
    forward_tokens: int = 0  # tokens x spans
    backward_tokens: int = 0
    failovers: int = 0  # hops replaced

    @property
    def wei(self) -> int:
        return self.forward_wei + self.backward_wei


class TrainingRoute:
    """Paid forwards and backwards of batches over every block of the model (module doc).
    Calls run one at a time with the client's other steps (`SessionParts.step_lock`)."""

    def __init__(self, parts: SessionParts) -> None:
        self._parts = parts
        self.spent = Spent()

    # --- forward ---------------------------------------------------------------------------

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, prompts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[TrainingHop]]:
        """Run `hidden` [batch, tokens, hidden_size] with `mask` [batch, tokens] (and deep
        `prompts` [blocks, P, hidden_size], one row per block of the model) through every
        block: the output and each hop, in route order, for the backward."""
        parts = self._parts
        hidden = hidden.detach().to(parts.torch_dtype).contiguous()
        if prompts is not None:
            prompts = prompts.detach().to(parts.torch_dtype).contiguous()
        try:
            check_hidden_states(hidden, hidden_size=parts.hidden_size, dtype=parts.torch_dtype)
            check_attention_mask(mask, batch=hidden.shape[0], length=hidden.shape[1])
            if prompts is not None:
                check_prompts(
                    prompts,
                    blocks=parts.total_blocks,
                    hidden_size=parts.hidden_size,
                    dtype=parts.torch_dtype,
                    tokens=hidden.shape[1],
                )
        except BadTensorError as exc:
            raise SessionStateError(str(exc)) from None
        with parts.step_lock:
            return self._forward_range(
                0, parts.total_blocks, hidden, mask, previous=None, prompts=prompts
            )

    def _forward_range(
        self,
        start: int,
        end: int,
        x: torch.Tensor,
        mask: torch.Tensor,
        *,
        previous: bytes | None,
        prompts: torch.Tensor | None,
    ) -> tuple[torch.Tensor, list[TrainingHop]]:
        """`x` through blocks `[start, end)` (with `prompts` [end - start, P, hidden_size] for
        them), routing again around failed servers."""
        parts = self._parts
        tokens = x.shape[0] * x.shape[1]
        hops: list[TrainingHop] = []
        failures = 0
        failed: set[str] = set()  # servers that failed this call: avoided when they fail again
        route = self._route(start, end, tokens)
        i = 0
        while i < len(route):
            planned = route[i]
            rows = None if prompts is None else prompts[planned.start - start : planned.end - start]
            try:
                hop, x = self._forward_hop(planned, x, mask, previous, rows)
            except ServerFailure as failure:
                failures += 1
                if failure.ban or failure.peer_id in failed:
                    parts.router.failed(failure.peer_id, str(failure))
                failed.add(failure.peer_id)
                if failures > parts.max_failovers:
                    raise NoRouteError(
                        f"{failures} servers failed during one training forward; last: {failure}"
                    ) from failure
                route[i:] = self._route(planned.start, end, tokens)
                self.spent.failovers += 1
                continue
            hops.append(hop)
            previous = hop.output_hash
            i += 1
        return x, hops

    def _route(self, start: int, end: int, tokens: int) -> list[RouteHop]:
        parts = self._parts
        route = parts.router.route(start, end, training=True)
        forward = sum(hop.price_per_token for hop in route)
        backward = sum(hop.info.backward_price_per_token for hop in route)
        parts.payments.budget.check(
            tokens * (forward + backward), f"a training step of {tokens} tokens"
        )
        return route

    def _forward_hop(
        self,
        planned: RouteHop,
        x: torch.Tensor,
        mask: torch.Tensor,
        previous: bytes | None,
        prompts: torch.Tensor | None,
    ) -> tuple[TrainingHop, torch.Tensor]:
        parts = self._parts
        tokens = x.shape[0] * x.shape[1]
        session_id = os.urandom(32)
        channel = self._channel(planned, tokens)
        cost = tokens * planned.price_per_token

        def call(voucher: Voucher) -> tuple[torch.Tensor, SignedReceipt]:
            request = ForwardRequest(
                session_id, planned.start, planned.end, voucher, dtype=parts.dtype
            )
            return parts.network.forward(
                planned.peer_id,
                request,
                x,
                mask,
                timeout=parts.step_timeout,
                silence=parts.silence_timeout,
                prompts=prompts,
            )

        out, receipt = self._paid_call(planned, channel, cost, call, "forward")
        prompts_hash = None if prompts is None else tensor_hash(prompts)
        self._check(
            planned,
            channel,
            receipt,
            cost,
            sent=x,
            received=out,
            step=0,
            session_id=session_id,
            sketch_hash=sketch(
                out, mask_hash=mask_hash(mask, x.shape[1]), prompts_hash=prompts_hash
            ).hash(),
            previous=previous,
        )
        self.spent.forward_wei += cost
        self.spent.forward_tokens += tokens
        return TrainingHop(planned, channel, session_id, x, tensor_hash(out), prompts), out

    # --- backward --------------------------------------------------------------------------

    def backward(
        self, hops: list[TrainingHop], mask: torch.Tensor, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The gradient with respect to the forward's input, given `grad_output` with respect
        to its output (same shape), and with respect to its deep prompts [blocks, P,
        hidden_size] if it had them (else None): each hop's backward, last hop first."""
        parts = self._parts
        grad = grad_output.detach().to(parts.torch_dtype).contiguous()
        if not torch.isfinite(grad).all():
            raise SessionStateError("the gradient of the loss has NaN or infinite values")
        grad_prompts: torch.Tensor | None = None
        first = hops[0].prompts if hops else None
        if first is not None:
            grad_prompts = first.new_zeros(parts.total_blocks, *first.shape[1:])
        with parts.step_lock:
            previous: bytes | None = None
            for hop in reversed(hops):
                grad, previous, rows = self._backward_hop(hop, mask, grad, previous)
                if grad_prompts is not None:
                    for start, end, part in rows:
                        grad_prompts[start:end] = part
        return grad, grad_prompts

    def _backward_hop(
        self,
        hop: TrainingHop,
        mask: torch.Tensor,
        grad: torch.Tensor,
        previous: bytes | None,
    ) -> tuple[torch.Tensor, bytes, list[tuple[int, int, torch.Tensor]]]:
        """`grad` back through one hop; a failed hop's blocks are run again, forward and
        backward, on a new route. Also the prompts' gradient of each block range computed."""
        try:
            grad, previous, rows = self._backward_call(hop, mask, grad, previous)
            return grad, previous, [] if rows is None else [(hop.route.start, hop.route.end, rows)]
        except ServerFailure as failure:
            if failure.ban:
                self._parts.router.failed(failure.peer_id, str(failure))
            self.spent.failovers += 1
            logger.info(
                "blocks [%d, %d) failed in the backward (%s): running them again",
                hop.route.start,
                hop.route.end,
                failure,
            )
        _, replaced = self._forward_range(
            hop.route.start, hop.route.end, hop.hidden, mask, previous=None, prompts=hop.prompts
        )
        computed: list[tuple[int, int, torch.Tensor]] = []
        for new in reversed(replaced):
            grad, previous, rows = self._backward_call(new, mask, grad, previous)
            if rows is not None:
                computed.append((new.route.start, new.route.end, rows))
        assert previous is not None  # a route has a hop
        return grad, previous, computed

    def _backward_call(
        self,
        hop: TrainingHop,
        mask: torch.Tensor,
        grad: torch.Tensor,
        previous: bytes | None,
    ) -> tuple[torch.Tensor, bytes, torch.Tensor | None]:
        parts = self._parts
        planned = hop.route
        tokens = grad.shape[0] * grad.shape[1]
        cost = tokens * planned.info.backward_price_per_token

        grad_prompts: list[torch.Tensor] = []  # the prompts' gradient, when prompted

        def call(voucher: Voucher) -> tuple[torch.Tensor, SignedReceipt]:
            request = BackwardRequest(hop.session_id, planned.start, planned.end, voucher)
            out, receipt, for_prompts = parts.network.backward(
                planned.peer_id,
                request,
                hop.hidden,
                mask,
                grad,
                timeout=parts.step_timeout,
                silence=parts.silence_timeout,
                prompts=hop.prompts,
            )
            if for_prompts is not None:
                grad_prompts.append(for_prompts)
            return out, receipt

        self._room(hop.channel, planned, cost, tokens)
        out, receipt = self._paid_call(planned, hop.channel, cost, call, "backward")
        prompts_hash = prompts_grad_hash = None
        if hop.prompts is not None:
            (rows,) = grad_prompts
            if rows.shape != hop.prompts.shape or rows.dtype != hop.prompts.dtype:
                raise ServerFailure(
                    f"{planned.peer_id} returned a prompts' gradient of {list(rows.shape)} "
                    f"{rows.dtype} for prompts of {list(hop.prompts.shape)}",
                    peer_id=planned.peer_id,
                )
            prompts_hash, prompts_grad_hash = tensor_hash(hop.prompts), tensor_hash(rows)
        self._check(
            planned,
            hop.channel,
            receipt,
            cost,
            sent=grad,
            received=out,
            step=BACKWARD_STEP,
            session_id=hop.session_id,
            sketch_hash=backward_sketch(
                out,
                mask_hash=mask_hash(mask, grad.shape[1]),
                prompts_hash=prompts_hash,
                prompts_grad_hash=prompts_grad_hash,
            ).hash(),
            previous=previous,
        )
        self.spent.backward_wei += cost
        self.spent.backward_tokens += tokens
        return out, tensor_hash(out), (grad_prompts[0] if grad_prompts else None)

    # --- paying, checking ------------------------------------------------------------------

    def _channel(self, planned: RouteHop, tokens: int) -> ClientChannel:
        parts = self._parts
        channel = parts.payments.channel(
            planned.address, price_per_token=self._price(planned), session_tokens=tokens
        )
        self._room(channel, planned, tokens * self._price(planned), tokens)
        return channel

    @staticmethod
    def _price(planned: RouteHop) -> int:
        """Wei per token of a forward and its backward on the hop."""
        return planned.price_per_token + planned.info.backward_price_per_token

    def _room(self, channel: ClientChannel, planned: RouteHop, cost: int, tokens: int) -> None:
        self._parts.payments.ensure_room(
            channel, cost, price_per_token=self._price(planned), session_tokens=tokens
        )

    def _paid_call(
        self,
        planned: RouteHop,
        channel: ClientChannel,
        cost: int,
        call: Callable[[Voucher], tuple[torch.Tensor, SignedReceipt]],
        what: str,
    ) -> tuple[torch.Tensor, SignedReceipt]:
        """Pay `cost` on `channel` and make the call; a refused voucher is taken back, one the
        server kept counts as spent. `ServerFailure` when the server fails or refuses,
        `PaymentRefusedError` when it refuses the payment, `SessionStateError` when it says
        the request is wrong."""
        parts = self._parts
        previous_voucher = channel.voucher
        voucher = parts.payments.pay(channel, cost)
        try:
            return call(voucher)
        except RemoteError as exc:
            parts.registry.forget(planned.peer_id)
            if exc.spent:
                self._spent_for_nothing(what, cost)
            else:
                parts.payments.refused(channel, voucher, previous_voucher)
            if exc.code in PAYMENT_CODES:
                raise PaymentRefusedError(
                    f"server {planned.address} refused our payment on channel "
                    f"{channel.channel_id}: {exc.code.value}: {exc.message}",
                    code=exc.code.value,
                    server=planned.address,
                ) from exc
            if exc.code is ErrorCode.LENGTH_EXCEEDED:  # our batch is over its cap
                raise SessionStateError(
                    f"server {planned.address} refused the {what}: {exc.message}; train on "
                    "smaller batches"
                ) from exc
            if not exc.fatal and exc.code in REQUEST_CODES:
                raise SessionStateError(
                    f"server {planned.address} refused the {what}: {exc}"
                ) from exc
            raise ServerFailure(
                f"{planned.peer_id} failed a training {what}: {exc}",
                peer_id=planned.peer_id,
                ban=exc.code not in NO_BLAME_CODES | FORWARD_LOST_CODES,
            ) from exc
        except UnreachableError as exc:  # nothing was sent: the voucher is ours again
            parts.payments.refused(channel, voucher, previous_voucher)
            raise ServerFailure(
                f"{planned.peer_id} failed a training {what}: {exc}", peer_id=planned.peer_id
            ) from exc
        except KeyboardInterrupt:
            self._spent_for_nothing(what, cost)
            raise
        except (RemoteUnavailableError, ProtocolError, TimeoutError) as exc:
            # no answer (the stream broke, or the server is gone): it may hold the voucher.
            # Not avoided yet: the call is tried once more, on whichever route is best
            self._spent_for_nothing(what, cost)
            raise ServerFailure(
                f"{planned.peer_id} failed a training {what}: {exc}",
                peer_id=planned.peer_id,
                ban=False,
            ) from exc

    def _spent_for_nothing(self, what: str, cost: int) -> None:
        if what == "forward":
            self.spent.forward_wei += cost
        else:
            self.spent.backward_wei += cost

    def _check(
        self,
        planned: RouteHop,
        channel: ClientChannel,
        receipt: SignedReceipt,
        cost: int,
        *,
        sent: torch.Tensor,
        received: torch.Tensor,
        step: int,
        session_id: bytes,
        sketch_hash: bytes,
        previous: bytes | None,
    ) -> None:
        """Check and keep the receipt of one call (`ServerFailure` for a wrong answer,
        `BadReceiptError` for a bad receipt)."""
        parts = self._parts
        if received.shape != sent.shape or received.dtype != sent.dtype:
            raise ServerFailure(
                f"{planned.peer_id} returned {list(received.shape)} {received.dtype} for "
                f"{list(sent.shape)} {sent.dtype}",
                peer_id=planned.peer_id,
            )
        expected = ExpectedLeaf(
            signer=planned.address,
            session_id=session_id,
            model_id=parts.model_id,
            span=(planned.start, planned.end),
            step=step,
            tokens=sent.shape[0] * sent.shape[1],
            input_hash=tensor_hash(sent),
            output_hash=tensor_hash(received),
            sketch_hash=sketch_hash,
            received_at=int(parts.payments.clock.now()),
            previous_output_hash=previous,
        )
        check_and_keep(
            parts,
            receipt,
            expected,
            peer_id=planned.peer_id,
            channel_id=channel.channel_id,
            cost=cost,
            output=received,
            what=f"a training {'backward' if step == BACKWARD_STEP else 'forward'}",
        )
        parts.router.succeeded(planned.peer_id)


class _ThroughSwarm(torch.autograd.Function):
    """The remote blocks as one differentiable function of the hidden states."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        prompts: torch.Tensor | None,
        mask: torch.Tensor,
        route: TrainingRoute,
    ) -> torch.Tensor:
        out, hops = route.forward(hidden, mask, prompts)
        ctx.route, ctx.hops, ctx.mask, ctx.dtype = route, hops, mask, hidden.dtype
        ctx.prompts_dtype = None if prompts is None else prompts.dtype
        return out.to(hidden.dtype)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, None, None]:
        grad, grad_prompts = ctx.route.backward(ctx.hops, ctx.mask, grad_output)
        if grad_prompts is not None:
            grad_prompts = grad_prompts.to(ctx.prompts_dtype)
        return grad.to(ctx.dtype), grad_prompts, None, None


def remote_blocks(
    hidden: torch.Tensor,
    mask: torch.Tensor,
    route: TrainingRoute,
    prompts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Every block of the model on `hidden` [batch, tokens, hidden_size] with `mask` [batch,
    tokens] (0/1), through the swarm, differentiable with respect to `hidden` and to the deep
    `prompts` [blocks, P, hidden_size] if given (row i added to the first P positions before
    block i)."""
    out: torch.Tensor = _ThroughSwarm.apply(hidden, prompts, mask.to(torch.long), route)
    return out
