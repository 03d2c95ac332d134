"""`Engine`: the gateway's requests as generations through the swarm, each in a thread of its
own, each with an inference session of its own, each costed exactly.

- One `DistributedModelForCausalLM` per slot (`max_concurrent`), all sharing one paying client
  (its wallet, channels and router) and the local ends: a model keeps the session it is
  stepping, so two requests never share one. The client steps one session at a time over all
  of them (its `step_lock`), so concurrent requests interleave their steps.
- A slot is taken when a request is admitted (`slot`, never waiting: 429 when none is free)
  and given back when its generation thread has finished and the request was settled.
- Decoding is transformers' `generate` (greedy for temperature 0, the same as
  `DistributedModelForCausalLM.generate`); sampling draws from a generator of the request's
  own (`SeededSampler`), so a `seed` reproduces under concurrency too.
- The text of each choice is decoded as tokens arrive (`Choices`): deltas never end inside a
  UTF-8 character or inside what may become a stop sequence; a stop sequence cuts the text
  before it and ends that choice.
- A request's cost is what its session's vouchers came to (`session_cost`: the sum over the
  servers it paid, including steps paid for and never answered). Generation stops before a
  step that would take it past its reservation and what its key has beyond its reservations
  (`gateway.keys.within_reservation`: only a failover's replay gets it past the reservation),
  when every choice has finished, or when the request is cancelled (the client disconnected):
  at most the step in progress is still paid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from client.errors import (
    BudgetExceededError,
    ClientError,
    NoRouteError,
    PaymentError,
    PaymentRefusedError,
)
from gateway.errors import GatewayError, SwarmUnavailable, TooManyRequests
from gateway.keys import within_reservation
from gateway.openai_types import Decoding
from node.routing import route_price

if TYPE_CHECKING:
    from client.model import DistributedModelForCausalLM
    from client.session import InferenceSession

logger = logging.getLogger(__name__)


# --- what a generation tells the request ------------------------------------------------------


@dataclass(frozen=True)
class Delta:
    """New text of one choice."""

    index: int
    text: str


@dataclass(frozen=True)
class Finished:
    """A choice ended: `stop` (end of text or a stop sequence) or `length`."""

    index: int
    reason: str


@dataclass(frozen=True)
class Done:
    """The generation ended; the request was settled at `cost` base units."""

    prompt_tokens: int
    completion_tokens: int
    cost: int


@dataclass(frozen=True)
class Failed:
    """The generation failed: what to answer."""

    error: GatewayError
    cost: int  # what was paid before it failed (the key is charged it)


Event = Delta | Finished | Done | Failed


def session_cost(session: InferenceSession) -> int:
    """Base units the vouchers of `session` came to, over every server it paid."""
    return sum(served.cost for served in session.served.values())


# --- decoding -----------------------------------------------------------------------------------


class SeededSampler(LogitsProcessor):
    """Temperature and nucleus sampling from a generator of the request's own: it leaves only
    the drawn token finite, so greedy search takes it."""

    def __init__(self, temperature: float, top_p: float, generator: torch.Generator) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self.generator = generator

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # scores: [batch, vocab]
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            ordered, order = torch.sort(logits, descending=True, dim=-1)
            mass = ordered.softmax(dim=-1).cumsum(dim=-1)
            drop = mass - ordered.softmax(dim=-1) >= self.top_p  # the likeliest always stays
            logits = logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
        probs = logits.softmax(dim=-1)
        drawn = torch.multinomial(probs.cpu(), 1, generator=self.generator)  # [batch, 1]
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, drawn.to(scores.device), 0.0)  # type: ignore[return-value]


class Choices:
    """The text of each choice as tokens arrive (see the module doc); emits `Delta` and
    `Finished` through `emit`. Used from the generation thread only."""

    def __init__(
        self,
        n: int,
        tokenizer: Any,
        *,
        stop: Sequence[str],
        eos: set[int],
        emit: Callable[[Event], None],
    ) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.eos = eos
        self.emit = emit
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.counted = [0] * n  # tokens generated for each choice (its end-of-text included)
        self.sent = [0] * n  # characters of each choice's text emitted so far
        self.finish: list[str | None] = [None] * n

    @property
    def finished(self) -> list[bool]:
        return [reason is not None for reason in self.finish]

    def put(self, step: list[int]) -> None:
        """One new token per choice."""
        for i, token in enumerate(step):
            if self.finish[i] is not None:
                continue
            self.counted[i] += 1
            if token in self.eos:
                self._end(i, self._text(i), "stop")
                continue
            self.tokens[i].append(token)
            text = self._text(i)
            cut = min((text.find(s) for s in self.stop if s in text), default=-1)
            if cut >= 0:
                self._end(i, text[:cut], "stop")
            else:
                self._send(i, text[: self._safe_end(text)])

    def end(self, reason: str = "length") -> None:
        """Generation ended: every choice still open ends with `reason`."""
        for i, finish in enumerate(self.finish):
            if finish is None:
                self._end(i, self._text(i), reason)

    def _text(self, i: int) -> str:
        return str(self.tokenizer.decode(self.tokens[i], skip_special_tokens=True))

    def _safe_end(self, text: str) -> int:
        end = len(text)
        while end and text[end - 1] == "\ufffd":  # a character still incomplete
            end -= 1
        held = 0  # what may be the start of a stop sequence waits for the next tokens
        for s in self.stop:
            for k in range(min(len(s) - 1, end), 0, -1):
                if text[:end].endswith(s[:k]):
                    held = max(held, k)
                    break
        return end - held

    def _send(self, i: int, text: str) -> None:
        if len(text) > self.sent[i]:
            self.emit(Delta(i, text[self.sent[i] :]))
            self.sent[i] = len(text)

    def _end(self, i: int, text: str, reason: str) -> None:
        self._send(i, text)
        self.finish[i] = reason
        self.emit(Finished(i, reason))


class _Streamer:
    """transformers' streamer protocol: the prompt first (skipped), then a token per row."""

    def __init__(self, choices: Choices) -> None:
        self.choices = choices
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.choices.put([int(t) for t in value.reshape(-1).tolist()])

    def end(self) -> None:
        pass


class _Stopper(StoppingCriteria):
    """Ends each finished choice; ends them all when cancelled or when the next step would pass
    the reservation."""

    def __init__(self, run: Generation, session: InferenceSession, choices: Choices) -> None:
        self.run = run
        self.session = session
        self.choices = choices

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> Any:
        batch = input_ids.shape[0]
        next_step = batch * route_price(self.session.route)
        spent = session_cost(self.session)
        if self.run.cancel.is_set():
            logger.info("generation cancelled after %d base units", spent)
            return torch.ones(batch, dtype=torch.bool, device=input_ids.device)
        if not within_reservation(
            spent=spent, next_step=next_step, reserved=self.run.reserved
        ) and not within_reservation(
            spent=spent, next_step=next_step, reserved=self.run.reserved + self.run.headroom()
        ):
            logger.warning(
                "generation stopped at its reservation: %d spent, next step %d, reserved %d",
                spent,
                next_step,
                self.run.reserved,
            )
            return torch.ones(batch, dtype=torch.bool, device=input_ids.device)
        return torch.tensor(self.choices.finished, dtype=torch.bool, device=input_ids.device)


# --- one request's generation ---------------------------------------------------------------------


@dataclass(eq=False)  # compared (and hashed) by identity
class Generation:
    """One request running (or about to): its inputs, where its events go, and its end."""

    input_ids: torch.Tensor  # [1, prompt tokens]
    decoding: Decoding
    max_new_tokens: int
    reserved: int  # base units it may spend (its key's reservation)
    headroom: Callable[[], int]  # base units its key has beyond every reservation, now
    loop: asyncio.AbstractEventLoop  # the event loop its events are handed to
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)  # stop after this step
    done: threading.Event = field(default_factory=threading.Event)  # settled, slot given back

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def emit(self, event: Event) -> None:
        """Hand `event` to the request's event loop (from the generation thread)."""
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens any more
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    async def next_event(self) -> Event:
        return await self.events.get()


Settle = Callable[[int, int, int], None]  # (cost, prompt tokens, completion tokens)


class Engine:
    """Generations through the swarm for the gateway's requests (see the module doc)."""

    def __init__(
        self, models: Sequence[DistributedModelForCausalLM], tokenizer: Any, *, context: int
    ) -> None:
        if not models:
            raise ValueError("the engine needs a model per slot")
        self.tokenizer = tokenizer
        self.context = context  # positions the model takes: prompt plus generated tokens
        self.client = models[0].client
        self._models: queue.SimpleQueue[DistributedModelForCausalLM] = queue.SimpleQueue()
        for model in models:
            self._models.put(model)
        self._slots = threading.BoundedSemaphore(len(models))
        self._executor = ThreadPoolExecutor(len(models), thread_name_prefix="gateway-generate")
        self._running: set[Generation] = set()
        self._lock = threading.Lock()
        eos = models[0].generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos: set[int] = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)

    # --- admission ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def slot(self) -> Iterator[Callable[[], None]]:
        """A generation slot, or `TooManyRequests` at once. Yields `keep`: call it when a
        generation took the slot over (it gives it back when it ends); otherwise the slot is
        given back when the block ends."""
        if not self._slots.acquire(blocking=False):
            raise TooManyRequests(
                "every generation slot of this gateway is busy; retry in a moment"
            )
        kept = False

        def keep() -> None:
            nonlocal kept
            kept = True

        try:
            yield keep
        finally:
            if not kept:
                self._slots.release()

    def price(self) -> int:
        """Base units per token through the route the client would take now;
        `SwarmUnavailable` when there is none."""
        client = self.client
        try:
            with client.parts.step_lock:  # the router is the sessions' too
                hops = client.router.route(0, client.parts.total_blocks)
        except NoRouteError as exc:
            raise SwarmUnavailable(f"no route through the swarm: {exc}") from None
        return route_price(hops)

    # --- running ------------------------------------------------------------------------------

    def start(self, run: Generation, settle: Settle) -> None:
        """Run `run` in a thread of its own (its slot was taken with `slot`): events go to its
        queue; when it ends, `settle` is called with what it cost, then the slot is free."""
        with self._lock:
            self._running.add(run)
        self._executor.submit(self._run, run, settle)

    def _run(self, run: Generation, settle: Settle) -> None:
        model = self._models.get()
        cost = 0
        choices = Choices(
            run.decoding.n, self.tokenizer, stop=run.decoding.stop, eos=self.eos, emit=run.emit
        )
        failure: GatewayError | None = None
        try:
            length = run.prompt_tokens + run.max_new_tokens
            with model.inference_session(max_length=length, batch_size=run.decoding.n) as session:
                try:
                    self._generate(model, session, run, choices)
                except BudgetExceededError as exc:
                    failure = SwarmUnavailable(
                        f"the gateway's wallet budget is spent: {exc}", code="gateway_budget"
                    )
                except NoRouteError as exc:
                    failure = SwarmUnavailable(f"no route through the swarm: {exc}")
                except (PaymentError, PaymentRefusedError) as exc:
                    failure = SwarmUnavailable(
                        f"the gateway could not pay the swarm: {exc}", code="payment_failed"
                    )
                except ClientError as exc:
                    logger.warning("a generation failed: %s", exc)
                    failure = GatewayError(f"generation failed: {exc}")
                finally:
                    cost = session_cost(session)
        except Exception as exc:  # one request's failure never stops the gateway
            logger.exception("a generation failed")
            failure = GatewayError(f"generation failed: {exc}")
        finally:
            self._models.put(model)
            if failure is None:
                choices.end("length")
            completion = sum(choices.counted)
            try:
                settle(cost, run.prompt_tokens, completion)
            except Exception:
                logger.exception("settling a request of %d base units failed", cost)
            with self._lock:
                self._running.discard(run)
            self._slots.release()
            run.done.set()
            run.emit(
                Failed(failure, cost)
                if failure is not None
                else Done(run.prompt_tokens, completion, cost)
            )

    def _generate(
        self,
        model: DistributedModelForCausalLM,
        session: InferenceSession,
        run: Generation,
        choices: Choices,
    ) -> None:
        decoding = run.decoding
        ids = run.input_ids.repeat(decoding.n, 1)  # [n, prompt]
        processors = LogitsProcessorList()
        if decoding.temperature > 0:
            generator = torch.Generator()
            if decoding.seed is None:
                generator.seed()
            else:
                generator.manual_seed(decoding.seed)
            processors.append(SeededSampler(decoding.temperature, decoding.top_p, generator))
        pad = model.generation_config.pad_token_id
        if pad is None:
            pad = next(iter(self.eos), None)
        model.generate(
            ids,
            session=session,
            max_new_tokens=run.max_new_tokens,
            do_sample=False,
            logits_processor=processors,
            stopping_criteria=StoppingCriteriaList([_Stopper(run, session, choices)]),
            streamer=_Streamer(choices),
            pad_token_id=pad,
        )

    # --- stopping -------------------------------------------------------------------------------

    def cancel_all(self) -> None:
        """Stop every generation in flight after its current step (each is settled)."""
        with self._lock:
            running = list(self._running)
        for run in running:
            run.cancel.set()

    def close(self) -> None:
        """Cancel every generation in flight, wait for them to be settled, stop the threads."""
        self.cancel_all()
        self._executor.shutdown(wait=True)
