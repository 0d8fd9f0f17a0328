"""The official release: its five archives, from the built-in sample, a local folder, or an HTTP(S) URL.

The layout is the official one (a train tar of 1,000 inner tars, a flat validation tar, the
devkit, two gzip-compressed tars of VOC XML box files); what differs between the three is only
how the archives get here. Each source makes an archive available as a local file and says which MD5 it must have: the one
listed in an ``MD5SUMS`` file beside the archives (a stand-in release, the sample) or else the
official one. Verifying is the same for every source.

Each source can also *observe* an archive without reading its contents: a short version string
that changes when the archive does (HTTP: the ETag, Last-Modified and Content-Length of a HEAD
request; a local folder: size and modification time; the sample: the generator's version). The
archive assets record it when they materialise, and the refresh sensor compares it with a fresh
observation to find what changed at the source.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ilsvrc_assets import archives, download, fileio, release, synsets
from ilsvrc_assets.archives import ChecksumCache, md5_of
from ilsvrc_assets.progress import reporter
from ilsvrc_assets.release import MD5SUMS, Archive
from ilsvrc_assets.settings import ENV_HTTP_URL, ENV_LOCAL_DIR, Settings
from ilsvrc_assets.sources import (
    BOXES,
    DEVKIT,
    TRAIN,
    VALIDATION,
    BoxFile,
    BoxFiles,
    FetchedInput,
    ImageReader,
    ImageSource,
    Input,
    Log,
    SourceError,
    file_version,
)

# The five archives as input assets: (archive, asset name, the role it feeds).
_ASSETS = (
    (release.IMG_TRAIN, "train_archive", TRAIN),
    (release.IMG_VAL, "validation_archive", VALIDATION),
    (release.DEVKIT, "devkit_archive", DEVKIT),
    (release.BBOX_TRAIN, "train_boxes_archive", BOXES),
    (release.BBOX_VAL, "validation_boxes_archive", BOXES),
)
INPUTS: tuple[Input, ...] = tuple(
    Input(
        asset,
        a.name,
        a.description,
        frozenset({role}),
        "tar",
        a.md5,
    )
    for a, asset, role in _ASSETS
)
_INPUT_BY_NAME = {i.name: i for i in INPUTS}


def as_input(item: Input | Archive) -> Input:
    """The input asset of an official archive (given as either)."""
    return item if isinstance(item, Input) else _INPUT_BY_NAME[item.name]


def make(settings: Settings, environ: Mapping[str, str] = os.environ) -> ArchiveSource:
    """The source of ``ILSVRC_SOURCE`` sample, local or http; an HTTP source with the credentials
    set in ``environ`` (the one place they are read)."""
    if settings.source == "local":
        assert settings.local_dir is not None
        return LocalSource(settings.local_dir)
    if settings.source == "http":
        if not settings.http_url:
            raise SourceError(f"set {ENV_HTTP_URL} to the base URL of the archives")
        return HttpSource(settings.http_url, settings.download_dir, download.Credentials.from_env(environ))
    return SampleSource(settings.sample_dir)


class ArchiveSource(ImageSource):
    """The official release, from a place its five archives come from."""

    def inputs(self) -> tuple[Input, ...]:
        return INPUTS

    # --- What the stages read: the official layout ------------------------------------------

    def read_devkit(self, log: Log) -> synsets.Devkit:
        return synsets.read_devkit(self.locate(release.DEVKIT, log))

    def index_images(
        self,
        split: str,
        known: Collection[str],
        labels: Sequence[str],
        log: Log,
        progress: Callable[[int, int], None] | None = None,
    ) -> pd.DataFrame:
        if split == "train":
            path = self.locate(release.IMG_TRAIN, log)
            return archives.index_train_archive(
                path, frozenset(known), progress and (lambda done, total, _wnid: progress(done, total))
            )
        return archives.index_validation_archive(self.locate(release.IMG_VAL, log), labels)

    def image_reader(self, split: str, log: Log) -> ImageReader:
        archive = release.IMG_TRAIN if split == "train" else release.IMG_VAL
        return ArchiveReader(self.locate(archive, log))

    def box_archives(self, log: Log) -> tuple[Path, Path]:
        """The training and validation box archives (gzip-compressed tars of VOC XML)."""
        return self.locate(release.BBOX_TRAIN, log), self.locate(release.BBOX_VAL, log)

    def box_files(self, log: Log) -> BoxFiles:
        return TarBoxFiles(*self.box_archives(log))

    # --- Where the archives come from ----------------------------------------------------------

    @abstractmethod
    def folder(self, log: Log) -> Path:
        """The local folder the archives are in (made ready first where needed)."""

    @abstractmethod
    def observe(self, archive: Input | Archive, log: Log) -> str:
        """A version of ``archive`` as the source has it now, cheap to get (the contents are not read).

        Equal strings mean the archive has not changed; a different string means it (probably) has.
        """

    def locate(self, archive: Input | Archive, log: Log) -> Path:
        """Make ``archive`` available as a local file and return its path."""
        path = self.folder(log) / archive.name
        if not path.is_file():
            raise SourceError(
                f"{path}: archive not found. Put {archive.name} there, or point {ENV_LOCAL_DIR} at the "
                f"folder that holds the official archives"
            )
        return path

    def expected_md5s(self, log: Log) -> tuple[dict[str, str], str]:
        """{archive name: MD5} and where they come from: the folder's MD5SUMS, else the official ones."""
        md5sums = self.folder(log) / MD5SUMS
        if md5sums.is_file():
            listed = fileio.read_md5sums(md5sums)
            return {a.name: listed.get(a.name, a.md5) for a in release.ARCHIVES}, str(md5sums)
        return {a.name: a.md5 for a in release.ARCHIVES}, "the official release"

    def fetch(self, archive: Input | Archive, cache: ChecksumCache | None, log: Log) -> FetchedInput:
        """Locate the archive and compute its MD5 (reused from ``cache`` when the file is unchanged)."""
        path = self.locate(archive, log)
        return self._verify(archive, path, self.observe(archive, log), cache, log)

    def _verify(
        self, archive: Input | Archive, path: Path, source_version: str, cache: ChecksumCache | None, log: Log
    ) -> FetchedInput:
        item = as_input(archive)
        expected, expected_from = self.expected_md5s(log)
        md5, cached = md5_of(path, cache)
        log(f"{item.name}: MD5 {md5} " + ("(unchanged since last verified)" if cached else "computed"))
        return FetchedInput(
            input=item,
            path=path,
            size=path.stat().st_size,
            md5=md5,
            expected_md5=expected[item.name],
            expected_from=expected_from,
            md5_from_cache=cached,
            source_version=source_version,
            official=md5 == item.md5,
        )


class LocalSource(ArchiveSource):
    """A folder holding the official archives, used in place (never copied)."""

    kind = "local"

    def __init__(self, root: Path):
        self.root = root

    def describe(self) -> str:
        return f"local folder {self.root}"

    def folder(self, log: Log) -> Path:
        if not self.root.is_dir():
            raise SourceError(
                f"{self.root}: no such folder; set {ENV_LOCAL_DIR} to the folder holding the archives"
            )
        return self.root

    def observe(self, archive: Input | Archive, log: Log) -> str:
        """Size and modification time (of the file a symlink points at): what the MD5 cache keys on too."""
        return local_version(self.locate(archive, log))


class SampleSource(ArchiveSource):
    """The built-in sample release, generated once into a cache folder."""

    kind = "sample"

    def __init__(self, cache_dir: Path):
        self.cache_dir = cache_dir
        self._ready = False

    def describe(self) -> str:
        from ilsvrc_assets import sample

        return f"built-in sample v{sample.SAMPLE_VERSION} in {self.cache_dir}"

    def folder(self, log: Log) -> Path:
        if not self._ready:
            from ilsvrc_assets import sample

            if not sample.is_complete(self.cache_dir, sample.SampleSpec()):
                log(f"generating the built-in sample release in {self.cache_dir}")
                sample.ensure_sample(self.cache_dir, progress=log)
            self._ready = True
        return self.cache_dir

    def observe(self, archive: Input | Archive, log: Log) -> str:
        """The generator's version: the same version writes byte-identical archives."""
        from ilsvrc_assets import sample

        return f"built-in sample v{sample.SAMPLE_VERSION}"


class HttpSource(ArchiveSource):
    """Archives at an HTTP(S) base URL, downloaded (with resume) into a local folder.

    ``credentials`` (default: none) go with every request to the server; :func:`from_settings`
    reads them from the environment. They are never stored in settings, logs or metadata.
    """

    kind = "http"

    def __init__(
        self, base_url: str, download_dir: Path, credentials: download.Credentials = download.Credentials()
    ):
        self.base_url = base_url
        self.download_dir = download_dir
        self.credentials = credentials
        self._expected: tuple[dict[str, str], str] | None = None

    def describe(self) -> str:
        return f"{download.redact_url(self.base_url)} (downloaded to {self.download_dir})"

    def folder(self, log: Log) -> Path:
        self.download_dir.mkdir(parents=True, exist_ok=True)
        return self.download_dir

    def expected_md5s(self, log: Log) -> tuple[dict[str, str], str]:
        """An MD5SUMS file at the base URL if the server has one, else the official MD5s."""
        if self._expected is None:
            official = {a.name: a.md5 for a in release.ARCHIVES}
            url = download.archive_url(self.base_url, MD5SUMS)
            target = self.folder(log) / MD5SUMS
            try:
                target.unlink(missing_ok=True)  # always the server's current list
                download.download(url, target, credentials=self.credentials, retries=2)
            except download.DownloadError as e:
                if not e.not_found:
                    raise
                self._expected = official, "the official release"
            else:
                listed = fileio.read_md5sums(target)
                self._expected = (
                    {n: listed.get(n, md5) for n, md5 in official.items()},
                    f"{download.redact_url(url)}",
                )
        return self._expected

    def observe(self, archive: Input | Archive, log: Log) -> str:
        """ETag, Last-Modified and Content-Length from a HEAD request."""
        return http_version(self._remote_info(archive))

    def _remote_info(self, archive: Input | Archive) -> dict[str, int | str | None]:
        url = download.archive_url(self.base_url, archive.name)
        return download.remote_info(url, credentials=self.credentials)

    def fetch(self, archive: Input | Archive, cache: ChecksumCache | None, log: Log) -> FetchedInput:
        """Download the archive unless the copy here is of the version the server has now.

        The version being downloaded is written beside the download first (``<name>.source-version``),
        so a copy, or the part of one an interrupted download left, is kept only while the server
        still has that version; after a change it is deleted and the new one downloaded.
        """
        dest = self.folder(log) / archive.name
        info = self._remote_info(archive)
        version = http_version(info)
        marker = dest.with_name(dest.name + VERSION_SUFFIX)
        known = marker.read_text().strip() if marker.is_file() else None
        partial = download.partial_path(dest)
        stale = None  # why the bytes here are not of the version the server has now
        if known is not None and known != version:
            stale = f"was {known}, now {version}"
        elif known is None and dest.is_file() and info["content_length"] not in (None, dest.stat().st_size):
            # Downloaded before versions were recorded: kept while the size still agrees.
            stale = f"{dest.stat().st_size} bytes here, {info['content_length']} at the source"
        if stale and (dest.is_file() or partial.is_file()):
            log(
                f"{archive.name}: changed at the source since it was downloaded ({stale}); downloading it again"
            )
            dest.unlink(missing_ok=True)
            partial.unlink(missing_ok=True)
        if known != version:
            fileio.atomic_write_text(marker, version + "\n")
        path = self.locate(archive, log)
        return self._verify(archive, path, version, cache, log)

    def locate(self, archive: Input | Archive, log: Log) -> Path:
        dest = self.folder(log) / archive.name
        if dest.is_file():
            return dest
        expected, _ = self.expected_md5s(log)
        url = download.archive_url(self.base_url, archive.name)
        log(f"{archive.name}: downloading from {download.redact_url(url)}")
        download.download(
            url,
            dest,
            expected_md5=expected[archive.name],
            credentials=self.credentials,
            progress=reporter(archive.name, "MB", log, scale=1e6, resumed=True),  # MB/s from where it resumed
        )
        return dest


VERSION_SUFFIX = ".source-version"  # beside a download: the version of the archive it is


local_version = file_version  # the observed version of a local file: size and modification time


def http_version(info: Mapping[str, int | str | None]) -> str:
    """The observed version of a file at a URL, from what :func:`download.remote_info` returns."""
    return (
        f"etag={info.get('etag') or '-'} last_modified={info.get('last_modified') or '-'} "
        f"size={info.get('content_length') if info.get('content_length') is not None else '-'}"
    )


@dataclass(frozen=True)
class ArchiveReader(ImageReader):
    """Images of an uncompressed tar, each by its offset and size from the index (one seek, one read)."""

    path: Path

    @property
    def where(self) -> str:
        return self.path.name

    def open(self) -> ArchiveReading:
        return ArchiveReading(self.path)

    def version(self, cache: ChecksumCache) -> str:
        return cache.get(self.path) or local_version(self.path)


class ArchiveReading:
    """An open handle on the archive (one per thread or process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "rb")

    def read(self, name: str, offset: int, size: int) -> bytes:
        self.file.seek(offset)
        return archives.whole_member(self.file.read(size), size, self.path.name, name, offset)

    def __enter__(self) -> ArchiveReading:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


@dataclass(frozen=True)
class TarBoxFiles(BoxFiles):
    """The official box archives: gzip-compressed tars of VOC XML, streamed (never extracted)."""

    train: Path
    validation: Path

    def files(self, split: str) -> Iterator[BoxFile]:
        from ilsvrc_assets.bounding_boxes import tar_box_files

        return tar_box_files(self.train if split == "train" else self.validation)
