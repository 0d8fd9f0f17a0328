"""Writing the shards of a plan, in any record format, with the caller's record workers.

A shard plan (``shard_plan``) says which images go into which shard; a record format
(``ilsvrc_assets.formats``) says what a shard file is. :func:`write_shard` writes one shard in a
worker process straight from the uncompressed archive (one seek and one read per image), through a
temporary file renamed into place only when complete; :func:`write_shards` writes many with the
caller's :class:`~ilsvrc_assets.record_workers.RecordWorkers`. Nothing here depends on the format.
"""

from __future__ import annotations

import errno
import hashlib
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ilsvrc_assets import fileio, formats, images, release, storage
from ilsvrc_assets.archives import ArchiveError, ChecksumCache
from ilsvrc_assets.formats import Companion, RecordFormat
from ilsvrc_assets.progress import Progress
from ilsvrc_assets.record_workers import RecordWorkers, failure_text
from ilsvrc_assets.settings import Settings
from ilsvrc_assets.shard_plan import CompanionStats, RecordSource, ShardJob, ShardStats
from ilsvrc_assets.shard_scan import ALL, SAMPLE
from ilsvrc_assets.stage import Log, Made, quiet

if TYPE_CHECKING:
    from ilsvrc_assets.sources import ImageSource


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
    reader = job.reader
    path = Path(job.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    converted: list[str] = []
    current: RecordSource | None = None
    # The records are checked as they are written, not read back afterwards.
    check = record_format.checker(record_format.file_name(job.name), job.decode)
    try:
        # Written under a temporary name and published (renamed into place) only when complete.
        with storage.store_for(path).staged_file(path) as tmp:
            try:
                reading = reader.open()
            except OSError as e:
                raise ShardError(f"{job.name}: cannot open {reader.where} ({e})") from e
            with reading, record_format.open(tmp) as writer:
                for current in job.records:
                    where = f"{reader.where} member {current.filename}"
                    try:
                        data = reading.read(current.filename, current.offset, current.size)
                    except ArchiveError as e:
                        raise ShardError(f"{job.name}: {e}") from e
                    stored, info = images.prepare(data, where)
                    if stored is not data:  # prepare returns unchanged images as the same object
                        converted.append(current.filename)
                        # A re-encoded image is decoded; any other must be the archive's bytes.
                        check.add(writer.add(current, stored, info), None, True)
                    else:
                        check.add(writer.add(current, stored, info), zlib.crc32(data))
            current = None  # what fails from here on is the shard file, not a member
            # The size and MD5 of the bytes as written; the file on disk must have that size.
            size, md5 = writer.bytes, writer.md5
            if (on_disk := tmp.stat().st_size) != size:
                raise ShardError(f"{job.name}: {size:,} bytes written, {on_disk:,} on disk ({tmp})")
            verified = check.finish(size, md5)
            # Published last before the shard itself (a shard is never newer than its companions).
            companions = tuple(
                publish_companion(c, path, record_format.companion_data(writer, c))
                for c in record_format.companions
            )
    except BaseException as e:
        if isinstance(e, ShardError) or not isinstance(e, Exception):
            raise
        if isinstance(e, images.ImageError):
            raise ShardError(f"{job.name}: {e}") from e  # the message already names archive and member
        # A format's writer may report a full disk as its own error type (TensorFlow's does), with the OS's words.
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e):
            raise ShardError(f"{job.name}: {fileio.disk_full(path)}") from e
        member = f"{reader.where} member {current.filename}" if current is not None else reader.where
        raise ShardError(f"{job.name}: writing {member} failed ({type(e).__name__}: {e})") from e
    return ShardStats(
        name=job.name,
        path=path,
        records=len(job.records),
        bytes=size,
        md5=md5,
        converted=tuple(converted),
        companions=companions,
        verified=verified,
    )


def publish_companion(companion: Companion, shard_path: Path, data: bytes) -> CompanionStats:
    """Publish ``data`` as the ``companion`` of the shard at ``shard_path`` (whole or not at all)."""
    target = companion.path(shard_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    storage.write_bytes(target, data)
    return CompanionStats(companion.kind, target, len(data), hashlib.md5(data).hexdigest())


def write_shards(
    jobs: Iterable[ShardJob],
    record_format: RecordFormat,
    workers: RecordWorkers,
    on_done: Callable[[ShardStats], None] | None = None,
    space_checked: bool = False,
) -> list[ShardStats]:
    """Write many shards in ``record_format`` with the caller's ``workers``; return their stats in job order.

    Each worker loads TensorFlow once and writes many shards; the calling process never imports it.
    ``jobs`` may be made lazily (a :class:`~ilsvrc_assets.shard_plan.SplitPlan`'s, one by one): a
    few per worker are taken ahead of those being written, never all, so a split's records are
    not all in memory at once. The free space for all of them is checked first, unless the caller
    did (``space_checked``). ``on_done(stats)`` is called in this process as each shard finishes.
    On the first failure no further shard is started, those already being written are let finish
    (and reported to ``on_done``, so their work is kept), and the failure is raised as a
    :class:`ShardError` naming the shard.
    """
    if not space_checked:
        jobs = list(jobs)
        for folder in sorted({Path(job.path).parent for job in jobs}):
            here = [job for job in jobs if Path(job.path).parent == folder]
            require_space(
                folder, sum(record_format.space_needed(job) for job in here), [j.name for j in here]
            )
    ahead = 2 * workers.processes + 1
    upcoming = iter(enumerate(jobs))
    results: dict[int, ShardStats] = {}
    failure: BaseException | None = None
    pending: dict[Future[ShardStats], tuple[int, ShardJob]] = {}
    try:
        while True:
            while failure is None and len(pending) < ahead and (nxt := next(upcoming, None)) is not None:
                pending[workers.submit(write_shard, nxt[1], record_format)] = nxt
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)  # a few futures: cheap to wait on
            for future in finished:
                i, job = pending.pop(future)
                if future.cancelled():
                    continue
                error = future.exception()
                if error is None:
                    stats = results[i] = future.result()
                    try:
                        if on_done is not None:
                            on_done(stats)
                    except Exception as e:
                        error = e
                if error is not None and failure is None:
                    failure = error if isinstance(error, ShardError) else _named(job, error)
                    for other in pending:
                        other.cancel()  # only shards not yet started can be cancelled
    finally:
        workers.finish(pending)
    if failure is not None:
        raise failure
    return [results[i] for i in sorted(results)]


def require_space(folder: Path, needed: int, names: Sequence[str]) -> None:
    """Refuse up front (naming what and how much) when ``folder`` has no room for ``needed`` bytes
    of the shards ``names``."""
    if names:
        fileio.require_free_space(
            folder,
            needed,
            len(names),
            f"writing {len(names)} shard{'s' if len(names) > 1 else ''} ({names[0]} ...)",
        )


def _named(job: ShardJob, error: BaseException) -> ShardError:
    # E.g. a worker killed by the OOM killer (BrokenProcessPool) or an exception from on_done.
    named = ShardError(f"{job.name}: {failure_text(error)}")
    named.__cause__ = error
    return named


# --- The stage -----------------------------------------------------------------------------------


def _companions_again(stats: ShardStats, record_format: RecordFormat) -> ShardStats | None:
    """``stats`` of a reused shard, with each companion that is not as recorded (deleted, altered, or
    written before the format had it) made again from the shard's bytes and published; None if the
    shard's bytes cannot give it (the shard is then written again)."""
    kept = {c.kind: c for c in stats.companions}
    companions = []
    for companion in record_format.companions:
        found = kept.get(companion.kind)
        if found is None or found.path != companion.path(stats.path):
            try:
                data = record_format.companion_from_shard(stats.path, companion)
            except ValueError:
                return None
            found = publish_companion(companion, stats.path, data)
        companions.append(found)
    return replace(stats, companions=tuple(companions))


def write_split_shards(
    settings: Settings,
    split: str,
    source: ImageSource,
    workers: RecordWorkers,
    wanted: Sequence[str] | None = None,
    on_shard: Callable[[ShardStats, bool], None] | None = None,
    log: Log = quiet,
    record_format: RecordFormat | None = None,
) -> Made:
    """Stages ``train_shards`` / ``validation_shards`` (and ``train_webdataset``, ...): write the shards
    ``wanted`` of ``split`` (default: all of them) from ``source`` with ``workers``, in
    ``record_format`` (default: TFRecord).

    Needs the split's image index, ``bounding_boxes`` and ``synsets``. A shard whose plan and file
    are unchanged since an earlier run (the ledger under ``<data>/.state/<asset_suffix>``) is not
    written again; ``on_shard(stats, reused)`` is called for each shard, reused or written. Each
    shard is written under its own lock, so runs of other shards (other batches, other
    machines) go ahead in parallel while a second run of the same shard is refused.
    """
    # Imported here, not at the top: the record workers import this module, and need none of these.
    from ilsvrc_assets import versions

    record_format = record_format or formats.by_name(formats.DEFAULT)
    # Into the unpublished version (published once checked; not publishable while this writes).
    with versions.writing(settings, record_format.folder, log) as folder:
        return _write_split_shards(
            settings, split, source, workers, wanted, on_shard, log, record_format, folder
        )


def _write_split_shards(
    settings: Settings,
    split: str,
    source: ImageSource,
    workers: RecordWorkers,
    wanted: Sequence[str] | None,
    on_shard: Callable[[ShardStats, bool], None] | None,
    log: Log,
    record_format: RecordFormat,
    folder: Path,
) -> Made:
    """:func:`write_split_shards` into ``folder``."""
    # Imported here, not at the top: the record workers import this module, and need none of these.
    from ilsvrc_assets import archives, bounding_boxes, previews, shard_plan, shard_previews, synsets

    wanted = list(settings.shard_names(split, record_format.name) if wanted is None else wanted)
    reader = source.image_reader(split, log)
    for partial in [folder, *(folder.parent / c.folder for c in record_format.companions)]:
        if partial.is_dir() and (removed := storage.store_for(partial).remove_partial(partial)):
            log(f"removed {removed} partial files left by an interrupted run in {partial}")
    _, _, num_shards = release.parse_shard_name(wanted[0])
    index = archives.read_index(settings.image_index(split))
    plan = shard_plan.SplitPlan(
        split,
        index,
        synsets.read_synsets(settings.synsets_csv),
        bounding_boxes.read_kept(settings.bounding_boxes_parquet, split),
        reader,
        folder,
        num_shards,
        record_format=record_format,
    )
    plan.check(wanted)
    # Each format's bookkeeping apart: its shards have the same names as the TFRecords'.
    state = record_format.asset_suffix

    version = reader.version(ChecksumCache(settings.checksum_cache_json))
    # The writers decode a fixed sample of the images when the archive's bytes are proven the
    # official ones (whose images are known to decode), and every image otherwise.
    decode = SAMPLE if release.is_official_md5(version) else ALL

    def job_for(name: str) -> ShardJob:  # made when needed, one shard's records at a time
        return replace(plan.job(name), lock=settings.lock_path(f"{state}/{name}"), decode=decode)

    ledger = shard_plan.ShardLedger(settings.state_dir / state)
    # An entry being written when a run was killed leaves its temporary file (the entry itself is
    # written again with its shard).
    if removed := fileio.remove_stale_temp_files(ledger.folder):
        log(f"removed {removed} partial ledger entries left by an interrupted run in {ledger.folder}")
    fingerprints: dict[str, str] = {}
    to_write: list[str] = []
    space = 0
    converted: set[str] = set()
    for name in wanted:
        job = job_for(name)
        fingerprints[name] = shard_plan.fingerprint(job, version)
        stats = ledger.reusable(job, fingerprints[name])
        if stats is not None and (again := _companions_again(stats, record_format)) != stats:
            if again is not None:
                ledger.record(again, fingerprints[name])
                made = sorted({c.kind for c in again.companions} - {c.kind for c in stats.companions})
                log(f"{name}: unchanged, its {', '.join(made)} made again from it")
            stats = again
        if stats is None:
            to_write.append(name)
            space += record_format.space_needed(job)
        else:
            converted.update(stats.converted)
            if on_shard:
                on_shard(stats, True)
    reused = len(wanted) - len(to_write)
    log(
        f"{split}: {len(to_write)} of {len(wanted)} shards to write "
        f"({reused} unchanged since an earlier run) with {workers.processes} workers; every record "
        "parsed as it is written, "
        + (
            "the archive being the official one, a fixed sample of the images decoded"
            if decode == SAMPLE
            else "every image decoded (the archive is not proven the official one)"
        )
    )
    require_space(folder, space, to_write)
    progress = Progress(f"{split} shards", sum(plan.count(name) for name in to_write), "images", log)
    written_records = 0

    def done(stats: ShardStats) -> None:
        nonlocal written_records
        ledger.record(stats, fingerprints[stats.name])
        converted.update(stats.converted)
        if on_shard:
            on_shard(stats, False)
        written_records += stats.records
        progress.update(written_records)

    write_shards(
        (job_for(name) for name in to_write), record_format, workers, on_done=done, space_checked=True
    )
    shown = shard_previews.for_shards(
        split,
        {name: plan.count(name) for name in wanted},
        folder / record_format.file_name(wanted[0]),
        sorted(converted),
        index,
        reader,
        record_format,
    )
    previews.write_all(shown, previews.folder_for(settings.data_dir, f"{split}_{state}"))
    return Made(
        folder,
        {"shards_in_this_run": len(wanted), "shards_written": len(to_write), "shards_unchanged": reused},
        previews=shown,
    )
