"""Helper processes that parse annotation XML beside the process reading the archive.

A box archive is one gzip stream, so reading it is serial, but parsing the XML (about two thirds
of the work) is not: the reader (:func:`ilsvrc_assets.bounding_boxes._read`) sends full batches of
members to helper processes while it keeps reading, and parses a batch itself whenever the
helpers are busy, so every core stays busy. Small archives (under one batch) never start a
helper. A helper that cannot start or dies is replaced by parsing in the main process.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ilsvrc_assets.box_xml import Box, parse_annotation_values

_QUEUED_PER_HELPER = 2  # batches a helper may have waiting; beyond that the main process parses
_MAX_WORKERS = 4  # past this the serial reading of the stream is the limit

Parsed = list[tuple[float, float, tuple[Box, ...]]]


def parse_batch(batch: list[tuple[str, bytes]]) -> Parsed:
    """(width, height, objects) of each (where, XML bytes); runs in a helper process or in place."""
    parsed = []
    for where, data in batch:
        width, height, _, objects = parse_annotation_values(data, where)
        # A tuple, not the list: tuples of numbers and strings drop out of the garbage
        # collector's tracking, lists never do.
        parsed.append((width, height, tuple(objects)))
    return parsed


def _ready() -> bool:
    """A helper's first task: unpickling it imports this module, so the helper is then ready."""
    return True


class Helpers:
    """Helper processes for :func:`parse_batch`, started on first use."""

    def __init__(self, workers: int | None) -> None:
        self.size = (min(os.cpu_count() or 1, _MAX_WORKERS) if workers is None else max(1, workers)) - 1
        self.pool: ProcessPoolExecutor | None = None
        self.warm_up: list[Future] = []

    @property
    def max_pending(self) -> int:
        """Batches that may wait for the helpers; past that the caller parses the next one itself."""
        return self.size * _QUEUED_PER_HELPER

    def submit(self, batch: list[tuple[str, bytes]]) -> Future | None:
        """The batch's future, or None when no helper is ready (the caller parses it)."""
        if self.size <= 0:
            return None
        try:
            if self.pool is None:
                # spawn, not fork: forking a process that runs threads (as Dagster does) can
                # deadlock. gc.disable: see collector.gc_paused.
                context = multiprocessing.get_context("spawn")
                self.pool = ProcessPoolExecutor(self.size, mp_context=context, initializer=gc.disable)
                # A helper takes about a second to start and import pandas and lxml; batches
                # queued before that would keep the main process waiting at the end, so it
                # parses everything itself until the helpers are ready.
                self.warm_up = [self.pool.submit(_ready) for _ in range(self.size)]
            if not all(f.done() for f in self.warm_up):
                return None
            if self.warm_up:
                for future in self.warm_up:
                    future.result()  # a helper that could not start raises BrokenProcessPool
                self.warm_up = []
            return self.pool.submit(parse_batch, batch)
        except Exception:  # e.g. a daemonic process may not start children: parse in place
            self.size = 0
            return None

    def outcome(self, future: Future, batch: list[tuple[str, bytes]]) -> Parsed:
        """A submitted batch's result; parsed here if the helper died (killed, or could not start)."""
        try:
            return future.result()
        except BrokenProcessPool:
            self.size = 0
            return parse_batch(batch)

    def __enter__(self) -> Helpers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
