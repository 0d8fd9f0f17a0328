"""The Hugging Face copy: the data files of the gated dataset ``ILSVRC/imagenet-1k``.

Layout (as the hub client downloads them): ``data/train_images_{0..4}.tar.gz`` and
``data/val_images.tar.gz``, flat gzip-compressed tars whose members are named
``<official stem>_<wnid>.JPEG`` (``n01440764_10026_n01440764.JPEG``,
``ILSVRC2012_val_00000001_n01751748.JPEG``): the WNID suffix is the label, and the records carry
the official file name. ``ILSVRC_LOCAL_DIR`` is the folder holding ``data/``, the snapshot folder
of a hub cache (``.../snapshots/<revision>``), or the hub cache itself (``datasets--ILSVRC--imagenet-1k``
or the folder holding it): the snapshot's files are symlinks into ``blobs/``, read where they point.

There is no devkit and no box file in this copy. The devkit's facts come from the shipped reference
files, and every validation image's WNID suffix is checked against the shipped ground truth as the
images are indexed; boxes come from the official box archives when ``ILSVRC_BOXES_DIR`` names a
folder holding them, else the box table is empty and its check says so.

Gzip cannot seek. Indexing reads each tar once, listing its members (offsets in the decompressed
tar) and saving a seek-point index of its gzip stream (:mod:`ilsvrc_assets.gzip_index`) under
``<data>/index/huggingface/``; a shard-writing worker then reads each image from the nearest seek
point (about 0.5 MiB of decompression a read). README, "The huggingface source", compares this with
one streaming pass.

With ``HF_TOKEN`` set, the files are fetched with ``huggingface_hub`` into a hub cache (its own
resume of a broken transfer, its own cache): ``ILSVRC_LOCAL_DIR`` when set, else
``<data>/huggingface``. ``HF_ENDPOINT`` is honoured. The token is held by the source only, never in
the settings, logs or metadata.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ilsvrc_assets import archives, gzip_index, release, synsets, tar_reader
from ilsvrc_assets.archives import ArchiveError, ChecksumCache, md5_of
from ilsvrc_assets.settings import ENV_LOCAL_DIR, ENV_SOURCE, Settings
from ilsvrc_assets.sources import (
    BOXES,
    TRAIN,
    VALIDATION,
    BoxFiles,
    FetchedInput,
    ImageReader,
    ImageSource,
    Input,
    Log,
    SourceError,
    file_version,
)

REPO_ID = "ILSVRC/imagenet-1k"
REPO_TYPE = "dataset"
REVISION = "main"
CACHE_FOLDER = "datasets--ILSVRC--imagenet-1k"  # the hub cache's folder of the repository
TRAIN_FILES = tuple(f"data/train_images_{i}.tar.gz" for i in range(5))
VALIDATION_FILE = "data/val_images.tar.gz"
FILES = (*TRAIN_FILES, VALIDATION_FILE)
PART_BITS = 40  # a training image's offset: part number << 40 | offset in that part's tar (1 TiB each)
ENV_HF_TOKEN = "HF_TOKEN"  # read by make() only; never a setting (settings become run configuration)
ENV_HF_ENDPOINT = "HF_ENDPOINT"  # a mirror of the hub (huggingface_hub's own variable)

_TRAIN_STEM = re.compile(r"(n\d{8})_(\d+)")


def find_data_root(root: Path) -> Path | None:
    """The folder holding ``data/`` under ``root``: ``root`` itself, or the newest-listed snapshot
    of a hub cache (the one ``refs/main`` names when there is one). None when there is none."""
    if (root / "data").is_dir():
        return root
    for repo in (root, root / CACHE_FOLDER, root / "hub" / CACHE_FOLDER):
        snapshots = repo / "snapshots"
        if not snapshots.is_dir():
            continue
        ref = repo / "refs" / REVISION
        if ref.is_file() and (snapshots / ref.read_text().strip() / "data").is_dir():
            return snapshots / ref.read_text().strip()
        found = sorted(s for s in snapshots.iterdir() if (s / "data").is_dir())
        if len(found) == 1:
            return found[0]
        if found:
            raise ArchiveError(
                f"{snapshots}: {len(found)} snapshots ({', '.join(s.name for s in found)}) and no "
                f"refs/{REVISION} saying which is current; point ILSVRC_LOCAL_DIR at one of them"
            )
    return None


def official_name(member: str) -> tuple[str, str]:
    """(official file name, WNID) of a member named ``<official stem>_<wnid>.JPEG``; ValueError if not."""
    filename = posixpath.basename(member)
    stem, ext = posixpath.splitext(filename)
    prefix, _, wnid = stem.rpartition("_")
    if ext != ".JPEG" or not prefix or not release.is_wnid(wnid):
        raise ValueError("is not an image named '<official stem>_<wnid>.JPEG'")
    return prefix + ext, wnid


def index_path(index_dir: Path, gz: Path) -> Path:
    """Where the seek-point index of ``gz`` is kept."""
    return index_dir / (gz.name + ".gzidx")


def _index_tar(gz: Path, index_dir: Path, on_member: Callable[[tar_reader.Member], None]) -> None:
    try:
        gzip_index.index_gzip_tar(gz, index_path(index_dir, gz), on_member)
    except tar_reader.TarError as e:
        what = str(e) if e.member is None else f"{e.archive}: member {e.member!r} is {e.problem}"
        raise ArchiveError(f"{gz}: {what.removeprefix(gz.name + ': ')}") from None


def index_train(
    parts: Sequence[Path],
    index_dir: Path,
    known: Collection[str],
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Every training image of the gzip tars ``parts`` (``archives.TRAIN_INDEX_COLUMNS``), each
    image's offset ``part << PART_BITS | offset in the decompressed tar``; saves each part's
    seek-point index under ``index_dir``. An image of a synset not in ``known``, a name not of the
    layout, or an image seen twice raises :class:`ArchiveError` naming the file."""
    known = frozenset(known)
    columns: dict[str, list] = {c: [] for c in archives.TRAIN_INDEX_COLUMNS}
    seen: dict[str, str] = {}  # official name -> the file it came from (1.28 million short strings)
    for part, gz in enumerate(parts):
        base = part << PART_BITS

        def on_member(member: tar_reader.Member, gz: Path = gz, base: int = base) -> None:
            try:
                filename, wnid = official_name(member.name)
            except ValueError as e:
                raise ArchiveError(f"{gz}: member {member.name!r} {e}") from None
            stem = _TRAIN_STEM.fullmatch(filename.removesuffix(".JPEG"))
            if stem is None or stem[1] != wnid:
                raise ArchiveError(
                    f"{gz}: member {member.name!r} is not a training image '<wnid>_<n>_<wnid>.JPEG' "
                    f"of one synset"
                )
            if wnid not in known:
                raise ArchiveError(
                    f"{gz}: member {member.name!r} names {wnid}, not one of the 1,000 challenge synsets"
                )
            if filename in seen:
                raise ArchiveError(
                    f"{gz}: image {filename!r} appears twice (as {member.name!r}, and before in "
                    f"{seen[filename]}); the copy is damaged: fetch it again"
                )
            seen[filename] = gz.name
            columns["filename"].append(filename)
            columns["synset"].append(wnid)
            columns["offset"].append(base | member.offset)
            columns["size"].append(member.size)

        _index_tar(gz, index_dir, on_member)
        if progress:
            progress(part + 1, len(parts))
    return pd.DataFrame(columns).astype({"offset": "int64", "size": "int64"})


def index_validation(gz: Path, index_dir: Path, labels: Sequence[str], labels_from: str) -> pd.DataFrame:
    """Every validation image of the gzip tar ``gz`` (``archives.VALIDATION_INDEX_COLUMNS``); each
    image's WNID suffix must be its label in ``labels`` (image i's at ``i - 1``; ``labels_from``
    names where they come from). Saves the seek-point index under ``index_dir``."""
    columns: dict[str, list] = {c: [] for c in archives.VALIDATION_INDEX_COLUMNS}
    seen: set[int] = set()

    def on_member(member: tar_reader.Member) -> None:
        try:
            filename, wnid = official_name(member.name)
            number = release.validation_number(filename)
        except ValueError:
            raise ArchiveError(
                f"{gz}: member {member.name!r} is not a validation image "
                f"'ILSVRC2012_val_<8 digits>_<wnid>.JPEG'"
            ) from None
        if not 1 <= number <= len(labels):
            raise ArchiveError(
                f"{gz}: member {member.name!r} has no ground-truth label "
                f"({labels_from} lists {len(labels):,} images)"
            )
        if wnid != labels[number - 1]:
            raise ArchiveError(
                f"{gz}: member {member.name!r} is labelled {wnid}, but {labels_from} says {filename} is "
                f"{labels[number - 1]}; this is not the ILSVRC2012 validation set"
            )
        if number in seen:
            raise ArchiveError(f"{gz}: image {filename!r} appears twice")
        seen.add(number)
        columns["filename"].append(filename)
        columns["number"].append(number)
        columns["synset"].append(wnid)
        columns["offset"].append(member.offset)
        columns["size"].append(member.size)

    _index_tar(gz, index_dir, on_member)
    return pd.DataFrame(columns).astype({"number": "int64", "offset": "int64", "size": "int64"})


@dataclass(frozen=True)
class GzipTarReader:
    """Images of gzip-compressed tars, by the offsets :func:`index_train` / :func:`index_validation`
    gave (part number in the high bits), through the saved seek-point indexes. Picklable."""

    parts: tuple[Path, ...]
    index_dir: Path

    @property
    def where(self) -> str:
        return (
            self.parts[0].name if len(self.parts) == 1 else f"{self.parts[0].name} ... {self.parts[-1].name}"
        )

    def open(self) -> GzipTarReading:
        return GzipTarReading(self.parts, self.index_dir)

    def version(self, cache: ChecksumCache) -> str:
        def one(path: Path) -> str:
            st = path.stat()
            return cache.get(path) or f"size={st.st_size} mtime_ns={st.st_mtime_ns}"

        return " ".join(one(p) for p in self.parts)


class GzipTarReading:
    """An open handle on a split's gzip tars (one per thread or process); each part opened when first read."""

    def __init__(self, parts: tuple[Path, ...], index_dir: Path) -> None:
        self.parts = parts
        self.index_dir = index_dir
        self._open: dict[int, gzip_index.GzipIndex] = {}

    def read(self, name: str, offset: int, size: int) -> bytes:
        part, at = offset >> PART_BITS, offset & ((1 << PART_BITS) - 1)
        if part >= len(self.parts):
            raise ArchiveError(
                f"image {name}: offset {offset} names no file of this copy; index the images again"
            )
        gz = self.parts[part]
        reader = self._open.get(part)
        try:
            if reader is None:
                reader = self._open[part] = gzip_index.GzipIndex(gz, index_path(self.index_dir, gz))
            data = reader.read(at, size)
        except gzip_index.GzipIndexError as e:
            raise ArchiveError(str(e)) from None
        except OSError as e:
            raise ArchiveError(f"{gz}: cannot read member {name} ({e})") from None
        return archives.whole_member(data, size, gz.name, name, at)

    def __enter__(self) -> GzipTarReading:
        return self

    def __exit__(self, *exc: object) -> None:
        for reader in self._open.values():
            reader.close()
        self._open.clear()


# --- Download through huggingface_hub -----------------------------------------------------------


def download(
    filename: str,
    cache_dir: Path,
    token: str,
    endpoint: str | None,
    revision: str = REVISION,
    offline: bool = False,
) -> Path:
    """``filename`` of the dataset, fetched into the hub cache ``cache_dir`` by ``huggingface_hub``
    (skipped when the cache has the current version; a broken transfer is resumed by its own
    retries). Returns the snapshot path (a symlink into ``blobs/``). ``offline``: the cached copy
    only, no request (what was fetched for the input asset)."""
    from huggingface_hub import hf_hub_download

    return Path(
        hf_hub_download(
            REPO_ID,
            filename,
            repo_type=REPO_TYPE,
            revision=revision,
            cache_dir=str(cache_dir),
            token=token,
            endpoint=endpoint,
            local_files_only=offline,
        )
    )


def remote_version(filename: str, token: str, endpoint: str | None, revision: str = REVISION) -> str:
    """The hub's version of ``filename`` now (one HEAD request): commit, ETag and size."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(REPO_ID, filename, repo_type=REPO_TYPE, revision=revision, endpoint=endpoint)
    meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
    size = meta.size if meta.size is not None else "-"
    return f"commit={meta.commit_hash or '-'} etag={meta.etag or '-'} size={size}"


# --- The source -----------------------------------------------------------------------------------


def _inputs() -> tuple[Input, ...]:
    train = tuple(
        Input(
            f"hf_train_images_{i}",
            name,
            f"part {i + 1} of 5 of the training images, a gzip-compressed tar of '<wnid>_<n>_<wnid>.JPEG'",
            frozenset({TRAIN}),
            "tar",
        )
        for i, name in enumerate(TRAIN_FILES)
    )
    validation = Input(
        "hf_val_images",
        VALIDATION_FILE,
        "the 50,000 validation images, a gzip-compressed tar of 'ILSVRC2012_val_<8 digits>_<wnid>.JPEG'",
        frozenset({VALIDATION}),
        "tar",
    )
    return (*train, validation)


INPUTS = _inputs()


def make(settings: Settings, environ: Mapping[str, str] = os.environ) -> HuggingFaceSource:
    """The source of ``ILSVRC_SOURCE=huggingface``; ``HF_TOKEN`` and ``HF_ENDPOINT`` read from ``environ``
    (the one place the token is read)."""
    token = environ.get(ENV_HF_TOKEN, "").strip() or None
    endpoint = environ.get(ENV_HF_ENDPOINT, "").strip().rstrip("/") or None
    if settings.local_dir is None and token is None:
        raise SourceError(
            f"{ENV_SOURCE}=huggingface needs {ENV_LOCAL_DIR} (the folder holding data/*.tar.gz, or a hub "
            f"cache) or {ENV_HF_TOKEN} (to fetch the files from the hub)"
        )
    return HuggingFaceSource(
        root=settings.local_dir or settings.data_dir / "huggingface",
        index_dir=settings.index_dir / "huggingface",
        boxes_dir=settings.boxes_dir,
        token=token,
        endpoint=endpoint,
    )


if TYPE_CHECKING:
    from ilsvrc_assets.sources.official import LocalSource


class HuggingFaceSource(ImageSource):
    """``ILSVRC/imagenet-1k``'s data files, in place under ``root`` or fetched into a hub cache there."""

    kind = "huggingface"

    def __init__(
        self,
        root: Path,
        index_dir: Path,
        boxes_dir: Path | None = None,
        token: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        self.root = root
        self.index_dir = index_dir
        self.boxes_dir = boxes_dir
        self._token = token  # never shown: not in describe(), repr or any message
        self.endpoint = endpoint

    def __repr__(self) -> str:
        return f"HuggingFaceSource(root={self.root!r}, token={'***' if self._token else None})"

    def describe(self) -> str:
        where = f"Hugging Face copy of {REPO_ID} in {self.root}"
        if self._token:
            where += f" (fetched from {self.endpoint or 'the Hugging Face hub'})"
        return where + (f", boxes from {self.boxes_dir}" if self.boxes_dir else ", no boxes")

    def inputs(self) -> tuple[Input, ...]:
        """The six data files; with ``ILSVRC_BOXES_DIR``, the official box archives there too."""
        if self.boxes_dir is None:
            return INPUTS
        from ilsvrc_assets.sources.official import INPUTS as OFFICIAL

        return (*INPUTS, *(i for i in OFFICIAL if BOXES in i.feeds))

    def _boxes(self) -> LocalSource:
        from ilsvrc_assets.sources.official import LocalSource

        assert self.boxes_dir is not None
        return LocalSource(self.boxes_dir)

    def locate(self, item: Input, log: Log, fetch: bool = False) -> Path:
        """The local file of ``item``. With a token, in the hub cache under the root: fetched there
        when ``fetch`` (the input asset), else the copy fetched before. Without, found under the root."""
        if BOXES in item.feeds:
            return self._boxes().locate(item, log)
        if self._token:
            if fetch:
                hub = self.endpoint or "the Hugging Face hub"
                log(f"{item.name}: from {hub} into the hub cache {self.root}")
            try:
                return download(item.name, self.root, self._token, self.endpoint, offline=not fetch)
            except Exception as e:  # huggingface_hub's errors: the hub's words, never the token
                if fetch:
                    raise SourceError(
                        f"{item.name}: fetching from {self.endpoint or 'the Hugging Face hub'} failed "
                        f"({type(e).__name__}: {e}); check {ENV_HF_TOKEN} (a token of an account that "
                        f"accepted the dataset's terms)"
                    ) from None
                raise SourceError(
                    f"{item.name}: not in the hub cache {self.root}; materialise its input asset first"
                ) from None
        if not self.root.is_dir():
            raise SourceError(
                f"{self.root}: no such folder; set {ENV_LOCAL_DIR} to the folder holding data/*.tar.gz "
                f"(or to a hub cache), or set {ENV_HF_TOKEN} to fetch the files"
            )
        data_root = find_data_root(self.root)
        path = (data_root or self.root) / item.name
        if not path.is_file():
            raise SourceError(
                f"{path}: not found. {ENV_LOCAL_DIR} must hold {', '.join(FILES)} as the hub client "
                f"downloads them (hf download {REPO_ID} --repo-type dataset --include 'data/*_images*'), "
                f"or be a hub cache holding them; or set {ENV_HF_TOKEN} to fetch them"
            )
        return path

    def fetch(self, item: Input, cache: ChecksumCache | None, log: Log) -> FetchedInput:
        if BOXES in item.feeds:
            return self._boxes().fetch(item, cache, log)
        path = self.locate(item, log, fetch=True)
        version = self.observe(item, log)
        md5, cached = md5_of(path, cache)
        log(f"{item.name}: MD5 {md5} " + ("(unchanged since last verified)" if cached else "computed"))
        return FetchedInput(
            input=item,
            path=path,
            size=path.stat().st_size,
            md5=md5,
            expected_md5="",
            expected_from="no MD5 is published for the hub's files; recorded to notice a change",
            md5_from_cache=cached,
            source_version=version,
        )

    def observe(self, item: Input, log: Log) -> str:
        """With a token, the hub's commit, ETag and size (one HEAD request); else the local file's
        size and modification time."""
        if BOXES in item.feeds:
            return self._boxes().observe(item, log)
        if self._token:
            return remote_version(item.name, self._token, self.endpoint)
        return file_version(self.locate(item, log))

    def read_devkit(self, log: Log) -> synsets.Devkit:
        """From the shipped reference files; every validation image's WNID suffix is checked against
        the shipped ground truth when the images are indexed."""
        return synsets.reference_devkit(None, "", None, "")

    def index_images(
        self,
        split: str,
        known: Collection[str],
        labels: Sequence[str],
        log: Log,
        progress: Callable[[int, int], None] | None = None,
    ) -> pd.DataFrame:
        if split == "train":
            parts = [self.locate(i, log) for i in self.inputs_for(TRAIN)]
            return index_train(parts, self.index_dir, known, progress)
        (validation,) = self.inputs_for(VALIDATION)
        return index_validation(
            self.locate(validation, log), self.index_dir, labels, "the validation ground truth"
        )

    def image_reader(self, split: str, log: Log) -> ImageReader:
        role = TRAIN if split == "train" else VALIDATION
        return GzipTarReader(tuple(self.locate(i, log) for i in self.inputs_for(role)), self.index_dir)

    def has_boxes(self) -> bool:
        return self.boxes_dir is not None

    def box_files(self, log: Log) -> BoxFiles | None:
        """The official box archives in ``ILSVRC_BOXES_DIR``; None without it (the copy has none)."""
        if self.boxes_dir is None:
            return None
        return self._boxes().box_files(log)
