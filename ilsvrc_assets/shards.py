"""Writing the shards of a plan, in any record format, with the caller's record workers.

A shard plan (``shard_plan``) says which images go into which shard; a record format
(``ilsvrc_assets.formats``) says what a shard file is. :func:`write_shard` writes one shard in a
worker process straight from the uncompressed archive (one seek and one read per image), through a
temporary file renamed into place only when complete; :func:`write_shards` writes many with the
caller's :class:`~ilsvrc_assets.record_workers.RecordWorkers`. Nothing here depends on the format.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, as_completed
from pathlib import Path

from ilsvrc_assets import fileio, images
from ilsvrc_assets.formats import RecordFormat
from ilsvrc_assets.record_workers import RecordWorkers, failure_text
from ilsvrc_assets.shard_plan import RecordSource, ShardJob, ShardStats


class ShardError(Exception):
    """Writing a shard failed; the message names the shard, and the archive and member if one was at fault."""


def write_shard(job: ShardJob, record_format: RecordFormat) -> ShardStats:
    """Write one shard of a plan in ``record_format``: read each image from the archive, prepare it
    (``images.prepare``), hand it to the format's writer. Runs in a record worker.

    The file is written under a temporary name beside ``job.path`` and renamed into place only
    when complete; on any error the temporary file is removed and a :class:`ShardError` naming
    the shard (and the archive and member at fault) is raised. A job without records writes the
    format's empty shard. With ``job.lock`` set, the shard is written under that lock, and
    refused (naming the other run) while another run is writing it.
    """
    if job.lock is None:
        return _write_shard(job, record_format)
    try:
        with fileio.exclusive(job.lock, f"shard {job.name}"):
            return _write_shard(job, record_format)
    except fileio.BusyError as e:  # another run is writing this very shard
        raise ShardError(f"{job.name}: {e}") from None


def _write_shard(job: ShardJob, record_format: RecordFormat) -> ShardStats:
    archive = Path(job.archive)
    path = Path(job.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = fileio.temp_path_for(path)
    converted: list[str] = []
    current: RecordSource | None = None
    try:
        try:
            source_file = open(archive, "rb")
        except OSError as e:
            raise ShardError(f"{job.name}: cannot open the archive {archive} ({e})") from e
        with source_file, record_format.open(tmp) as writer:
            for current in job.records:
                where = f"{archive.name} member {current.filename}"
                source_file.seek(current.offset)
                data = source_file.read(current.size)
                if len(data) != current.size:
                    raise ShardError(
                        f"{job.name}: {where} is cut short ({len(data)} of {current.size} bytes at offset "
                        f"{current.offset}); the archive is truncated or the image index is stale"
                    )
                stored, info = images.prepare(data, where)
                if stored is not data:  # prepare returns unchanged images as the same object
                    converted.append(current.filename)
                writer.add(current, stored, info)
        current = None  # what fails from here on is the shard file, not a member
        # The shard was just written, so this read is served from the page cache.
        md5 = fileio.md5_file(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, ShardError) or not isinstance(e, Exception):
            raise
        if isinstance(e, images.ImageError):
            raise ShardError(f"{job.name}: {e}") from e  # the message already names archive and member
        # A format's writer may report a full disk as its own error type (TensorFlow's does), with the OS's words.
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e):
            raise ShardError(f"{job.name}: {fileio.disk_full(path)}") from e
        member = f"{archive.name} member {current.filename}" if current is not None else archive.name
        raise ShardError(f"{job.name}: writing {member} failed ({type(e).__name__}: {e})") from e
    return ShardStats(
        name=job.name, path=path, records=len(job.records), bytes=size, md5=md5, converted=tuple(converted)
    )


def write_shards(
    jobs: Sequence[ShardJob],
    record_format: RecordFormat,
    workers: RecordWorkers,
    on_done: Callable[[ShardStats], None] | None = None,
) -> list[ShardStats]:
    """Write many shards in ``record_format`` with the caller's ``workers``; return their stats in job order.

    Each worker loads TensorFlow once and writes many shards; the calling process never imports it.
    ``on_done(stats)`` is called in this process as each shard finishes. On the first failure
    the shards not yet started are cancelled, those already being written are let finish (and
    reported to ``on_done``, so their work is kept), and the failure is raised as a
    :class:`ShardError` naming the shard.
    """
    if not jobs:
        return []
    for folder in sorted({Path(job.path).parent for job in jobs}):
        here = [job for job in jobs if Path(job.path).parent == folder]
        fileio.require_free_space(
            folder,
            sum(record_format.space_needed(job) for job in here),
            len(here),
            f"writing {len(here)} shard{'s' if len(here) > 1 else ''} ({here[0].name} ...)",
        )
    results: list[ShardStats | None] = [None] * len(jobs)
    failure: BaseException | None = None
    index_of: dict[Future[ShardStats], int] = {}
    try:
        for i, job in enumerate(jobs):
            index_of[workers.submit(write_shard, job, record_format)] = i
        # as_completed waits on each future once; wait(FIRST_COMPLETED) in a loop would hook
        # every pending future again on each pass, O(shards^2) work in this process.
        for future in as_completed(index_of):
            if future.cancelled():
                continue
            job = jobs[index_of[future]]
            error = future.exception()
            if error is None:
                stats = future.result()
                results[index_of[future]] = stats
                try:
                    if on_done is not None:
                        on_done(stats)
                except Exception as e:
                    error = e
            if error is not None and failure is None:
                failure = error if isinstance(error, ShardError) else _named(job, error)
                for other in index_of:
                    other.cancel()  # only shards not yet started can be cancelled
    finally:
        workers.finish(index_of)
    if failure is not None:
        raise failure
    return [r for r in results if r is not None]


def _named(job: ShardJob, error: BaseException) -> ShardError:
    # E.g. a worker killed by the OOM killer (BrokenProcessPool) or an exception from on_done.
    named = ShardError(f"{job.name}: {failure_text(error)}")
    named.__cause__ = error
    return named
