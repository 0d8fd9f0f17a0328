"""Write, audit, publish: readers only ever see a complete, checked version of an output.

An *output* is a set of folders readers consume and that change together: the validation tree,
the training tree, the TFRecord shards with their DALI indexes, the WebDataset tars
(:data:`OUTPUTS`). On disk::

    <data>/.versions/<output>/<n>/<folder>/...        version n of each of the output's folders
    <data>/.versions/<output>/current -> <n>          the published version (a symbolic link)
    <data>/.versions/<output>/staging -> <m>          the version being written, until published
    <data>/<folder> -> .versions/<output>/current/<folder>     where readers look (made once)

**Write.** The stages write into the staging version (:func:`working`). It is made on first use
holding a hard link to every file of the published version, so what a build leaves unchanged costs
neither a copy nor disk: the stages keep a file that is as planned and replace any other by
rename, which replaces the link in the staging folder and leaves the published file as it was.
A build that fails, is killed or is blocked leaves the staging version for the next run to go on
with.

**Audit.** The blocking checks judge the staging version (:func:`judged`; the published one when
nothing is staged, as in the daily audit).

**Publish.** :func:`publish` writes the completeness marker into the staging version, last
(``_published.tsv``: every file with its size and MD5; ``_published.json``: the version, counts
and the TSV's own MD5), then swaps ``current`` to it with one ``rename(2)`` of a symbolic link,
and removes versions older than the ``keep`` newest.

Why a swapped link and not a renamed folder: ``rename(2)`` replaces a file or a link atomically
but cannot replace a non-empty folder, so publishing a folder by renaming would need two steps
(the old one aside, the new one in place) with a moment when readers find nothing. The readers'
links point through ``current``, so an output of two folders (shards and indexes) changes in
that one rename. On a shared NFS volume (the Kubernetes deployment) the rename is one operation
on the server, and every client sees the old target or the new one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ilsvrc_assets import fileio
from ilsvrc_assets.settings import Settings
from ilsvrc_assets.stage import Log, Made, Verdict, quiet

VERSIONS = ".versions"
CURRENT = "current"
STAGING = "staging"
MARKER = "_published.json"
LISTING = "_published.tsv"
MARKER_FILES = (MARKER, LISTING)
LISTING_HEADER = "path\tbytes\tmd5\n"


@dataclass(frozen=True)
class Output:
    """Folders under ``<data>`` published together, under the output's name."""

    name: str
    folders: tuple[str, ...]  # the first holds the completeness marker
    record_format: str | None = None  # the record format whose shards these are (their manifest's MD5s)

    @property
    def asset(self) -> str:
        """The asset that publishes it."""
        return f"published_{self.name.replace('-', '_')}"


def _outputs() -> dict[str, Output]:
    from ilsvrc_assets import formats

    found = [Output("validation_tree", ("validation",)), Output("train_tree", ("train",))]
    for record_format in map(formats.by_name, formats.FORMATS):
        folders = (record_format.folder, *(c.folder for c in record_format.companions))
        found.append(Output(record_format.folder, folders, record_format.name))
    return {output.name: output for output in found}


OUTPUTS: dict[str, Output] = _outputs()
"""Every output readers consume, by name: ``validation_tree``, ``train_tree``, ``tfrecords``, ``webdataset``."""


def output_of(folder: str) -> Output:
    """The output that ``folder`` (a name under ``<data>``, e.g. ``tfrecords-index``) is part of."""
    for output in OUTPUTS.values():
        if folder in output.folders:
            return output
    raise KeyError(f"{folder}: not a folder of any published output ({', '.join(OUTPUTS)})")


def _root(settings: Settings, output: Output) -> Path:
    return settings.data_dir / VERSIONS / output.name


def _target(link: Path) -> str | None:
    try:
        return os.readlink(link)
    except (FileNotFoundError, OSError):
        return None


def published_version(settings: Settings, output: Output) -> Path | None:
    """The folder of the published version of ``output``, or None if none was published."""
    target = _target(_root(settings, output) / CURRENT)
    return _root(settings, output) / target if target else None


def staging_version(settings: Settings, output: Output) -> Path | None:
    """The folder of the version being written (not published yet), or None."""
    root = _root(settings, output)
    target = _target(root / STAGING)
    if not target or target == _target(root / CURRENT) or not (root / target).is_dir():
        return None
    return root / target


@contextlib.contextmanager
def _flock(settings: Settings, name: str, operation: int) -> Iterator[None]:
    """Hold ``flock(operation)`` on the lock file ``name`` for the block (released by the kernel if
    the holder dies); with ``LOCK_NB``, BlockingIOError when it is held."""
    path = settings.lock_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        os.close(fd)


def _locked(settings: Settings, output: Output) -> contextlib.AbstractContextManager[None]:
    """Wait for, then hold, the lock on ``output``'s versions (making or publishing one: short)."""
    return _flock(settings, f"versions-{output.name}", fcntl.LOCK_EX)


@contextlib.contextmanager
def writing(settings: Settings, folder: str, log: Log = quiet) -> Iterator[Path]:
    """:func:`working`, held for the block: while any run writes an output's unpublished version, that
    version cannot be published (:func:`publish` refuses, naming why), so no write lands in a version
    after readers see it. Runs writing the same version (shard batches) do not wait for each other."""
    # Shared: waits only for a publication in progress.
    with _flock(settings, f"versions-{output_of(folder).name}-writers", fcntl.LOCK_SH):
        yield working(settings, folder, log)


@contextlib.contextmanager
def _no_writers(settings: Settings, output: Output) -> Iterator[None]:
    """Hold off :func:`writing` for the block; raise :class:`fileio.BusyError` if a run is writing."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(
                _flock(settings, f"versions-{output.name}-writers", fcntl.LOCK_EX | fcntl.LOCK_NB)
            )
        except BlockingIOError:
            raise fileio.BusyError(
                f"{output.name}: a run is writing its unpublished version ({', '.join(output.folders)}); "
                "publish once it has ended and the checks have judged what it wrote"
            ) from None
        yield


def working(settings: Settings, folder: str, log: Log = quiet) -> Path:
    """Where a stage writes ``folder`` (``validation``, ``tfrecords``, ...): that folder of the staging
    version of its output, made now (from the published version, by hard links) if there is none."""
    output = output_of(folder)
    staged = staging_version(settings, output)
    if staged is None:
        with _locked(settings, output):
            staged = staging_version(settings, output) or _new_version(settings, output, log)
    path = staged / folder
    path.mkdir(parents=True, exist_ok=True)
    return path


def judged(settings: Settings, folder: str) -> Path:
    """The ``folder`` the checks judge: the staging version's while one is being written, else what
    readers see, ``<data>/<folder>`` (the published version; the checks find it missing if none is)."""
    staged = staging_version(settings, output_of(folder))
    return staged / folder if staged else settings.data_dir / folder


def _numbered(root: Path) -> list[int]:
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdecimal()) if root.is_dir() else []


def _new_version(settings: Settings, output: Output, log: Log) -> Path:
    """A new staging version of ``output``: every file of the published version (or of folders left
    by a build before versions, on first use) linked into it; then ``staging`` names it."""
    root = _root(settings, output)
    root.mkdir(parents=True, exist_ok=True)
    for left in root.glob("*.seeding"):  # a new version killed while being made
        shutil.rmtree(left)
    number = max([0, *_numbered(root)]) + 1
    seeding = root / f"{number}.seeding"
    published = published_version(settings, output)
    linked = 0
    for folder in output.folders:
        source = published / folder if published else settings.data_dir / folder
        if source.is_dir() and (published or not source.is_symlink()):
            linked += _link_tree(source, seeding / folder)
        (seeding / folder).mkdir(parents=True, exist_ok=True)
    version = root / str(number)
    os.rename(seeding, version)
    _swap_link(root / STAGING, str(number))
    origin = f"version {published.name}" if published else "the folders of an earlier build"
    log(f"{output.name}: writing version {number}" + (f" ({linked:,} files from {origin})" if linked else ""))
    return version


def _link_tree(source: Path, dest: Path) -> int:
    """Hard-link every file under ``source`` to the same place under ``dest`` (copied, times kept,
    where the file system has no hard links); the markers and temporary files are left out."""
    count = 0
    for top, _dirs, files in os.walk(source):
        here = dest / os.path.relpath(top, source)
        here.mkdir(parents=True, exist_ok=True)
        for name in files:
            if (top == str(source) and name in MARKER_FILES) or fileio.is_temp_path(Path(name)):
                continue
            try:
                os.link(f"{top}/{name}", here / name)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                shutil.copy2(f"{top}/{name}", here / name)
            count += 1
    return count


def _swap_link(link: Path, target: str) -> None:
    """Point the symbolic link ``link`` at ``target`` in one ``rename(2)``."""
    temp = fileio.temp_path_for(link)
    os.symlink(target, temp)
    os.replace(temp, link)


# --- Publishing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """What :func:`publish` did."""

    output: str
    version: int
    files: int
    bytes: int
    hashed: int  # files hashed now (the others' MD5s were known)
    removed_versions: tuple[int, ...]
    already: bool  # nothing was staged: the published version was already the latest

    def metadata(self) -> dict[str, int | str | bool | list[int]]:
        return {
            "version": self.version,
            "files": self.files,
            "bytes": self.bytes,
            "hashed_now": self.hashed,
            "removed_versions": list(self.removed_versions),
            "unchanged": self.already,
        }


Known = Mapping[str, tuple[int, int, str]]
"""Path relative to the version -> (bytes, mtime_ns, md5) known from a stage (e.g. the manifest):
used for a file whose size and time still match, instead of reading it again."""


def publish(
    settings: Settings, name: str, known: Known | None = None, keep: int = 1, log: Log = quiet
) -> Published:
    """Make the staging version of output ``name`` what readers see, its marker written last; keep
    the ``keep`` newest versions (the published one included), remove the others.

    The caller has made sure the blocking checks passed on the staging version. With nothing
    staged, makes sure the readers' links are in place and reports the published version.
    """
    output = OUTPUTS[name]
    root = _root(settings, output)
    with _no_writers(settings, output), _locked(settings, output):
        staged = staging_version(settings, output)
        if staged is None:
            current = published_version(settings, output)
            if current is None:
                raise FileNotFoundError(
                    f"{output.name}: nothing written to publish (no version under {root}); "
                    f"materialise {', '.join(output.folders)} first"
                )
            marker = json.loads((current / output.folders[0] / MARKER).read_text())
            _link_readers(settings, output, log)
            return Published(
                output.name, int(current.name), marker["files"], marker["bytes"], 0, (), already=True
            )
        files, size, hashed = _write_marker(staged, output, known or {}, int(staged.name))
        _swap_link(root / CURRENT, staged.name)
        _link_readers(settings, output, log)
        (root / STAGING).unlink(missing_ok=True)
        removed = _remove_old(root, int(staged.name), keep)
    log(
        f"{output.name}: version {staged.name} published ({files:,} files, "
        f"{fileio.format_bytes(size)}; {hashed:,} hashed now)"
        + (f"; removed version(s) {', '.join(map(str, removed))}" if removed else "")
    )
    return Published(output.name, int(staged.name), files, size, hashed, removed, already=False)


def _walk(version: Path, output: Output) -> Iterator[tuple[str, os.stat_result]]:
    """(path relative to the version, stat) of every file of ``output`` in ``version``, in
    :func:`_order`; the markers and temporary files left out."""
    for folder in output.folders:
        base = version / folder
        for top, dirs, files in os.walk(base):
            dirs.sort()
            relative = os.path.relpath(top, version)
            for name in sorted(files):
                if (top == str(base) and name in MARKER_FILES) or fileio.is_temp_path(Path(name)):
                    continue
                yield f"{relative}/{name}", os.stat(f"{top}/{name}")


def _order(output: Output) -> Callable[[str], tuple]:
    """The sort key of the listing: the order :func:`_walk` visits files in (the output's folders in
    turn; in each, a folder's files by name before its sub-folders', sub-folders by name)."""
    position = {folder: i for i, folder in enumerate(output.folders)}

    def key(path: str) -> tuple:
        *folders, name = path.split("/")
        return position[folders[0]], tuple(folders[1:]), name

    return key


def read_listing(path: Path) -> Iterator[tuple[str, int, str]]:
    """(path, bytes, md5) of each line of a listing, in its order; nothing if there is none."""
    try:
        f = open(path)
    except FileNotFoundError:
        return
    with f:
        next(f, None)
        for line in f:
            name, nbytes, md5 = line.rstrip("\n").split("\t")
            yield name, int(nbytes), md5


def _merged(left: Iterator, right: Iterator, key: Callable[[str], tuple]) -> Iterator[tuple]:
    """Pairs (a, b) of two iterators of tuples sorted by ``key(item[0])``: items with the same first
    element together, an item on one side only with None on the other. Flat memory at any size."""
    done = object()
    a, b = next(left, done), next(right, done)
    while a is not done or b is not done:
        if b is done or (a is not done and key(a[0]) < key(b[0])):
            yield a, None
            a = next(left, done)
        elif a is done or key(b[0]) < key(a[0]):
            yield None, b
            b = next(right, done)
        else:
            yield a, b
            a, b = next(left, done), next(right, done)


def _write_marker(version: Path, output: Output, known: Known, number: int) -> tuple[int, int, int]:
    """Write ``_published.tsv`` then ``_published.json`` into ``version``'s first folder; return
    (files, bytes, files hashed now). A file's MD5 is taken from ``known``, or from the published
    version's listing when the file is the very same (a hard link: same inode), else read (a few
    files at a time, in parallel)."""
    current = _target(version.parent / CURRENT)
    before = version.parent / current if current and current != version.name else None
    previous = read_listing(before / output.folders[0] / LISTING) if before else iter(())
    folder = version / output.folders[0]
    counts = {f: 0 for f in output.folders}
    files = size = hashed = 0

    def same_file(path: str, st: os.stat_result) -> bool:
        try:
            old = os.stat(before / path)  # type: ignore[operator]
        except FileNotFoundError:
            return False
        return (old.st_dev, old.st_ino) == (st.st_dev, st.st_ino)

    with (
        fileio.atomic_write(folder / LISTING, "w", fsync=True) as listing,
        ThreadPoolExecutor(max(2, os.cpu_count() or 1)) as pool,
    ):
        listing.write(LISTING_HEADER)
        digest = hashlib.md5(LISTING_HEADER.encode())

        def entries() -> Iterator[tuple[str, int, Callable[[], str] | str]]:
            nonlocal hashed
            for now, old in _merged(_walk(version, output), previous, _order(output)):
                if now is None:
                    continue  # in the published version only: gone from this one
                path, st = now
                k = known.get(path)
                if k and (k[0], k[1]) == (st.st_size, st.st_mtime_ns):
                    yield path, st.st_size, k[2]
                elif old and old[1] == st.st_size and same_file(path, st):
                    yield path, st.st_size, old[2]
                else:
                    hashed += 1
                    yield path, st.st_size, pool.submit(fileio.md5_file, version / path).result

        for chunk in _chunked(entries(), 64):  # up to 64 files hashed ahead of the one written
            for path, nbytes, md5 in chunk:
                line = f"{path}\t{nbytes}\t{md5 if isinstance(md5, str) else md5()}\n"
                listing.write(line)
                digest.update(line.encode())
                files += 1
                size += nbytes
                counts[path.split("/", 1)[0]] += 1
    marker = {
        "output": output.name,
        "version": number,
        "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "folders": counts,
        "files": files,
        "bytes": size,
        "listing": LISTING,
        "listing_md5": digest.hexdigest(),
    }
    # The marker last: a version without it was never published.
    with fileio.atomic_write(folder / MARKER, "w", fsync=True) as f:
        f.write(json.dumps(marker, indent=1) + "\n")
    return files, size, hashed


def _chunked(items: Iterator, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _link_readers(settings: Settings, output: Output, log: Log) -> None:
    """Make each ``<data>/<folder>`` the link through ``current``; a folder left by a build before
    versions is exchanged with its link in one step where the kernel can (``renameat2``), then removed
    (its files are in the versions by hard links)."""
    for folder in output.folders:
        reader = settings.data_dir / folder
        target = f"{VERSIONS}/{output.name}/{CURRENT}/{folder}"
        if _target(reader) == target:
            continue
        if reader.is_symlink() or not reader.exists():
            _swap_link(reader, target)
            continue
        temp = fileio.temp_path_for(reader)
        os.symlink(target, temp)
        if not _exchange(temp, reader):
            os.rename(reader, f"{temp}.old")
            os.rename(temp, reader)
            temp = Path(f"{temp}.old")
        shutil.rmtree(temp) if temp.is_dir() and not temp.is_symlink() else temp.unlink()
        log(f"{reader}: now a link to the published version (the folder of an earlier build removed)")


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


def _remove_old(root: Path, published: int, keep: int) -> tuple[int, ...]:
    """Remove all versions but the ``keep`` newest published ones (never the staging or a newer one)."""
    older = [n for n in _numbered(root) if n < published]
    removed = tuple(older[: max(0, len(older) - (keep - 1))])
    for number in removed:
        shutil.rmtree(root / str(number))
    return removed


# --- Checking what readers see -------------------------------------------------------------------


def published_problems(settings: Settings, name: str, hash_files: bool = False, limit: int = 10) -> list[str]:
    """How the published folders of output ``name`` differ from their marker ([] when they hold
    exactly the files it lists, at its sizes; with ``hash_files``, its MD5s too)."""
    output = OUTPUTS[name]
    found: list[str] = []
    version = published_version(settings, output)
    if version is None:
        return [f"{output.name}: never published (no {settings.data_dir / VERSIONS / output.name / CURRENT})"]
    for folder in output.folders:
        reader = settings.data_dir / folder
        if not reader.is_dir() or reader.resolve() != (version / folder).resolve():
            found.append(f"{reader}: not the link to the published version {version.name}")
    marker_path = version / output.folders[0] / MARKER
    try:
        marker = json.loads(marker_path.read_text())
        listing_md5 = fileio.md5_file(version / output.folders[0] / LISTING)
    except (FileNotFoundError, json.JSONDecodeError) as e:
        return [*found, f"{marker_path}: missing or unreadable ({e}); publish again"]
    if listing_md5 != marker.get("listing_md5"):
        found.append(f"{LISTING}: not the listing {MARKER} was written with")
    changed = 0
    for now, listed in _merged(
        _walk(version, output), read_listing(version / output.folders[0] / LISTING), _order(output)
    ):
        if now is None:
            problem = f"missing: {listed[0]}"
        elif listed is None:
            problem = f"not in the listing: {now[0]}"
        elif now[1].st_size != listed[1]:
            problem = f"changed since published: {now[0]} ({now[1].st_size:,} bytes, listed {listed[1]:,})"
        elif hash_files and fileio.md5_file(version / now[0]) != listed[2]:
            problem = f"changed since published: {now[0]} (MD5 differs from the listing)"
        else:
            continue
        changed += 1
        if changed <= limit:
            found.append(problem)
    if changed > limit:
        found.append(f"... {changed} files differ from the listing in all")
    return found


# --- The stage and its check ---------------------------------------------------------------------


def _known(settings: Settings, output: Output) -> dict[str, tuple[int, int, str]]:
    """The MD5s a record format's manifest already holds for the staged shards (read back and hashed
    by ``dataset_manifest``), so that publishing 146 GB of shards does not read them again."""
    from ilsvrc_assets import formats, manifest

    staged = staging_version(settings, output)
    if output.record_format is None or staged is None:
        return {}
    record_format = formats.by_name(output.record_format)
    found = manifest.read(staged / output.name / manifest.MANIFEST) or {}
    return {
        f"{output.name}/{record_format.file_name(shard['name'])}": (
            shard["bytes"],
            shard["mtime_ns"],
            shard["md5"],
        )
        for split in found.get("splits", {}).values()
        for shard in split.get("shards", [])
        if not shard.get("missing") and shard.get("md5") and shard.get("mtime_ns")
    }


def _changed_since_read(settings: Settings, output: Output, known: Known) -> list[str]:
    """The staged shards that are not as the manifest read them (written again since: its checks did
    not judge them)."""
    staged = staging_version(settings, output)
    changed = []
    for path, (nbytes, mtime_ns, _) in sorted(known.items()):
        try:
            st = os.stat(staged / path)  # type: ignore[operator]
        except FileNotFoundError:
            changed.append(f"{path} (gone)")
            continue
        if (st.st_size, st.st_mtime_ns) != (nbytes, mtime_ns):
            changed.append(path)
    return changed


def make_published(settings: Settings, name: str, log: Log = quiet) -> Made:
    """Stages ``published_validation_tree``, ``published_tfrecords``, ...: publish output ``name``
    (:func:`publish`), keeping ``settings.keep_versions`` versions. The caller has made sure its
    blocking checks passed on the staging version; refused if a shard was written since the manifest
    read it (the checks judged the manifest's reading)."""
    output = OUTPUTS[name]
    known = _known(settings, output)
    if changed := _changed_since_read(settings, output, known):
        raise ValueError(
            f"{output.name}: {len(changed)} file(s) written since the manifest read them, e.g. "
            f"{', '.join(changed[:3])}; materialise the manifest again (its checks run with it), "
            "then publish"
        )
    done = publish(settings, name, known, settings.keep_versions, log)
    return Made(settings.data_dir / output.folders[0], done.metadata())


def published_verdict(settings: Settings, name: str) -> Verdict:
    """Check ``matches_its_listing``: what readers see is exactly the published version's listing."""
    output = OUTPUTS[name]
    version = published_version(settings, output)
    return Verdict(
        published_problems(settings, name),
        f"{', '.join(f'<data>/{f}' for f in output.folders)}: version "
        f"{version.name if version else '?'}, every file as listed in {LISTING}",
        {"version": int(version.name) if version else 0},
    )


def where_published(settings: Settings, path: Path) -> Path:
    """Where readers find ``path`` (a file of a version) once its version is published:
    ``<data>/<folder>/...``; any other path as it is."""
    try:
        relative = path.relative_to(settings.data_dir / VERSIONS)
    except ValueError:
        return path
    parts = relative.parts
    return settings.data_dir.joinpath(*parts[2:]) if len(parts) > 2 and parts[1].isdecimal() else path
