"""Planning which image goes into which shard, and writing the TFRecord shards.

The assignment is a pure function of the set of images and the seed (sort, shuffle, cut), so
every run puts every image in the same shard whatever order the archive lists them in. Shards
are written by a pool of worker processes straight from the uncompressed archive (one seek and
one read per image), each through a temporary file renamed into place only when complete.

TensorFlow is imported only inside :func:`write_shard`, which runs in the worker processes.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ilsvrc_assets import fileio, images, records, release
from ilsvrc_assets.progress import Progress
from ilsvrc_assets.records import RecordSource
from ilsvrc_assets.settings import Settings
from ilsvrc_assets.stage import Log, Made, quiet

if TYPE_CHECKING:
    from ilsvrc_assets.sources import ImageSource

T = TypeVar("T")

# Per-record bytes besides the image (TFRecord framing, the other 14 features), generously.
RECORD_OVERHEAD = 1024


class ShardError(Exception):
    """Writing a shard failed; the message names the shard, and the archive and member if one was at fault."""


def filename_sort_key(filename: str) -> tuple[str, int, str]:
    """Sort key for image file names: the number after the last ``_`` compares numerically.

    ``n01440764_9.JPEG`` sorts before ``n01440764_10.JPEG`` (the training numbers are not
    zero-padded). Names without such a number sort by their text, before numbered ones of the
    same prefix.
    """
    stem = filename.rsplit(".", 1)[0] if "." in filename else filename
    prefix, sep, number = stem.rpartition("_")
    if sep and number.isdigit():
        return prefix, int(number), filename
    return stem, -1, filename


def _default_key(image: Any) -> tuple[str, int, str]:
    # Plain file names, or anything with a ``filename`` attribute (e.g. RecordSource).
    return filename_sort_key(image if isinstance(image, str) else image.filename)


def assign_to_shards(
    images: Sequence[T],
    num_shards: int,
    seed: int = release.SHUFFLE_SEED,
    key: Callable[[T], Hashable] | None = None,
) -> list[list[T]]:
    """Split ``images`` into ``num_shards`` lists, deterministically and independently of input order.

    The images are sorted by ``key`` (default :func:`filename_sort_key` of the file name, or of
    the ``filename`` attribute), shuffled as a whole with ``random.Random(seed)``, and cut into
    contiguous pieces at ``floor(i * n / num_shards)``, so sizes differ by at most one (shards
    are empty when there are fewer images than shards). Two images with the same key would make
    the order depend on the input, so that raises ValueError.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, not {num_shards}")
    sort_key = key or _default_key
    keyed = sorted(((sort_key(image), i) for i, image in enumerate(images)), key=lambda pair: pair[0])
    for (a, _), (b, _) in zip(keyed, keyed[1:]):
        if a == b:
            raise ValueError(
                f"two images have the same sort key {a!r}; the shard assignment would depend on input order"
            )
    ordered = [images[i] for _, i in keyed]
    random.Random(seed).shuffle(ordered)
    n = len(ordered)
    bounds = [i * n // num_shards for i in range(num_shards + 1)]
    return [ordered[bounds[i] : bounds[i + 1]] for i in range(num_shards)]


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: its name, final path, the archive the images are read from, and the records in order."""

    name: str
    path: Path
    archive: Path
    records: tuple[RecordSource, ...]
    # Held while the shard is written, so two runs never write the same shard at once.
    lock: Path | None = None

    def space_needed(self) -> int:
        """Bytes the shard file will take, about: its images plus the record framing and features."""
        return sum(r.size for r in self.records) * 102 // 100 + RECORD_OVERHEAD * len(self.records)


@dataclass(frozen=True)
class ShardStats:
    """What writing a shard produced."""

    name: str
    path: Path
    records: int
    bytes: int
    md5: str
    converted: tuple[str, ...]  # file names re-encoded to RGB JPEG (PNG, CMYK)


def write_shard(job: ShardJob) -> ShardStats:
    """Write one shard: read each image from the archive, prepare it, encode it, write the TFRecord.

    The file is written under a temporary name beside ``job.path`` and renamed into place only
    when complete; on any error the temporary file is removed and a :class:`ShardError` naming
    the shard (and the archive and member at fault) is raised. A job without records writes an
    empty, valid TFRecord file. With ``job.lock`` set, the shard is written under that lock, and
    refused (naming the other run) while another run is writing it.
    """
    if job.lock is None:
        return _write_shard(job)
    try:
        with fileio.exclusive(job.lock, f"shard {job.name}"):
            return _write_shard(job)
    except fileio.BusyError as e:  # another run is writing this very shard
        raise ShardError(f"{job.name}: {e}") from None


def _write_shard(job: ShardJob) -> ShardStats:
    import tensorflow as tf

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
        with source_file, tf.io.TFRecordWriter(str(tmp)) as writer:
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
                writer.write(records.encode_example(current, stored, info))
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
        # TensorFlow's writer reports a full disk as its own error type, with the OS's words.
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e):
            raise ShardError(f"{job.name}: {fileio.disk_full(path)}") from e
        member = f"{archive.name} member {current.filename}" if current is not None else archive.name
        raise ShardError(f"{job.name}: writing {member} failed ({type(e).__name__}: {e})") from e
    return ShardStats(
        name=job.name, path=path, records=len(job.records), bytes=size, md5=md5, converted=tuple(converted)
    )


def write_shards(
    jobs: Sequence[ShardJob],
    workers: int,
    on_done: Callable[[ShardStats], None] | None = None,
) -> list[ShardStats]:
    """Write many shards with a pool of ``workers`` processes; return their stats in job order.

    The pool is ``records.worker_pool``'s (spawn start method, as TensorFlow is not fork-safe):
    each worker loads TensorFlow once and writes many shards, and the calling process never
    imports it.
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
            sum(job.space_needed() for job in here),
            len(here),
            f"writing {len(here)} shard{'s' if len(here) > 1 else ''} ({here[0].name} ...)",
        )
    results: list[ShardStats | None] = [None] * len(jobs)
    executor = records.worker_pool(workers)
    failure: BaseException | None = None
    index_of: dict[Future[ShardStats], int] = {}
    try:
        for i, job in enumerate(jobs):
            index_of[executor.submit(write_shard, job)] = i
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
        records.settle(list(index_of))
    if failure is not None:
        raise failure
    return [r for r in results if r is not None]


def _named(job: ShardJob, error: BaseException) -> ShardError:
    # E.g. a worker killed by the OOM killer (BrokenProcessPool) or an exception from on_done.
    named = ShardError(f"{job.name}: {type(error).__name__}: {error}")
    named.__cause__ = error
    return named


# --- The stage -----------------------------------------------------------------------------------


def write_split_shards(
    settings: Settings,
    split: str,
    source: ImageSource,
    wanted: Sequence[str] | None = None,
    on_shard: Callable[[ShardStats, bool], None] | None = None,
    log: Log = quiet,
) -> Made:
    """Stages ``train_shards`` / ``validation_shards``: write the shards ``wanted`` of ``split``
    (default: all of them) from ``source`` into ``<data>/tfrecords/``.

    Needs the split's image index, ``bounding_boxes`` and ``synsets``. A shard whose plan and
    file are unchanged since an earlier run (the ledger under ``<data>/.state/shards``) is not
    written again; ``on_shard(stats, reused)`` is called for each shard, reused or written. Each
    shard is written under its own lock, so runs of other shards (other batches, other
    machines) go ahead in parallel while a second run of the same shard is refused.
    """
    from ilsvrc_assets import archives, bounding_boxes, shard_plan, synsets
    from ilsvrc_assets.archives import ChecksumCache

    wanted = list(settings.shard_names(split) if wanted is None else wanted)
    reader = source.image_reader(split, log)
    if removed := fileio.remove_stale_temp_files(settings.tfrecords_dir):
        log(f"removed {removed} partial shard files left by an interrupted run")
    _, _, num_shards = release.parse_shard_name(wanted[0])
    table = bounding_boxes.read_table(settings.bounding_boxes_parquet)
    jobs = shard_plan.plan_split(
        split,
        archives.read_index(settings.image_index(split)),
        synsets.read_synsets(settings.synsets_csv),
        bounding_boxes.boxes_by_image(table[table["split"] == split]),
        reader.path,  # TODO(lead): the reader itself, once ShardJob takes one
        settings.tfrecords_dir,
        num_shards,
        wanted=wanted,
    )
    jobs = {name: replace(job, lock=settings.lock_path(f"shards/{name}")) for name, job in jobs.items()}
    archive_version = reader.version(ChecksumCache(settings.state_dir / "checksums.json"))
    ledger = shard_plan.ShardLedger(settings.state_dir / "shards")
    fingerprints = {name: shard_plan.fingerprint(job, archive_version) for name, job in jobs.items()}
    to_write = []
    for name in wanted:
        stats = ledger.reusable(jobs[name], fingerprints[name])
        if stats is None:
            to_write.append(jobs[name])
        elif on_shard:
            on_shard(stats, True)
    reused = len(wanted) - len(to_write)
    log(
        f"{split}: {len(to_write)} of {len(wanted)} shards to write "
        f"({reused} unchanged since an earlier run) with {settings.workers} workers"
    )
    progress = Progress(f"{split} shards", sum(len(job.records) for job in to_write), "images", log)
    written_records = 0

    def done(stats: ShardStats) -> None:
        nonlocal written_records
        ledger.record(stats, fingerprints[stats.name])
        if on_shard:
            on_shard(stats, False)
        written_records += stats.records
        progress.update(written_records)

    write_shards(to_write, workers=settings.workers, on_done=done)
    return Made(
        settings.tfrecords_dir,
        {"shards_in_this_run": len(wanted), "shards_written": len(to_write), "shards_unchanged": reused},
    )
