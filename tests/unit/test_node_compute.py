"""The node's compute thread: inference steps run before queued stateless forwards."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import torch

from node.compute import Priority, PriorityExecutor, submit_forward


def _blocked(executor: PriorityExecutor) -> tuple[threading.Event, Future[None]]:
    """Occupy the one worker until the returned event is set."""
    release, started = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(10)

    future = executor.submit(hold)
    assert started.wait(10)
    return release, future


def test_inference_steps_run_before_queued_forwards_fifo_within_a_priority() -> None:
    executor = PriorityExecutor("test-compute")
    ran: list[str] = []
    weights = torch.randn(64, 64)

    def work(name: str) -> torch.Tensor:
        ran.append(name)
        return torch.randn(8, 64) @ weights  # real torch work on the compute thread

    try:
        release, held = _blocked(executor)
        futures = [
            submit_forward(executor, lambda: work("forward-1")),
            executor.submit(work, "step-1"),
            submit_forward(executor, lambda: work("forward-2")),
            executor.submit_at(Priority.INFERENCE, work, "step-2"),
            executor.submit(work, "step-3"),
        ]
        release.set()
        held.result(10)
        outputs = [future.result(10) for future in futures]
    finally:
        executor.shutdown()
    assert ran == ["step-1", "step-2", "step-3", "forward-1", "forward-2"]
    assert all(output.shape == (8, 64) for output in outputs)


def test_one_thread_serializes_all_work() -> None:
    executor = PriorityExecutor("test-compute")
    try:
        names = {
            executor.submit(lambda: threading.current_thread().name).result(10),
            submit_forward(executor, lambda: threading.current_thread().name).result(10),
        }
    finally:
        executor.shutdown()
    assert names == {"test-compute"}


def test_a_failing_task_reaches_its_caller_and_the_worker_goes_on() -> None:
    executor = PriorityExecutor("test-compute")

    def fail() -> None:
        raise ValueError("bad tensor")

    try:
        with pytest.raises(ValueError, match="bad tensor"):
            executor.submit(fail).result(10)
        assert executor.submit(lambda: 7).result(10) == 7
    finally:
        executor.shutdown()


def test_shutdown_runs_queued_work_then_refuses_more() -> None:
    executor = PriorityExecutor("test-compute")
    release, _ = _blocked(executor)
    queued = submit_forward(executor, lambda: "done")
    release.set()
    executor.shutdown(wait=True)
    assert queued.result(0) == "done"
    with pytest.raises(RuntimeError, match="shutdown"):
        executor.submit(lambda: None)


def test_shutdown_can_cancel_queued_work() -> None:
    executor = PriorityExecutor("test-compute")
    release, _ = _blocked(executor)
    queued = submit_forward(executor, lambda: "never")
    executor.shutdown(wait=False, cancel_futures=True)
    release.set()
    assert queued.cancelled()


def test_a_plain_executor_still_runs_forwards() -> None:
    with ThreadPoolExecutor(1) as executor:
        assert submit_forward(executor, lambda: 3).result(10) == 3
