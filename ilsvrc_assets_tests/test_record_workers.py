"""The record workers: a pool the caller holds, started eagerly, torn down on leaving, never hanging an exit."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

from ilsvrc_assets.record_workers import RecordWorkers, failure_text


def _worker_state() -> tuple[str | None, bool]:
    return os.environ.get("CUDA_VISIBLE_DEVICES"), "tensorflow" in sys.modules


def _children() -> set[int]:
    return {p.pid for p in multiprocessing.active_children()}


def test_entering_starts_every_worker_and_leaving_reaps_them() -> None:
    before = _children()
    with RecordWorkers(2) as workers:
        started = _children() - before
        assert len(started) == 2  # at once, before any task: they load TensorFlow meanwhile
        assert workers.ready() <= started
        # worker_init ran first: GPUs hidden, TensorFlow loaded.
        assert workers.submit(_worker_state).result() == ("-1", True)
    assert _children() & started == set()


def test_a_lazy_pool_starts_with_its_first_task() -> None:
    before = _children()
    with RecordWorkers(1, eager=False) as workers:
        assert _children() == before
        pid = workers.submit(os.getpid).result()
        assert pid != os.getpid() and pid in _children()
    assert pid not in _children()


def test_one_pool_serves_many_calls_and_finish_cancels_what_has_not_started() -> None:
    with RecordWorkers(1) as workers:
        [pid] = workers.ready()
        futures = [workers.submit(time.sleep, 0.2) for _ in range(6)]
        workers.finish(futures)
        assert all(f.done() for f in futures)
        assert sum(f.cancelled() for f in futures) >= 3  # one running, at most one queued
        # The same process serves the next call: TensorFlow is not loaded again.
        assert workers.submit(os.getpid).result() == pid


def test_a_dead_worker_is_reported_and_the_next_call_gets_a_fresh_pool() -> None:
    with RecordWorkers(1) as workers:
        [pid] = workers.ready()
        with pytest.raises(BrokenProcessPool) as caught:
            workers.submit(os._exit, 9).result()
        assert failure_text(caught.value).startswith("a record worker process died")
        assert "ILSVRC_WORKERS" in failure_text(caught.value)
        assert workers.submit(os.getpid).result() not in (pid, os.getpid())
    assert failure_text(ValueError("bad")) == "ValueError: bad"


def _leave_workers_open() -> None:
    """In a process started by multiprocessing: a pool used and never closed (as when a step is
    interrupted before its resources are torn down)."""
    workers = RecordWorkers(1).__enter__()
    assert workers.submit(os.getpid).result() != os.getpid()


def test_a_process_started_by_multiprocessing_exits_though_its_workers_were_not_closed() -> None:
    # Dagster's step processes are started by multiprocessing, which at exit waits for the
    # process's children before the executor's own exit hook would stop them.
    child = multiprocessing.get_context("spawn").Process(target=_leave_workers_open)
    child.start()
    child.join(180)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung and child.exitcode == 0, "the process did not exit (waiting for its idle workers)"
