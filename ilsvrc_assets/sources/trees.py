"""What the copies laid out as folders have in common: a tree of files, in a zip, a gzip-compressed
tar or on disk.

Kaggle's copy is a zip or its extracted folder; an extracted copy (``ILSVRC_SOURCE=folder``) is a
folder. Both hold the training images as ``<prefix>/<wnid>/<wnid>_<n>.JPEG`` and the validation
images as ``<prefix>/ILSVRC2012_val_<8 digits>.JPEG`` (flat) or ``<prefix>/<wnid>/...`` (sorted).
A :class:`Tree` lists files under a prefix and reads them where they are; the index functions
here turn a listing into the image index the stages read (the official file names, so records
come out byte-identical), refusing what a copy must not hold, each error naming the file.
"""

from __future__ import annotations

import fcntl
import os
import posixpath
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ilsvrc_assets import archives, gzip_index, release, tar_reader, zip_reader
from ilsvrc_assets.archives import ArchiveError, ChecksumCache
from ilsvrc_assets.box_xml import MAX_XML_BYTES, BoundingBoxError
from ilsvrc_assets.sources import BoxFile, BoxFiles, ImageReader, SourceError, file_version, folder_manifest

Entry = tuple[str, int, int]  # (path relative to the listed prefix, offset, size)


class Tree(ABC):
    """A copy's files under one root: a zip (read in place) or a folder."""

    where: str  # for messages: the zip's or the folder's path

    @abstractmethod
    def files(self, prefix: str) -> Iterator[Entry]:
        """Every file under ``prefix`` (relative paths below it; folders are not listed)."""

    @abstractmethod
    def read(self, path: str, max_size: int | None = None) -> bytes | None:
        """The bytes of the file at ``path`` (relative to the root); None if there is none."""

    @abstractmethod
    def contents(self, prefix: str, max_size: int) -> Iterator[tuple[str, str, bytes]]:
        """(relative path, where, bytes) of every file under ``prefix``; one larger than
        ``max_size`` raises :class:`SourceError` naming it."""

    @abstractmethod
    def reader(self, prefix: str, split: str) -> ImageReader:
        """What reads the indexed images under ``prefix`` (by the index's offset and size)."""

    def name(self, path: str) -> str:
        """``path`` as messages show it: ``<zip> member <path>``, ``<folder>/<path>``."""
        return f"{self.where} member {path}"


class ZipTree(Tree):
    """A zip read in place (:mod:`ilsvrc_assets.zip_reader`): members by the offsets of its directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self._small: dict[str, zip_reader.ZipMember] | None = None

    def _members(self) -> Iterator[zip_reader.ZipMember]:
        if not self.path.is_file():
            raise SourceError(f"{self.path}: zip not found")
        try:
            yield from zip_reader.members(self.path)
        except zip_reader.ZipError as e:
            raise SourceError(f"{self.path.parent}/{e}") from None

    def files(self, prefix: str) -> Iterator[Entry]:
        start = prefix.rstrip("/") + "/"
        for member in self._members():
            if member.name.startswith(start) and not member.is_dir:
                yield member.name[len(start) :], member.offset, member.compressed_size

    def _top(self) -> dict[str, zip_reader.ZipMember]:
        # The few members outside the image folders (CSVs, the mapping), found in one pass.
        if self._small is None:
            self._small = {m.name: m for m in self._members() if "/" not in m.name.rstrip("/")}
        return self._small

    def read(self, path: str, max_size: int | None = None) -> bytes | None:
        member = (
            self._top().get(path)
            if "/" not in path
            else next((m for m in self._members() if m.name == path), None)
        )
        if member is None:
            return None
        if max_size is not None and member.size > max_size:
            raise SourceError(f"{self.name(path)}: {member.size:,} bytes, more than such a file can be")
        try:
            return zip_reader.read(self.path, member)
        except zip_reader.ZipError as e:
            raise SourceError(f"{self.path.parent}/{e}") from None

    def contents(self, prefix: str, max_size: int) -> Iterator[tuple[str, str, bytes]]:
        with ZipImageReader(self.path).open() as handle:
            for relative, offset, size in self.files(prefix):
                where = self.name(f"{prefix}/{relative}")
                if size > max_size:
                    raise SourceError(f"{where}: {size:,} bytes compressed, more than such a file can be")
                yield relative, where, handle.read(relative, offset, size)

    def reader(self, prefix: str, split: str) -> ImageReader:
        return ZipImageReader(self.path)


class GzipTarTree(Tree):
    """A gzip-compressed tar read in place, through the seek-point index the huggingface source uses
    (:mod:`ilsvrc_assets.gzip_index`): the first listing makes one pass over the whole stream (gzip's
    CRC and length checked) that saves the seek-point index and the member listing (one
    ``<name>\t<offset>\t<size>`` line each, offsets in the decompressed tar) under ``index_dir``;
    later listings read that file, and reads decompress from the nearest seek point. Both are made
    again when the tarball's size or modification time changes."""

    _SPAN = 16 << 20  # contents(): neighbouring members read together, up to this many bytes at once

    def __init__(self, path: Path, index_dir: Path) -> None:
        self.path = path
        self.index_dir = index_dir
        self.where = str(path)

    @property
    def index_path(self) -> Path:
        from ilsvrc_assets.sources.huggingface import index_path

        return index_path(self.index_dir, self.path)

    @property
    def listing_path(self) -> Path:
        return self.index_dir / (self.path.name + ".members.tsv")

    def _current(self, version: str) -> bool:
        if not (self.listing_path.is_file() and self.index_path.is_file()):
            return False
        with open(self.listing_path, encoding="utf-8") as file:
            return file.readline().rstrip("\n") == version

    def _listing(self) -> Path:
        """The listing file, made (with the seek-point index) by one pass when missing or stale."""
        if not self.path.is_file():
            raise SourceError(f"{self.path}: not found")
        version = file_version(self.path)
        if self._current(version):
            return self.listing_path
        self.index_dir.mkdir(parents=True, exist_ok=True)
        # The train and validation indexes may ask at once: one pass, the other waits for it.
        with open(self.index_dir / (self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._current(version):
                return self.listing_path
            temporary = self.listing_path.with_name(f"{self.listing_path.name}.partial-{os.getpid()}")
            try:
                with open(temporary, "w", encoding="utf-8") as out:
                    out.write(version + "\n")

                    def on_member(member: tar_reader.Member) -> None:
                        if "\t" in member.name or "\n" in member.name:
                            raise SourceError(
                                f"{self.path}: member {member.name!r}: a tab or newline in its name"
                            )
                        out.write(f"{member.name}\t{member.offset}\t{member.size}\n")

                    gzip_index.index_gzip_tar(self.path, self.index_path, on_member)
                os.replace(temporary, self.listing_path)
            except tar_reader.TarError as e:
                what = e.problem if e.member is None else f"member {e.member!r} is {e.problem}"
                raise SourceError(f"{self.path}: {what}") from None
            finally:
                temporary.unlink(missing_ok=True)
        return self.listing_path

    def _entries(self) -> Iterator[Entry]:
        with open(self._listing(), encoding="utf-8") as file:
            file.readline()
            for line in file:
                name, offset, size = line.rstrip("\n").split("\t")
                yield name, int(offset), int(size)

    def files(self, prefix: str) -> Iterator[Entry]:
        start = prefix.rstrip("/") + "/"
        for name, offset, size in self._entries():
            if name.startswith(start):
                yield name[len(start) :], offset, size

    def _index(self) -> gzip_index.GzipIndex:
        try:
            return gzip_index.GzipIndex(self.path, self.index_path)
        except gzip_index.GzipIndexError as e:
            raise SourceError(str(e)) from None

    def _read(self, index: gzip_index.GzipIndex, path: str, offset: int, size: int) -> bytes:
        try:
            data = index.read(offset, size)
        except gzip_index.GzipIndexError as e:
            raise SourceError(str(e)) from None
        if len(data) != size:
            raise SourceError(f"{self.name(path)}: cut short; the tarball is truncated: fetch it again")
        return data

    def read(self, path: str, max_size: int | None = None) -> bytes | None:
        found = next(((o, s) for n, o, s in self._entries() if n == path), None)
        if found is None:
            return None
        if max_size is not None and found[1] > max_size:
            raise SourceError(f"{self.name(path)}: {found[1]:,} bytes, more than such a file can be")
        with self._index() as index:
            return self._read(index, path, *found)

    def contents(self, prefix: str, max_size: int) -> Iterator[tuple[str, str, bytes]]:
        # Small neighbouring members (the XML files) read a span at a time: one decompression
        # from a seek point serves thousands of them instead of one each.
        def spans() -> Iterator[list[Entry]]:
            span: list[Entry] = []
            for relative, offset, size in self.files(prefix):
                if size > max_size:
                    raise SourceError(
                        f"{self.name(f'{prefix}/{relative}')}: {size:,} bytes, more than such a file can be"
                    )
                if span and (offset < span[0][1] or offset + size - span[0][1] > self._SPAN):
                    yield span
                    span = []
                span.append((relative, offset, size))
            if span:
                yield span

        with self._index() as index:
            for span in spans():
                first, end = span[0][1], span[-1][1] + span[-1][2]
                data = self._read(index, f"{prefix}/{span[0][0]}", first, end - first)
                for relative, offset, size in span:
                    yield (
                        relative,
                        self.name(f"{prefix}/{relative}"),
                        data[offset - first : offset - first + size],
                    )

    def reader(self, prefix: str, split: str) -> ImageReader:
        from ilsvrc_assets.sources.huggingface import GzipTarReader

        self._listing()  # the seek-point index it reads by
        return GzipTarReader((self.path,), self.index_dir)


class FolderTree(Tree):
    """A folder whose files are read where they are."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    @property
    def _real_root(self) -> Path:
        return self.root.resolve()

    def name(self, path: str) -> str:
        return f"{self.where}/{path}"

    def files(self, prefix: str) -> Iterator[Entry]:
        top = self.root / prefix
        if not top.is_dir():
            return
        pending = [""]
        while pending:
            relative = pending.pop()
            with os.scandir(top / relative if relative else top) as entries:
                listed = sorted(entries, key=lambda e: e.name)
            folders = []
            for entry in listed:
                name = f"{relative}/{entry.name}" if relative else entry.name
                if entry.is_symlink() and not Path(entry.path).resolve().is_relative_to(self._real_root):
                    raise SourceError(
                        f"{top}/{name}: a link to {Path(entry.path).resolve()}, outside the copy's folder "
                        f"{self.root}; the copy is not a safe one (copy the file in instead)"
                    )
                if entry.is_dir():
                    folders.append(name)
                elif entry.is_file():
                    yield name, 0, entry.stat().st_size
                else:
                    raise SourceError(f"{top}/{name}: neither a file nor a folder")
            pending.extend(reversed(folders))

    def read(self, path: str, max_size: int | None = None) -> bytes | None:
        file = self.root / path
        if not file.is_file():
            return None
        if max_size is not None and file.stat().st_size > max_size:
            raise SourceError(f"{file}: {file.stat().st_size:,} bytes, more than such a file can be")
        return file.read_bytes()

    def contents(self, prefix: str, max_size: int) -> Iterator[tuple[str, str, bytes]]:
        for relative, _, size in self.files(prefix):
            where = self.name(f"{prefix}/{relative}")
            if size > max_size:
                raise SourceError(f"{where}: {size:,} bytes, more than such a file can be")
            yield relative, where, (self.root / prefix / relative).read_bytes()

    def reader(self, prefix: str, split: str) -> ImageReader:
        return FolderImageReader(self.root / prefix, split)


# --- Reading images in place ---------------------------------------------------------------------


@dataclass(frozen=True)
class ZipImageReader(ImageReader):
    """Images of a zip, each from its local header's offset (``offset``) and compressed size (``size``)."""

    path: Path

    @property
    def where(self) -> str:
        return self.path.name

    def open(self) -> _ZipReading:
        return _ZipReading(self.path)

    def version(self, cache: ChecksumCache) -> str:
        return cache.get(self.path) or file_version(self.path)


class _ZipReading:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "rb")  # noqa: SIM115 (closed by __exit__)

    def read(self, name: str, offset: int, size: int) -> bytes:
        try:
            return zip_reader.read_member(self.file, f"{self.path} member for {name}", offset, size)
        except zip_reader.ZipError as e:
            raise ArchiveError(str(e)) from None

    def __enter__(self) -> _ZipReading:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


@dataclass(frozen=True)
class FolderImageReader(ImageReader):
    """Image files of a folder, read whole: ``<root>/<wnid>/<name>`` for training images (the
    WNID is the name's prefix), ``<root>/<name>`` or ``<root>/<wnid>/<name>`` for validation."""

    root: Path
    split: str

    @property
    def where(self) -> str:
        return str(self.root)

    def open(self) -> _FolderReading:
        return _FolderReading(self.root, self.split)

    def version(self, cache: ChecksumCache) -> str:
        # The files' names, sizes and times: what changes when any image does (no bytes read).
        return folder_manifest(self.root).version


@dataclass
class _FolderReading:
    root: Path
    split: str
    _sorted: dict[str, Path] | None = field(default=None, repr=False)  # validation name -> path

    def _path(self, name: str) -> Path:
        if self.split == "train":
            return self.root / name.rpartition("_")[0] / name
        flat = self.root / name
        if flat.is_file():
            return flat
        if self._sorted is None:  # a sorted validation folder: found once per handle
            self._sorted = {
                entry.name: Path(entry.path)
                for folder in sorted(os.scandir(self.root), key=lambda e: e.name)
                if folder.is_dir()
                for entry in os.scandir(folder.path)
            }
        return self._sorted.get(name, flat)

    def read(self, name: str, offset: int, size: int) -> bytes:
        path = self._path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArchiveError(f"{path}: gone since the image index was made; materialise it again") from None
        if len(data) != size:
            raise ArchiveError(
                f"{path}: {len(data):,} bytes, the image index says {size:,}: the file changed since it "
                f"was indexed (materialise the index again)"
            )
        return data

    def __enter__(self) -> _FolderReading:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


# --- Indexing ------------------------------------------------------------------------------------


def index_train(
    tree: Tree,
    prefix: str,
    known: Collection[str],
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Every training image under ``prefix`` (``<wnid>/<wnid>_<n>.JPEG``): ``archives.TRAIN_INDEX_COLUMNS``.

    Refuses (naming the file) a file outside a synset folder, a folder that is not one of
    ``known``, a name that is not its folder's ``<wnid>_<n>.JPEG``, an image twice, and a
    ``known`` synset without a folder.
    """
    known = frozenset(known)
    columns: dict[str, list] = {c: [] for c in archives.TRAIN_INDEX_COLUMNS}
    seen: set[str] = set()
    folders: set[str] = set()
    for relative, offset, size in tree.files(prefix):
        wnid, slash, filename = relative.partition("/")
        where = tree.name(f"{prefix}/{relative}")
        if not slash or "/" in filename:
            raise ArchiveError(f"{where}: not a training image '<wnid>/<wnid>_<n>.JPEG'")
        if wnid not in known:
            raise ArchiveError(f"{where}: folder {wnid!r} is not one of the {len(known):,} challenge synsets")
        stem, ext = posixpath.splitext(filename)
        owner, _, number = stem.rpartition("_")
        if ext != ".JPEG" or owner != wnid or not number.isdigit():
            raise ArchiveError(f"{where}: not a training image of its folder, '{wnid}_<n>.JPEG'")
        if filename in seen:
            raise ArchiveError(f"{where}: image {filename!r} appears twice in the copy")
        seen.add(filename)
        if wnid not in folders:
            folders.add(wnid)
            if progress:
                progress(len(folders), len(known))
        columns["filename"].append(filename)
        columns["synset"].append(wnid)
        columns["offset"].append(offset)
        columns["size"].append(size)
    if missing := sorted(known - folders):
        shown = ", ".join(tree.name(f"{prefix}/{w}") for w in missing[:3])
        raise ArchiveError(
            f"{len(missing):,} of the {len(known):,} synsets have no training images in the copy: no {shown}"
        )
    return pd.DataFrame(columns).astype({"offset": "int64", "size": "int64"})


def index_validation(tree: Tree, prefix: str, labels: Sequence[str]) -> pd.DataFrame:
    """Every validation image under ``prefix``, flat or sorted into ``<wnid>/`` folders:
    ``archives.VALIDATION_INDEX_COLUMNS``, synset ``labels[number - 1]``.

    Refuses (naming the file) other names, a number without a label, an image twice and, in a
    sorted folder, an image in another synset's folder than its label's.
    """
    columns: dict[str, list] = {c: [] for c in archives.VALIDATION_INDEX_COLUMNS}
    seen: set[int] = set()
    for relative, offset, size in tree.files(prefix):
        folder, _, filename = relative.rpartition("/")
        where = tree.name(f"{prefix}/{relative}")
        try:
            number = release.validation_number(filename)
        except ValueError:
            raise ArchiveError(f"{where}: not a validation image 'ILSVRC2012_val_<8 digits>.JPEG'") from None
        if "/" in folder or (folder and not release.is_wnid(folder)):
            raise ArchiveError(f"{where}: a validation image is in val/ or in val/<wnid>/, not here")
        if not 1 <= number <= len(labels):
            raise ArchiveError(f"{where}: has no ground-truth label (there are {len(labels):,})")
        if folder and folder != labels[number - 1]:
            raise ArchiveError(f"{where}: in the folder of {folder}, but its label is {labels[number - 1]}")
        if number in seen:
            raise ArchiveError(f"{where}: image {filename!r} appears twice in the copy")
        seen.add(number)
        columns["filename"].append(filename)
        columns["number"].append(number)
        columns["synset"].append(labels[number - 1])
        columns["offset"].append(offset)
        columns["size"].append(size)
    return pd.DataFrame(columns).astype({"number": "int64", "offset": "int64", "size": "int64"})


def sorted_validation_labels(tree: Tree, prefix: str) -> list[str] | None:
    """The labels a sorted validation folder gives (element i - 1: image i's folder); None when
    the folder is flat. Refuses a mix of both and a number missing in between, naming the file."""
    found: dict[int, str] = {}
    flat = False
    for relative, _, _ in tree.files(prefix):
        folder, _, filename = relative.rpartition("/")
        try:
            number = release.validation_number(filename)
        except ValueError:
            raise ArchiveError(
                f"{tree.name(f'{prefix}/{relative}')}: not a validation image 'ILSVRC2012_val_<8 digits>.JPEG'"
            ) from None
        if not folder:
            flat = True
        elif number in found:
            raise ArchiveError(
                f"{tree.name(f'{prefix}/{relative}')}: image {filename!r} appears twice in the copy"
            )
        else:
            found[number] = folder
        if flat and found:
            raise ArchiveError(
                f"{tree.name(prefix)}: holds images both flat and in synset folders; use one layout"
            )
    if flat or not found:
        return None
    if missing := sorted(set(range(1, max(found) + 1)) - found.keys()):
        raise ArchiveError(
            f"{tree.name(prefix)}: {len(missing):,} images missing from the sorted folders, e.g. "
            f"{release.validation_filename(missing[0])}"
        )
    return [found[n] for n in range(1, len(found) + 1)]


# --- Box files -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeBoxFiles(BoxFiles):
    """VOC XML box files under two prefixes of a tree: ``<train>/<wnid>/<stem>.xml`` and
    ``<validation>/<stem>.xml`` (the box archives' files, under other names)."""

    tree: Tree
    train: str
    validation: str

    def files(self, split: str) -> Iterator[BoxFile]:
        prefix, official = (self.train, "") if split == "train" else (self.validation, "val/")
        try:
            for relative, where, data in self.tree.contents(prefix, MAX_XML_BYTES):
                yield official + relative, where, data
        except (SourceError, ArchiveError) as e:
            raise BoundingBoxError(str(e)) from None
