"""`PriorityExecutor`: the node's one compute thread, with inference steps ahead of forwards.

Torch work runs serialized on one thread (a second one would only contend for the same cores
and memory). A plain one-thread pool is FIFO: one long stateless forward queued before a
decode step makes that step, and every interactive session behind it, wait for the whole
forward. Here every task carries a priority (`Priority`); the worker always takes the queued
task with the lowest priority value, first-in first-out within a priority. A task already
running is never interrupted, so an inference step waits at most for the one task in progress
(forwards are bounded by `NodeConfig.max_forward_tokens`). This is Petals' task prioritizer
reduced to the two kinds of work a node does.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class Priority(enum.IntEnum):
    """What a compute task is for; lower runs first."""

    INFERENCE = 0  # a step of an inference session: a client waits on it token by token
    FORWARD = 1  # a stateless forward: one request, possibly long, nobody streams from it


class PriorityExecutor(Executor):
    """One worker thread that runs queued tasks by `Priority`, FIFO within a priority.

    `submit` queues at `Priority.INFERENCE` (what the inference handler submits);
    `submit_at` takes the priority explicitly.
    """

    def __init__(self, thread_name: str = "compute") -> None:
        # (priority, sequence number, future, call): the sequence number keeps FIFO order
        # within a priority and keeps heapq from ever comparing futures
        self._queue: list[tuple[int, int, Future[Any], Callable[[], Any]]] = []
        self._sequence = itertools.count()
        self._condition = threading.Condition()
        self._shutdown = False
        self._thread = threading.Thread(target=self._work, name=thread_name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return self.submit_at(Priority.INFERENCE, fn, *args, **kwargs)

    def submit_at(
        self, priority: Priority, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> Future[T]:
        """Queue `fn(*args, **kwargs)` at `priority`; its future holds the result."""
        future: Future[T] = Future()
        with self._condition:
            if self._shutdown:
                raise RuntimeError("cannot schedule new work after shutdown")
            entry = (int(priority), next(self._sequence), future, lambda: fn(*args, **kwargs))
            heapq.heappush(self._queue, entry)
            self._condition.notify()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._condition:
            self._shutdown = True
            if cancel_futures:
                for _, _, future, _ in self._queue:
                    future.cancel()
                self._queue.clear()
            self._condition.notify()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._shutdown:
                    self._condition.wait()
                if not self._queue:
                    return  # shut down and drained
                _, _, future, call = heapq.heappop(self._queue)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = call()
            except BaseException as exc:  # the caller sees it through the future
                future.set_exception(exc)
            else:
                future.set_result(result)


def submit_forward(executor: Executor, fn: Callable[[], T]) -> Future[T]:
    """Queue a stateless forward's compute behind any queued inference step (on a plain
    executor, such as a test's thread pool, in its own order)."""
    if isinstance(executor, PriorityExecutor):
        return executor.submit_at(Priority.FORWARD, fn)
    return executor.submit(fn)
