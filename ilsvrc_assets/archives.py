"""Reading the release's tar archives: verifying them and indexing where each image lies.

The image archives are uncompressed tars (the train archive a tar of 1,000 tars), so the byte
offset of every image inside the archive file can be recorded once, by reading tar headers only
(:mod:`ilsvrc_assets.tar_reader`, which also refuses links, special files and names that leave
the archive), and every later step reads an image with one seek and one read: nothing is ever
extracted to disk first, and nothing but headers is read to build the index.
"""

from __future__ import annotations

import fcntl
import json
import os
import posixpath
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from ilsvrc_assets import fileio, release, tar_reader


class ArchiveError(ValueError):
    """An archive is missing, damaged or not in the official layout; the message names it."""


# --- Checksums --------------------------------------------------------------------------------


class ChecksumCache:
    """MD5s already computed, keyed by file path, size and modification time.

    Hashing the 148 GB train archive takes minutes; a second run whose archives have not
    changed (same size, same mtime) reuses the digest instead. The archives' steps run at the same
    time, each in a process of its own, so :meth:`put` reads, adds and writes under an ``flock``
    (``<cache>.lock``): no process's entry is lost to another's write.
    """

    def __init__(self, path: Path):
        self.path = path

    def _load(self) -> dict[str, dict]:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    @staticmethod
    def _stamp(file: Path) -> dict:
        st = file.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def get(self, file: Path) -> str | None:
        entry = self._load().get(str(file.absolute()))
        if entry and {k: entry.get(k) for k in ("size", "mtime_ns")} == self._stamp(file):
            return entry["md5"]
        return None

    def put(self, file: Path, md5: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # held for a read and a small write: wait for it
            entries = self._load()
            entries[str(file.absolute())] = {**self._stamp(file), "md5": md5}
            fileio.atomic_write_text(self.path, json.dumps(entries, indent=1, sort_keys=True))
        finally:
            os.close(lock)  # releases the lock


def md5_of(file: Path, cache: ChecksumCache | None = None) -> tuple[str, bool]:
    """The file's MD5 and whether it came from the cache."""
    if cache is not None and (cached := cache.get(file)):
        return cached, True
    digest = fileio.md5_file(file)
    if cache is not None:
        cache.put(file, digest)
    return digest, False


def checksum_problem(name: str, expected: str, actual: str) -> str | None:
    """None when the digests agree, otherwise a message that says what to do."""
    if expected == actual:
        return None
    return (
        f"{name}: MD5 {expected} expected, got {actual}; the file is corrupt, truncated or not the "
        f"official archive: delete it and download it again (or, for a stand-in release, list its "
        f"MD5 in an MD5SUMS file beside it)"
    )


# --- The image index ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainImage:
    filename: str  # e.g. n01440764_10026.JPEG
    synset: str
    offset: int  # of the image's bytes within the train archive file
    size: int


TRAIN_INDEX_COLUMNS = ("filename", "synset", "offset", "size")
VALIDATION_INDEX_COLUMNS = ("filename", "number", "synset", "offset", "size")


@contextmanager
def _reading(path: Path) -> Iterator[BinaryIO]:
    """The archive opened for reading; the reader's errors as :class:`ArchiveError`, worded as
    this module always has ("<archive>: member '<name>' is ...")."""
    if not path.is_file():
        raise ArchiveError(f"{path}: archive not found")
    try:
        with open(path, "rb") as file:
            yield file
    except tar_reader.TarError as e:
        if e.member is None:
            raise ArchiveError(str(e)) from None
        raise ArchiveError(f"{e.archive}: member {e.member!r} is {e.problem}") from None


def index_train_archive(
    path: Path,
    synsets: set[str] | frozenset[str],
    progress: Callable[[int, int, str], None] | None = None,
) -> pd.DataFrame:
    """Index every training image in the train archive (tar of ``<wnid>.tar``), headers only.

    Returns one row per image (``TRAIN_INDEX_COLUMNS``) in archive order. Offsets are absolute
    within ``path``: the inner tars are stored uncompressed and read in place. ``progress(done,
    total, wnid)`` is called after each inner tar.
    """
    archive = path.name
    filenames: list[str] = []
    synset_column: list[str] = []
    offsets: list[int] = []
    sizes: list[int] = []
    seen_synsets: set[str] = set()
    seen_files: set[str] = set()
    with _reading(path) as file:
        for done, inner in enumerate(tar_reader.members(file, archive), start=1):
            name = inner.name
            wnid, ext = posixpath.splitext(name)
            if ext != ".tar" or not release.is_wnid(wnid) or "/" in name:
                raise ArchiveError(
                    f"{archive}: member {name!r} is not an inner synset tar '<wnid>.tar'; "
                    f"is this the official ILSVRC2012_img_train.tar?"
                )
            if wnid not in synsets:
                raise ArchiveError(f"{archive}: inner tar {name!r} is not one of the 1,000 challenge synsets")
            if wnid in seen_synsets:
                raise ArchiveError(f"{archive}: inner tar {name!r} appears twice")
            seen_synsets.add(wnid)
            where = f"{archive} member {name}"
            prefix = wnid + "_"
            digits = slice(len(prefix), -len(".JPEG"))
            count = len(filenames)
            for image_name, offset, size in tar_reader.members(
                file, where, start=inner.offset, end=inner.offset + inner.size
            ):
                # '<wnid>_<digits>.JPEG', tested without splitting the name (1.28 million of them).
                if not (
                    image_name.startswith(prefix)
                    and image_name.endswith(".JPEG")
                    and image_name[digits].isdigit()
                ):
                    image_name = _train_image_in_a_folder(where, wnid, image_name)
                filenames.append(image_name)
                offsets.append(offset)
                sizes.append(size)
            # Duplicates checked per inner tar, a set operation rather than one per image.
            before = len(seen_files)
            seen_files.update(filenames[count:])
            if len(seen_files) - before != len(filenames) - count:
                _refuse_duplicate(where, filenames, count)
            synset_column.extend([wnid] * (len(filenames) - count))
            if progress:
                progress(done, len(synsets), wnid)
    columns = {"filename": filenames, "synset": synset_column, "offset": offsets, "size": sizes}
    return pd.DataFrame(columns).astype({"offset": "int64", "size": "int64"})


def _train_image_in_a_folder(where: str, wnid: str, name: str) -> str:
    """The file name of a training image stored under a folder, or the error naming the member."""
    filename = posixpath.basename(name)
    stem, ext = posixpath.splitext(filename)
    prefix, _, number = stem.rpartition("_")
    if ext != ".JPEG" or prefix != wnid or not number.isdigit():
        raise ArchiveError(f"{where}: member {name!r} is not a training image '{wnid}_<n>.JPEG'")
    return filename


def _refuse_duplicate(where: str, filenames: list[str], start: int) -> None:
    """Raise for the first of ``filenames[start:]`` that an earlier one repeats."""
    seen = set(filenames[:start])
    for filename in filenames[start:]:
        if filename in seen:
            raise ArchiveError(f"{where}: image {filename!r} appears twice")
        seen.add(filename)


def index_validation_archive(path: Path, validation_synsets: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """Index every validation image in the validation archive, headers only.

    ``validation_synsets[i - 1]`` is the synset of image number ``i`` (the devkit ground truth).
    Returns one row per image (``VALIDATION_INDEX_COLUMNS``) in archive order. Missing images are
    not an error here (the asset check counts them); unexpected or duplicate members are.
    """
    archive = path.name
    columns: dict[str, list] = {c: [] for c in VALIDATION_INDEX_COLUMNS}
    seen: set[int] = set()
    with _reading(path) as file:
        for member in tar_reader.members(file, archive):
            name = member.name
            filename = posixpath.basename(name)
            try:
                number = release.validation_number(filename)
            except ValueError:
                raise ArchiveError(
                    f"{archive}: member {name!r} is not a validation image 'ILSVRC2012_val_<8 digits>.JPEG'"
                ) from None
            if not 1 <= number <= len(validation_synsets):
                raise ArchiveError(
                    f"{archive}: member {name!r} has no ground-truth label (the devkit lists {len(validation_synsets)} images)"
                )
            if number in seen:
                raise ArchiveError(f"{archive}: image {filename!r} appears twice")
            seen.add(number)
            columns["filename"].append(filename)
            columns["number"].append(number)
            columns["synset"].append(validation_synsets[number - 1])
            columns["offset"].append(member.offset)
            columns["size"].append(member.size)
    return pd.DataFrame(columns).astype({"number": "int64", "offset": "int64", "size": "int64"})


def write_index(index: pd.DataFrame, path: Path) -> None:
    """Write an image index atomically as Parquet."""
    with fileio.atomic_write(path) as f:
        index.to_parquet(f, index=False)


def read_index(path: Path) -> pd.DataFrame:
    """Read an image index written by :func:`write_index`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image index not found; materialise its asset first")
    return pd.read_parquet(path)


def read_member(archive: Path, offset: int, size: int, name: str) -> bytes:
    """The bytes of one indexed member (one seek, one read)."""
    with open(archive, "rb") as f:
        f.seek(offset)
        return whole_member(f.read(size), size, archive.name, name, offset)


def whole_member(data: bytes, size: int, container: str, name: str, offset: int) -> bytes:
    """``data``, read for the member ``name`` of ``size`` bytes at ``offset`` in ``container``, if it
    is all there; else :class:`ArchiveError` naming both (the one message of every indexed reader)."""
    if len(data) != size:
        raise ArchiveError(
            f"{container} member {name} is cut short ({len(data)} of {size} bytes at offset {offset}); the "
            f"file is truncated (delete it and fetch it again) or the image index is stale"
        )
    return data


def file_size(path: Path) -> int:
    return os.stat(path).st_size
