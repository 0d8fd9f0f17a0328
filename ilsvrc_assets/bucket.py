"""Publishing to a bucket: with ``ILSVRC_OUTPUT_URL`` set (``gs://bucket/prefix`` or
``s3://bucket/prefix``), every published output, and the tables beside them, also go there, under
the same relative paths as under ``<data>``::

    <url>/tfrecords/train-00000-of-01024 ...      <data>/tfrecords/train-00000-of-01024 ...
    <url>/tfrecords/_published.json               the output's completeness marker, written last
    <url>/validation/n01440764/ILSVRC2012_val_00000293.JPEG ...
    <url>/synsets.csv, <url>/bounding_boxes.parquet, ...

**Publishing a version** (:func:`publish_output`, right after :func:`versions.publish` made it what
local readers see, so its blocking checks passed on it): every file its listing (``_published.tsv``:
path, size, MD5) holds that the bucket does not already hold with that MD5 is uploaded, many at a
time. If anything is to change, the bucket's marker is removed first, so that a reader who looks for
it never takes a copy being changed for a published one; objects of the output that the listing no
longer holds are removed; the listing, then the marker, are written last.

**Each object is verified and written once** (:mod:`ilsvrc_assets.storage.objects`): an upload
becomes visible only when complete, after the bytes sent are checked against the MD5 the file was
published with, and the store's own checksum against them; it is a conditional create, or replaces
only the very version this deployment wrote before (recorded in ``<data>/.state/bucket.sqlite``),
so two deployments publishing to one bucket cannot overwrite each other: the second is refused,
naming the first.

**Resumable**: a run killed mid-way leaves complete objects and no partial one; the next run uploads
only what is missing or different. **Checked**: :func:`output_problems` compares the bucket with the
published listing (every object present, at its size, with its MD5 where the store reports one, and
the very version this deployment wrote: any object changed since is named).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ilsvrc_assets import fileio, release, storage, versions
from ilsvrc_assets.settings import Settings
from ilsvrc_assets.stage import Log, Made, Verdict, quiet

if TYPE_CHECKING:
    from ilsvrc_assets.record_workers import RecordWorkers
    from ilsvrc_assets.shard_scan import ShardScan
from ilsvrc_assets.storage.objects import ObjectConflict, join, scratch_dir

# Uploads in flight at once: the time is in the network round trips, not in this process.
UPLOADS = 16


@dataclass(frozen=True)
class BucketPublished:
    """What :func:`publish_output` / :func:`publish_files` did."""

    url: str  # where readers find it in the bucket
    objects: int  # objects the output has in the bucket now
    bytes: int
    uploaded: int  # uploaded in this run (the others were there with the same MD5)
    uploaded_bytes: int
    removed: int  # objects of an earlier version the listing no longer holds

    def metadata(self) -> dict[str, int | str]:
        return {
            "bucket_url": self.url,
            "bucket_objects": self.objects,
            "bucket_uploaded": self.uploaded,
            "bucket_uploaded_bytes": self.uploaded_bytes,
            "bucket_removed": self.removed,
        }


class Found(NamedTuple):
    """An object the bucket's listing holds."""

    size: int
    md5: str | None
    version: str


class Ledger:
    """The objects this deployment wrote: URL -> (bytes, MD5, the store's version of the object).

    One SQLite file under ``<data>/.state``: lookups one at a time, so 1.28 million objects (the
    training tree) cost no memory. Written from the publishing thread only.
    """

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=60, check_same_thread=False)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS objects (url TEXT PRIMARY KEY, bytes INTEGER, md5 TEXT, version TEXT)"
        )
        self._lock = threading.Lock()

    def get(self, url: str) -> tuple[int, str, str] | None:
        with self._lock:
            row = self.db.execute("SELECT bytes, md5, version FROM objects WHERE url = ?", (url,)).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def put(self, url: str, nbytes: int, md5: str, version: str) -> None:
        with self._lock, self.db:
            self.db.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?)", (url, nbytes, md5, version))

    def take_listing(self, store, url: str, prefix: str = "") -> None:
        """Keep (in a table of this connection) what the bucket holds under ``url``, by the path
        relative to it, ``prefix`` before it."""
        base = url.rstrip("/") + "/"
        with self._lock, self.db:
            self.db.execute(
                "CREATE TEMP TABLE IF NOT EXISTS found (path TEXT PRIMARY KEY, bytes INTEGER, md5 TEXT, version TEXT)"
            )
            rows = ((prefix + i.url[len(base) :], i.size, i.md5, i.version) for i in store.listing(base))
            self.db.executemany("INSERT OR REPLACE INTO found VALUES (?, ?, ?, ?)", rows)

    def found(self, path: str) -> Found | None:
        with self._lock:
            row = self.db.execute("SELECT bytes, md5, version FROM found WHERE path = ?", (path,)).fetchone()
        return None if row is None else Found(*row)

    def mark_listed(self, paths: Iterable[str]) -> None:
        with self._lock, self.db:
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS listed (path TEXT PRIMARY KEY)")
            self.db.executemany("INSERT OR IGNORE INTO listed VALUES (?)", ((p,) for p in paths))

    def unlisted(self) -> list[str]:
        """The paths the bucket holds that :meth:`mark_listed` did not name (an earlier version's)."""
        with self._lock:
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS listed (path TEXT PRIMARY KEY)")
            rows = self.db.execute(
                "SELECT path FROM found WHERE path NOT IN (SELECT path FROM listed) ORDER BY path"
            ).fetchall()
        return [row[0] for row in rows]

    def forget(self, url: str) -> None:
        with self._lock, self.db:
            self.db.execute("DELETE FROM objects WHERE url = ?", (url,))

    def close(self) -> None:
        self.db.close()


def _ledger(settings: Settings) -> contextlib.closing[Ledger]:
    return contextlib.closing(Ledger(settings.state_dir / "bucket.sqlite"))


def _is_there(found, nbytes: int, md5: str, recorded: tuple[int, str, str] | None) -> bool:
    """Whether the object ``found`` (an ObjectInfo, or None) holds the file of ``nbytes`` and ``md5``:
    by the store's MD5, or by being the very version this deployment recorded for that MD5."""
    if found is None or found.size != nbytes:
        return False
    if found.md5 is not None:
        return found.md5 == md5
    return recorded is not None and recorded[1] == md5 and recorded[2] == found.version


class _Uploads:
    """Uploads of files to objects, :data:`UPLOADS` at a time, each recorded in the ledger as it
    completes; the first failure stops new ones and is raised once those in flight are done."""

    def __init__(self, store, ledger: Ledger):
        self.store, self.ledger = store, ledger
        self.pool = ThreadPoolExecutor(UPLOADS)
        self.pending: set[Future] = set()
        self.failure: BaseException | None = None
        self.count = self.bytes = 0
        self._counting = threading.Lock()

    def _one(self, local: Path, url: str, nbytes: int, md5: str, found) -> None:
        recorded = self.ledger.get(url)
        # Replaces only this deployment's own earlier object (the version it recorded); else a
        # conditional create, which another writer's object makes fail, naming it.
        replace = found.version if found is not None and recorded and recorded[2] == found.version else None
        info = self.store.upload_file(local, url, md5, replace=replace)
        self.ledger.put(url, nbytes, md5, info.version)
        with self._counting:
            self.count += 1
            self.bytes += nbytes

    def submit(self, local: Path, url: str, nbytes: int, md5: str, found) -> None:
        while len(self.pending) >= 2 * UPLOADS:
            self._collect(FIRST_COMPLETED)
        if self.failure is None:
            self.pending.add(self.pool.submit(self._one, local, url, nbytes, md5, found))

    def _collect(self, how) -> None:
        done, self.pending = wait(self.pending, return_when=how)
        for future in done:
            if (error := future.exception()) is not None and self.failure is None:
                self.failure = error

    def finish(self) -> None:
        self._collect("ALL_COMPLETED")
        self.pool.shutdown()
        if self.failure is not None:
            raise self.failure


def _store(url: str):
    store = storage.store_for(url)
    if not hasattr(store, "upload_file"):
        raise ValueError(f"{url}: not an object store URL (gs:// or s3://)")
    return store


def _require_own(
    store, ledger: Ledger, url: str, found: Found | None, nbytes: int = -1, md5: str = ""
) -> None:
    """Raise :class:`ObjectConflict` unless the object ``found`` at ``url`` (if any) is one this
    deployment wrote (its ledger holds that very version), or already holds the ``nbytes`` of ``md5``
    (then recorded as this deployment's). Called before anything in the bucket changes, so another
    writer's objects are never touched."""
    if found is None:
        return
    recorded = ledger.get(url)
    if recorded is not None and recorded[2] == found.version:
        return
    info = store.info(url)
    if info is None:  # gone meanwhile: nothing in the way
        return
    if info.size == nbytes and info.content_md5 == md5:
        ledger.put(url, nbytes, md5, info.version)
        return
    raise ObjectConflict(
        f"{url}: written by {info.writer or 'another writer'} (version {info.version}), not by this "
        f"deployment{' (changed since it wrote it)' if recorded else ''}; nothing was changed in the "
        "bucket. Publish to another ILSVRC_OUTPUT_URL, or remove that object if it is not wanted"
    )


def _take_output_listing(ledger: Ledger, store, base: str, output: versions.Output) -> None:
    for folder in output.folders:
        ledger.take_listing(store, join(base, folder), f"{folder}/")


def publish_output(settings: Settings, name: str, log: Log = quiet) -> BucketPublished:
    """Upload the published version of output ``name`` (a key of :data:`versions.OUTPUTS`) to
    ``settings.output_url`` (see the module's docstring); its marker last."""
    output = versions.OUTPUTS[name]
    version = versions.published_version(settings, output)
    if version is None:
        raise FileNotFoundError(f"{output.name}: not published locally yet; publish it first")
    base = settings.output_url
    assert base is not None
    store = _store(base)
    first = output.folders[0]
    marker_url = join(base, f"{first}/{versions.MARKER}")
    listing = version / first / versions.LISTING

    with _ledger(settings) as ledger:
        _take_output_listing(ledger, store, base, output)
        ledger.mark_listed(path for path, _, _ in versions.read_listing(listing))
        ledger.mark_listed(f"{first}/{m}" for m in versions.MARKER_FILES)

        def missing() -> Iterator[tuple[str, int, str]]:  # the listing's files the bucket lacks
            for path, nbytes, md5 in versions.read_listing(listing):
                if not _is_there(ledger.found(path), nbytes, md5, ledger.get(join(base, path))):
                    yield path, nbytes, md5

        files = total = todo = todo_bytes = 0
        for path, nbytes, md5 in versions.read_listing(listing):
            files += 1
            total += nbytes
            url, found, recorded = join(base, path), ledger.found(path), ledger.get(join(base, path))
            # An object with the very bytes that the ledger does not name (uploaded by a run killed
            # before it could record it) is taken as this deployment's.
            if found is not None and found.md5 == md5 and found.size == nbytes:
                if recorded is None or recorded[2] != found.version:
                    ledger.put(url, nbytes, md5, found.version)
            elif not _is_there(found, nbytes, md5, recorded):
                todo += 1
                todo_bytes += nbytes
                _require_own(store, ledger, url, found, nbytes, md5)
        stale = ledger.unlisted()
        for path in stale:
            _require_own(store, ledger, join(base, path), ledger.found(path))
        local_marker = (version / first / versions.MARKER).read_bytes()
        had_marker = (found_marker := ledger.found(f"{first}/{versions.MARKER}")) is not None
        if had_marker and store.read_bytes(marker_url) == local_marker:
            if not todo and not stale:
                log(f"{output.name}: {base} already holds version {version.name}")
                return BucketPublished(base, files, total, 0, 0, 0)
        elif had_marker:
            _require_own(store, ledger, marker_url, found_marker)
        # Nothing of another writer's is in the way. The copy is about to change: no longer a
        # published one until its new marker is written.
        if had_marker:
            store.remove(marker_url)
        log(
            f"{output.name}: uploading {todo:,} of {files:,} files ({fileio.format_bytes(todo_bytes)}) to {base}"
        )
        uploads = _Uploads(store, ledger)
        try:
            for path, nbytes, md5 in missing():
                uploads.submit(version / path, join(base, path), nbytes, md5, ledger.found(path))
        finally:
            uploads.finish()
        for path in stale:
            store.remove(join(base, path))
            ledger.forget(join(base, path))
        # The listing, then the marker: a bucket copy with the marker is complete.
        for name_ in (versions.LISTING, versions.MARKER):
            local, url = version / first / name_, join(base, f"{first}/{name_}")
            md5 = fileio.md5_file(local)
            ledger.put(
                url, local.stat().st_size, md5, store.upload_file(local, url, md5, overwrite=True).version
            )
    log(
        f"{output.name}: version {version.name} published to {base} ({uploads.count:,} uploaded, "
        f"{files - uploads.count:,} already there, {len(stale):,} removed)"
    )
    return BucketPublished(base, files, total, uploads.count, uploads.bytes, len(stale))


def publish_files(settings: Settings, paths: Iterable[Path], log: Log = quiet) -> BucketPublished:
    """Upload files of ``<data>`` (the synset, label and box tables) to the same relative paths
    under ``settings.output_url``: each replaced whole, only when its MD5 changed."""
    assert settings.output_url is not None
    store = _store(settings.output_url)
    uploaded = uploaded_bytes = objects = total = 0
    with _ledger(settings) as ledger:
        uploads = _Uploads(store, ledger)
        try:
            for path in paths:
                relative = path.relative_to(settings.data_dir).as_posix()
                url = join(settings.output_url, relative)
                nbytes, md5 = path.stat().st_size, fileio.md5_file(path)
                objects += 1
                total += nbytes
                found = store.info(url)
                if not _is_there(found, nbytes, md5, ledger.get(url)):
                    _require_own(store, ledger, url, found, nbytes, md5)  # may find it is these bytes
                    if not _is_there(found, nbytes, md5, ledger.get(url)):
                        uploads.submit(path, url, nbytes, md5, found)
        finally:
            uploads.finish()
        uploaded, uploaded_bytes = uploads.count, uploads.bytes
    if uploaded:
        log(f"uploaded {uploaded} file(s) to {settings.output_url}")
    return BucketPublished(settings.output_url, objects, total, uploaded, uploaded_bytes, 0)


def output_problems(settings: Settings, name: str, limit: int = 10) -> list[str]:
    """How the bucket's copy of output ``name`` differs from the published version's listing
    ([] when it holds exactly the files listed, each at its size, with its MD5 where the store reports
    one, as the version this deployment wrote, and the same marker)."""
    output = versions.OUTPUTS[name]
    version = versions.published_version(settings, output)
    base = settings.output_url
    assert base is not None
    if version is None:
        return [f"{output.name}: never published"]
    store = _store(base)
    first = output.folders[0]
    redo = f"publish it again: materialise {output.asset}"
    marker_url = join(base, f"{first}/{versions.MARKER}")
    problems: list[str] = []
    with _ledger(settings) as ledger:
        _take_output_listing(ledger, store, base, output)
        if ledger.found(f"{first}/{versions.MARKER}") is None:
            problems.append(f"{marker_url}: missing (the bucket's copy is not a published one); {redo}")
        elif store.read_bytes(marker_url) != (version / first / versions.MARKER).read_bytes():
            problems.append(f"{marker_url}: not the marker of the published version {version.name}; {redo}")
        listing = version / first / versions.LISTING
        ledger.mark_listed(path for path, _, _ in versions.read_listing(listing))
        ledger.mark_listed(f"{first}/{m}" for m in versions.MARKER_FILES)
        for path, nbytes, md5 in versions.read_listing(listing):
            url = join(base, path)
            found = ledger.found(path)
            recorded = ledger.get(url)
            if found is None:
                problems.append(f"{url}: missing; {redo}")
            elif found.size != nbytes:
                problems.append(
                    f"{url}: {found.size:,} bytes, {nbytes:,} published (truncated or replaced); {redo}"
                )
            elif found.md5 is not None and found.md5 != md5:
                problems.append(f"{url}: MD5 {found.md5}, {md5} published (altered since written); {redo}")
            elif recorded is None or recorded[2] != found.version:
                writer = getattr(store.info(url), "writer", None)
                problems.append(
                    f"{url}: not the object this deployment wrote (changed since it was written"
                    f"{f', by {writer}' if writer else ''}); {redo}"
                )
        problems += [
            f"{join(base, path)}: not in the published listing; {redo}" for path in ledger.unlisted()
        ]
    return problems[:limit] + ([f"... and {len(problems) - limit} more"] if len(problems) > limit else [])


def publishes(settings: Settings, name: str) -> bool:
    """Whether output ``name`` goes to a bucket too (``ILSVRC_OUTPUT_URL``, ``ILSVRC_BUCKET_OUTPUTS``)."""
    return settings.output_url is not None and name in settings.bucket_outputs


def also_published(settings: Settings, made: Made, paths: Iterable[Path], log: Log = quiet) -> Made:
    """``made``, its files ``paths`` (those that exist) uploaded to the bucket when one is set, with
    what that did among its facts."""
    if settings.output_url is None:
        return made
    done = publish_files(settings, [p for p in paths if p.is_file()], log)
    return dataclasses.replace(made, facts={**made.facts, **done.metadata()})


def published_verdict(
    settings: Settings, name: str, read_back: tuple[RecordWorkers, str] | None = None
) -> Verdict:
    """Check ``matches_its_listing``: what local readers see is exactly the published version's
    listing (:func:`versions.published_verdict`) and, when a bucket is set, so is the bucket's copy
    (:func:`output_problems`); with ``read_back`` (record workers, decode policy: the audit), the
    bucket's shards are read back too (:func:`read_back_problems`)."""
    verdict = versions.published_verdict(settings, name)
    if not publishes(settings, name):
        return verdict
    problems = output_problems(settings, name)
    facts = dict(verdict.facts)
    if read_back is not None and not problems:
        problems, facts["bucket_shards_read_back"] = read_back_problems(settings, name, *read_back)
    return dataclasses.replace(
        verdict,
        problems=verdict.problems + problems,
        ok=f"{verdict.ok}; {settings.output_url}: the same files, as this deployment wrote them"
        + (", every shard read back" if "bucket_shards_read_back" in facts else ""),
        facts=facts,
    )


def _scan_object(url: str, scratch: str, format_name: str, decode: str) -> ShardScan:
    """Stream the shard object ``url`` to a file in ``scratch`` and read it back there (a record
    worker: one shard of scratch each), removed afterwards. Runs in a record worker."""
    from ilsvrc_assets import formats

    store = storage.store_for(url)
    local = Path(scratch) / f"{os.getpid()}-{url.rsplit('/', 1)[1]}"
    try:
        with store.open_read(url) as f, open(local, "wb") as out:
            shutil.copyfileobj(f, out, fileio.CHUNK)
        return formats.by_name(format_name).scan(local, decode)
    finally:
        local.unlink(missing_ok=True)


def read_back_problems(
    settings: Settings, name: str, workers: RecordWorkers, decode: str, limit: int = 10
) -> tuple[list[str], int]:
    """The audit of record-format output ``name`` in the bucket: every shard object read back from
    the bucket (streamed to ``ILSVRC_SCRATCH_DIR``, one per worker at a time), hashed, every record
    parsed, the images of the decode policy ``decode`` decoded; a shard whose MD5 is not the one
    published, or whose records do not all parse and decode, is named. Returns the problems and the
    number of shards read back."""
    from ilsvrc_assets import formats

    output = versions.OUTPUTS[name]
    version = versions.published_version(settings, output)
    base = settings.output_url
    if output.record_format is None or version is None or base is None:
        return [], 0
    record_format = formats.by_name(output.record_format)
    shard_files = {
        f"{output.folders[0]}/{record_format.file_name(shard)}"
        for split in release.SPLITS
        for shard in settings.shard_names(split, record_format.name)
    }
    scratch = scratch_dir() / "ilsvrc-read-back"
    scratch.mkdir(parents=True, exist_ok=True)
    published = {
        path: md5
        for path, _, md5 in versions.read_listing(version / output.folders[0] / versions.LISTING)
        if path in shard_files
    }
    redo = f"publish it again: materialise {output.asset}"
    problems = []
    futures = {
        workers.submit(_scan_object, join(base, path), str(scratch), record_format.name, decode): path
        for path in sorted(published)
    }
    try:
        for future in as_completed(futures):
            path = futures[future]
            url = join(base, path)
            try:
                scan = future.result()
            except FileNotFoundError:
                problems.append(f"{url}: missing; {redo}")
                continue
            if scan.md5 != published[path]:
                problems.append(f"{url}: MD5 {scan.md5} read back, {published[path]} published; {redo}")
            elif scan.parse_errors or scan.decode_errors:
                problems.append(
                    f"{url}: {scan.parse_errors} records that do not parse, {scan.decode_errors} images "
                    f"that do not decode ({'; '.join(scan.problems[:2])}); {redo}"
                )
    finally:
        workers.finish(list(futures))
    problems.sort()
    more = [f"... and {len(problems) - limit} more"] if len(problems) > limit else []
    return problems[:limit] + more, len(futures)
