"""Where images come from: one interface for every copy of ILSVRC2012, whatever its layout.

An :class:`ImageSource` says, for the stages, what a copy holds: its input files (each an input
asset, verified by checksum and observed for the scheduled refresh), the devkit's facts (the
1,000 synsets and the validation ground truth), an index of each split's images (file name,
synset, where its bytes lie), a reader for those bytes, and the bounding-box files. The stages
never branch on which source they have.

One module per source, chosen by ``ILSVRC_SOURCE`` in :func:`from_settings`:

- :mod:`ilsvrc_assets.sources.official`: the five official archives, from the built-in sample
  (``sample``), a local folder (``local``) or an HTTP(S) URL (``http``).

README, "Adding a source", says how to add one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pandas as pd

from ilsvrc_assets.archives import ChecksumCache, checksum_problem
from ilsvrc_assets.release import Archive
from ilsvrc_assets.stage import Log, Verdict

if TYPE_CHECKING:
    from ilsvrc_assets.settings import Settings
    from ilsvrc_assets.synsets import Devkit


class SourceError(RuntimeError):
    """An input cannot be had from the configured source; the message says what to do."""


@dataclass(frozen=True)
class FetchedArchive:
    """An input file available locally, with what its checksum is and should be."""

    archive: Archive
    path: Path
    size: int
    md5: str
    expected_md5: str
    expected_from: str  # "the official release" or "<folder>/MD5SUMS"
    md5_from_cache: bool
    source_version: str = ""  # what observe() said of the archive this file is

    @property
    def official(self) -> bool:
        """True when this is the official file (its MD5 is the release's)."""
        return self.md5 == self.archive.md5


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


class ImageSource(ABC):
    """A copy of ILSVRC2012: what the stages read from it, whatever its layout."""

    kind: str  # the ILSVRC_SOURCE value

    @abstractmethod
    def describe(self) -> str:
        """Where the copy is, for logs and metadata (never with credentials)."""

    # --- Its input files: the input assets ---------------------------------------------------

    @abstractmethod
    def inputs(self) -> tuple[Archive, ...]:
        """The files the copy is read from (each an input asset with a ``checksum`` check)."""

    @abstractmethod
    def fetch(self, archive: Archive, cache: ChecksumCache | None, log: Log) -> FetchedArchive:
        """Make ``archive`` available locally and compute its MD5 (reused from ``cache`` if unchanged)."""

    @abstractmethod
    def observe(self, archive: Archive, log: Log) -> str:
        """A version of ``archive`` as the source has it now, cheap to get (the contents are not
        read): equal strings mean unchanged. The scheduled refresh compares them."""

    @abstractmethod
    def locate(self, archive: Archive, log: Log) -> Path:
        """The local path of ``archive`` (fetched first where needed)."""

    # --- What the stages read -----------------------------------------------------------------

    @abstractmethod
    def read_devkit(self, log: Log) -> Devkit:
        """The devkit's facts: the 1,000 leaf synsets (WNID, ILSVRC2012_ID, words), the hierarchy's
        size and the validation ground truth."""

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
    def box_archives(self, log: Log) -> tuple[Path, Path]:
        """The training and validation bounding-box archives (gzip-compressed tars of VOC XML)."""


def checksum_verdict(fetched: FetchedArchive) -> Verdict:
    """Check ``checksum`` of an input asset: its MD5 against MD5SUMS or the official one."""
    problem = checksum_problem(fetched.archive.name, fetched.expected_md5, fetched.md5)
    return Verdict(
        [problem] if problem else [],
        f"MD5 {fetched.md5} as expected ({fetched.expected_from})",
        {"md5": fetched.md5, "expected_md5": fetched.expected_md5},
    )


def from_settings(settings: Settings, environ: Mapping[str, str] = os.environ) -> ImageSource:
    """The source ``ILSVRC_SOURCE`` names; an HTTP source with the credentials set in ``environ``.

    The one place the credentials are read (they are not settings: settings become run
    configuration, which Dagster stores).
    """
    from ilsvrc_assets import download
    from ilsvrc_assets.settings import ENV_HTTP_URL

    if settings.source == "local":
        assert settings.local_dir is not None
        return LocalSource(settings.local_dir)
    if settings.source == "http":
        if not settings.http_url:
            raise SourceError(f"set {ENV_HTTP_URL} to the base URL of the archives")
        return HttpSource(settings.http_url, settings.download_dir, download.Credentials.from_env(environ))
    return SampleSource(settings.sample_dir)


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
    "ArchiveSource",
    "FetchedArchive",
    "HttpSource",
    "ImageReader",
    "ImageSource",
    "LocalSource",
    "Reading",
    "SampleSource",
    "SourceError",
    "checksum_verdict",
    "from_settings",
    "http_version",
    "local_version",
]
