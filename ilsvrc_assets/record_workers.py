"""The worker processes that write and read records, held by the caller for as long as it needs them.

    with RecordWorkers(settings.workers) as workers:     # the workers start loading TensorFlow now
        ...                                              # the caller plans meanwhile
        shards.write_shards(jobs, tfrecord.FORMAT, workers)
        manifest.build(..., workers=workers)             # the same processes, TensorFlow already loaded

The pool's lifetime is the ``with`` block: a Dagster step opens one for itself (the
``record_workers`` resource), ``ilsvrc-assets build`` opens one around all of its runs, so the
training shards, the validation shards and the read-back share workers that load TensorFlow once.
Nothing is kept in module globals.

TensorFlow is loaded only in the workers (it is not fork-safe, hence the spawn start method, and the
Dagster process must not load it).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Self, TypeVar

from ilsvrc_assets.settings import ENV_WORKERS

T = TypeVar("T")


def worker_init() -> None:
    """Initializer of the spawn-context worker processes that write or read records.

    Runs before the worker first imports TensorFlow, so the environment set here applies to it.
    """
    # The work is CPU-only (protobufs, CRCs, JPEG decoding). Hiding GPUs keeps each of the N
    # workers from initialising CUDA and reserving most of a GPU's memory, as TF does by default.
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    # TF's C++ log lines (start-up notices, per-op warnings on damaged records, which the scan
    # reports itself) would repeat once per worker; errors still surface as Python exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Some start-up lines are written before TF's logging reads that setting: import TF once here
    # with stderr pointed at /dev/null, then restore it.
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        # Nor its Python warnings (a deprecation notice for the record iterator, once per worker).
        tf.get_logger().setLevel("ERROR")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class RecordWorkers:
    """A pool of ``processes`` spawn-context worker processes (:func:`worker_init`), as a context manager.

    Entering starts every worker at once (``eager``, the default), so each loads TensorFlow (a few
    seconds) while the caller does other work; otherwise they start with the first task. Leaving
    shuts the pool down and waits for the workers to exit. Tasks come from :meth:`submit`; a call
    that submits several ends with :meth:`finish`.

    A worker that dies (the OOM killer, a signal) breaks the pool: the tasks it held fail with
    ``BrokenProcessPool`` (:func:`failure_text` says what happened and what to do), and the next
    :meth:`submit` starts a fresh pool, so one failed call does not fail every later one.
    """

    def __init__(self, processes: int, eager: bool = True):
        self.processes = max(1, processes)
        self.eager = eager
        self._executor: ProcessPoolExecutor | None = None
        self._shutdown: multiprocessing.util.Finalize | None = None

    def __enter__(self) -> Self:
        if self.eager:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the workers now (each takes one short task, so each process is spawned at once)."""
        if self._executor is None:
            self._executor = self._new_executor()
            for _ in range(self.processes):
                self._executor.submit(_started, 0.0)

    def ready(self) -> set[int]:
        """Start the workers if needed and wait until they are up, TensorFlow loaded; their pids.

        Each worker is sent a task that lasts long enough for every worker to take one, as timing
        the work alone (the benchmark) needs.
        """
        self.start()
        return {f.result() for f in [self.submit(_started, 0.5) for _ in range(self.processes)]}

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        """Run ``fn(*args)`` in a worker (``fn`` and ``args`` picklable); starts the pool if needed."""
        if self._executor is None:
            self._executor = self._new_executor()
        try:
            return self._executor.submit(fn, *args)
        except BrokenProcessPool:  # a worker died in an earlier call: start afresh
            self._close_executor(wait=False)
            self._executor = self._new_executor()
            return self._executor.submit(fn, *args)

    @staticmethod
    def finish(futures: Iterable[Future[Any]]) -> None:
        """The end of a call, also when it stops early or fails: cancel the tasks not yet started
        and wait for the running ones (whose work, e.g. a shard being written, is let complete)."""
        futures = list(futures)
        for future in futures:
            future.cancel()
        wait(futures)

    def close(self) -> None:
        """Shut the pool down and wait for the workers to exit (also reached by leaving ``with``)."""
        self._close_executor(wait=True)

    def _new_executor(self) -> ProcessPoolExecutor:
        executor = ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=worker_init,
        )
        # Also shut down before multiprocessing, at exit, waits for this process's children, in
        # case the pool is never closed (a step interrupted before its resources are torn down):
        # in a process that multiprocessing started (Dagster's step processes) that wait comes
        # before the executor's own exit hook, and idle workers would be waited for forever.
        self._shutdown = multiprocessing.util.Finalize(
            executor, executor.shutdown, kwargs={"wait": True, "cancel_futures": True}, exitpriority=100
        )
        return executor

    def _close_executor(self, wait: bool) -> None:
        executor, shutdown = self._executor, self._shutdown
        if executor is None or shutdown is None:
            return
        self._executor = self._shutdown = None
        if wait:
            shutdown()  # runs once, and is no longer among the exit hooks
        else:  # a broken pool: its workers are gone or going, its tasks already failed
            shutdown.cancel()
            executor.shutdown(wait=False)

    def __repr__(self) -> str:
        state = "running" if self._executor is not None else "not started"
        return f"RecordWorkers({self.processes}, {state})"


def failure_text(error: BaseException) -> str:
    """What an exception from a worker means, in words that say what to do for a dead worker."""
    if isinstance(error, BrokenProcessPool):
        return (
            "a record worker process died (killed by the OOM killer or a signal?); run again with "
            f"fewer workers ({ENV_WORKERS}) or more memory"
        )
    return f"{type(error).__name__}: {error}"


def _started(pause: float) -> int:
    time.sleep(pause)
    return os.getpid()
