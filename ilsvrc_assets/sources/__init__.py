"""Where images come from: one interface for every copy of ILSVRC2012, whatever its layout.

An :class:`ImageSource` says, for the stages, what a copy holds: its input files (each an input
asset, verified by checksum and observed for the scheduled refresh), the devkit's facts (the
1,000 synsets and the validation ground truth), an index of each split's images (file name,
synset, where its bytes lie), a reader for those bytes, and the bounding-box files. The stages
never branch on which source they have.

One module per source, chosen by ``ILSVRC_SOURCE`` in :func:`from_settings`:

- :mod:`ilsvrc_assets.sources.official`: the five official archives, from the built-in sample
  (``sample``), a local folder (``local``) or an HTTP(S) URL (``http``).
- :mod:`ilsvrc_assets.sources.kaggle`: Kaggle's copy, its zip or extracted folder (``kaggle``).
- :mod:`ilsvrc_assets.sources.folder`: an extracted copy, ``train/`` and ``val/`` (``folder``).

A source declares its inputs (:class:`Input`: a file or folder, the roles it feeds); the code
location makes one input asset of each, and the stages of a role depend on the inputs feeding it.
Facts a layout lacks (the devkit's) come from the shipped reference files; its box files come
through :class:`BoxFiles` from whatever holds them.

README, "Adding a source", says how to add one.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pandas as pd

from ilsvrc_assets.archives import ChecksumCache, checksum_problem
from ilsvrc_assets.stage import Log, Verdict

if TYPE_CHECKING:
    from ilsvrc_assets.settings import Settings
    from ilsvrc_assets.synsets import Devkit


class SourceError(RuntimeError):
    """An input cannot be had from the configured source; the message says what to do."""


# What an input is read for: the stages downstream of it. The official archives feed one each;
# a copy in another layout may feed several from one file (a Kaggle zip feeds all four).
DEVKIT, TRAIN, VALIDATION, BOXES = "devkit", "train", "validation", "boxes"
ROLES = (DEVKIT, TRAIN, VALIDATION, BOXES)


@dataclass(frozen=True)
class Input:
    """One file or folder a source is read from: an input asset with a blocking ``checksum`` check.

    ``feeds``: the roles it serves (:data:`ROLES`); the stages of a role depend on its inputs.
    """

    asset: str  # the asset's name, e.g. "train_archive", "kaggle_copy"
    name: str  # the file or folder name, as found where the source is
    description: str
    feeds: frozenset[str]
    kind: str = "tar"  # shown in the UI: tar, zip, folder
    md5: str = ""  # the published MD5, where there is one ("": none)


@dataclass(frozen=True)
class FetchedInput:
    """An input available locally, with its digest and what the digest should be.

    ``md5``: the MD5 of a file; of a folder, the MD5 of its manifest (every file's relative path,
    size and modification time: see :func:`folder_manifest_md5`). ``expected_md5`` is "" when
    nothing says what it should be (no published MD5 and no MD5SUMS beside it); ``problems`` are
    what the source found wrong while verifying (e.g. an empty file in a folder): both fail the
    ``checksum`` check.
    """

    input: Input
    path: Path
    size: int
    md5: str
    expected_md5: str
    expected_from: str  # "the official release", "<folder>/MD5SUMS", or why there is none
    md5_from_cache: bool
    source_version: str = ""  # what observe() said of the input this file is
    official: bool = False  # the published file itself (its MD5 is the published one)
    problems: tuple[str, ...] = ()
    digest: str = "MD5"  # what md5 is a digest of, for the check's description: "MD5", "manifest MD5"

    @property
    def archive(self) -> Input:
        """The input (the official sources' name for it)."""
        return self.input


FetchedArchive = FetchedInput  # the official sources' name


class Reading(Protocol):
    """An open handle on a split's images (one per thread or process); closed by ``with``."""

    def read(self, name: str, offset: int, size: int) -> bytes:
        """The bytes of the indexed image ``name`` (``offset`` and ``size`` from the index)."""

    def __enter__(self) -> Reading: ...

    def __exit__(self, *exc: object) -> None: ...


class ImageReader(ABC):
    """How to read a split's image bytes; small and picklable, so worker processes get one each."""

    where: str  # what it reads, for error messages (e.g. the archive's name)

    @abstractmethod
    def open(self) -> AbstractContextManager[Reading]:
        """A handle for one thread or process."""

    @abstractmethod
    def version(self, cache: ChecksumCache) -> str:
        """What the bytes read are: changes whenever they may have (a shard written from other bytes
        is written again). The verified MD5 of the archive where known."""


BoxFile = tuple[str, str, bytes]  # (name as in the official box archive, where for errors, XML bytes)


class BoxFiles(ABC):
    """The bounding-box XML files of a copy, from whatever container holds them."""

    @abstractmethod
    def files(self, split: str) -> Iterator[BoxFile]:
        """Every box file of ``split``, named as in the official archives: ``<wnid>/<wnid>_<n>.xml``
        (train), ``val/ILSVRC2012_val_<8 digits>.xml`` (validation). A name seen twice, a damaged
        or truncated container raise :class:`~ilsvrc_assets.box_xml.BoundingBoxError` naming it."""


class ImageSource(ABC):
    """A copy of ILSVRC2012: what the stages read from it, whatever its layout."""

    kind: str  # the ILSVRC_SOURCE value

    @abstractmethod
    def describe(self) -> str:
        """Where the copy is, for logs and metadata (never with credentials)."""

    # --- Its input files: the input assets ---------------------------------------------------

    @abstractmethod
    def inputs(self) -> tuple[Input, ...]:
        """The files or folders the copy is read from (each an input asset with a ``checksum`` check).

        Known without any I/O: the code location builds its input assets from them."""

    @abstractmethod
    def fetch(self, item: Input, cache: ChecksumCache | None, log: Log) -> FetchedInput:
        """Make ``item`` available locally and compute its digest (reused from ``cache`` if unchanged)."""

    @abstractmethod
    def observe(self, item: Input, log: Log) -> str:
        """A version of ``item`` as the source has it now, cheap to get (the contents are not
        read): equal strings mean unchanged. The scheduled refresh compares them."""

    def inputs_for(self, role: str) -> tuple[Input, ...]:
        """The inputs that feed ``role`` (one of :data:`ROLES`)."""
        return tuple(i for i in self.inputs() if role in i.feeds)

    # --- What the stages read -----------------------------------------------------------------

    @abstractmethod
    def read_devkit(self, log: Log) -> Devkit:
        """The devkit's facts: the 1,000 leaf synsets (WNID, ILSVRC2012_ID, words), the hierarchy's
        size and the validation ground truth. A layout without the devkit builds them from the
        shipped reference files, cross-checked with what it carries
        (:func:`ilsvrc_assets.synsets.reference_devkit`)."""

    @abstractmethod
    def index_images(
        self,
        split: str,
        known: Collection[str],
        labels: Sequence[str],
        log: Log,
        progress: Callable[[int, int], None] | None = None,
    ) -> pd.DataFrame:
        """Every image of ``split``: the columns of ``archives.TRAIN_INDEX_COLUMNS`` or
        ``archives.VALIDATION_INDEX_COLUMNS`` (``offset`` and ``size`` are what :meth:`image_reader`
        reads by). ``known``: the synsets (training images of others are refused); ``labels``: the
        validation ground truth (``labels[i - 1]`` is image i's synset)."""

    @abstractmethod
    def image_reader(self, split: str, log: Log) -> ImageReader:
        """What reads the bytes of ``split``'s indexed images."""

    @abstractmethod
    def box_files(self, log: Log) -> BoxFiles | None:
        """The bounding-box files, or None when the copy has none (:meth:`has_boxes` is False)."""

    def has_boxes(self) -> bool:
        """Whether the copy has bounding boxes: known from the configuration alone, without I/O
        (the box check asks it)."""
        return True


def checksum_verdict(fetched: FetchedInput) -> Verdict:
    """Check ``checksum`` of an input asset: its digest against the expected one (MD5SUMS or the
    published MD5) where one is known, and whatever the source found wrong while verifying it."""
    problems = list(fetched.problems)
    if fetched.expected_md5:
        problem = checksum_problem(fetched.input.name, fetched.expected_md5, fetched.md5)
        problems += [problem] if problem else []
        ok = f"{fetched.digest} {fetched.md5} as expected ({fetched.expected_from})"
    else:
        ok = f"{fetched.digest} {fetched.md5} recorded ({fetched.expected_from})"
    return Verdict(problems, ok, {"md5": fetched.md5, "expected_md5": fetched.expected_md5})


def file_version(path: Path) -> str:
    """The observed version of a local file: size and modification time in nanoseconds."""
    st = path.stat()
    return f"size={st.st_size} mtime_ns={st.st_mtime_ns}"


@dataclass(frozen=True)
class FolderManifest:
    """What :func:`folder_manifest` found under a folder."""

    md5: str  # of the lines "<relative path>\t<size>\t<mtime_ns>\n", in sorted order
    files: int
    bytes: int
    empty: tuple[str, ...]  # files of 0 bytes (a copy cut short), at most 10

    @property
    def version(self) -> str:
        return f"files={self.files} bytes={self.bytes} manifest_md5={self.md5}"


def folder_manifest(root: Path, skip: Collection[str] = ()) -> FolderManifest:
    """The manifest of every file under ``root``: relative path, size and modification time.

    A folder's digest: a published MD5 exists for none of these copies, and hashing the contents
    of 1.3 million files gives nothing to compare with, while the manifest changes whenever a
    file is added, removed, replaced or touched (what the refresh and the index need to know) at
    the cost of a stat per file. The bytes themselves are checked where they are read (JPEG
    headers, zip CRCs). Walked one folder at a time in sorted order (memory: one folder's
    names); ``skip``: top-level names to leave out.
    """
    digest = hashlib.md5()
    files = size = 0
    empty: list[str] = []
    pending = [""]
    while pending:
        relative = pending.pop()
        with os.scandir(root / relative if relative else root) as entries:
            listed = sorted(entries, key=lambda e: e.name)
        folders = []
        for entry in listed:
            name = f"{relative}/{entry.name}" if relative else entry.name
            if not relative and entry.name in skip:
                continue
            if entry.is_dir():
                folders.append(name)
                continue
            st = entry.stat()
            digest.update(f"{name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
            files += 1
            size += st.st_size
            if st.st_size == 0 and len(empty) < 10:
                empty.append(name)
        pending.extend(reversed(folders))  # depth first, in sorted order
    return FolderManifest(digest.hexdigest(), files, size, tuple(empty))


# ILSVRC_SOURCE value -> the module (under ilsvrc_assets.sources) whose ``make(settings, environ)``
# returns the source. One module per source; README, "Adding a source".
MODULES = {
    "sample": "official",
    "local": "official",
    "http": "official",
    "kaggle": "kaggle",
    "folder": "folder",
    "huggingface": "huggingface",
}


def from_settings(settings: Settings, environ: Mapping[str, str] = os.environ) -> ImageSource:
    """The source ``ILSVRC_SOURCE`` names, made by its module; credentials (where a source needs
    them) are read from ``environ`` there, never kept in the settings (they become run
    configuration, which Dagster stores)."""
    import importlib

    if settings.source not in MODULES:
        raise SourceError(f"ILSVRC_SOURCE={settings.source!r}: expected one of {', '.join(MODULES)}")
    module = importlib.import_module(f"ilsvrc_assets.sources.{MODULES[settings.source]}")
    return module.make(settings, environ)


# The sources, one module each (imported last: they build on the definitions above).
from ilsvrc_assets.sources.official import (  # noqa: E402
    ArchiveSource,
    HttpSource,
    LocalSource,
    SampleSource,
    http_version,
    local_version,
)

__all__ = [
    "BOXES",
    "DEVKIT",
    "ROLES",
    "TRAIN",
    "VALIDATION",
    "ArchiveSource",
    "BoxFile",
    "BoxFiles",
    "FetchedArchive",
    "FetchedInput",
    "FolderManifest",
    "HttpSource",
    "ImageReader",
    "ImageSource",
    "Input",
    "LocalSource",
    "Reading",
    "SampleSource",
    "SourceError",
    "checksum_verdict",
    "file_version",
    "folder_manifest",
    "from_settings",
    "http_version",
    "local_version",
]
