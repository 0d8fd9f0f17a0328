"""What a shard is: the record formats, one module each (``tfrecord``, ``webdataset``).

A record format decides the bytes of a shard file, nothing else. It says:

- its ``name``: how it is chosen (:func:`by_name`, ``ILSVRC_FORMATS``) and the Dagster kind of the
  shard assets, which are named ``<split>_<asset_suffix>`` (``train_shards``, ``train_webdataset``);
  the suffix also names its bookkeeping under ``<data>/.state`` (shard ledger, locks);
- its ``folder`` under the data folder, and the file name of each shard (:meth:`RecordFormat.file_name`
  of the shard's name, e.g. ``train-00000-of-01024``, which is also the shard's partition key);
- about how many bytes a shard will take (:meth:`RecordFormat.space_needed`), checked against the
  free space before writing;
- how to write a shard: :meth:`RecordFormat.open` gives a :class:`ShardWriter` on a path, which takes
  the shard's images one at a time, in the plan's order, and knows the size and MD5 of what it wrote;
- how to check the records as they are written: :meth:`RecordFormat.checker` takes each record the
  writer returns (and, read back, each record of a file: the same checks), and says what it found;
- the small files it publishes with each shard, if any (its :attr:`RecordFormat.companions`, e.g. the
  TFRecord shards' DALI index): their contents come from the writer once the shard is written
  (:meth:`RecordFormat.companion_data`, no second pass over the shard), or from a shard already on
  disk (:meth:`RecordFormat.companion_from_shard`, when a reused shard's companion is missing).
- how to read one back: :meth:`RecordFormat.scan` checks every record of a shard (the manifest and
  its checks), :meth:`RecordFormat.first_records` gives the first few (the previews);
- the files its readers want beside the shards, if any (:meth:`RecordFormat.dataset_files`).

Everything else about writing one shard of a plan (``shard_plan.ShardJob``) is the same for every
format and is done once, in ``shards.write_shard``, which runs in a record worker and returns the
shard's ``ShardStats``: reading each image from the archive, re-encoding PNG/CMYK as RGB JPEG
(``images.prepare``), writing under a temporary name renamed into place when complete (the
companions too, published just before the shard), the MD5, the shard's lock, and errors naming the
shard, the archive and the member. (The same division as webdataset's ``ShardWriter``: a format is
a small object that takes samples.)

Adding a format: a module here defining a :class:`RecordFormat` subclass and an
instance of it named ``FORMAT``, and its name in :data:`FORMATS`. Nothing in ``shards`` or
``shard_plan`` changes. Formats run in worker processes, so they must be picklable (keep them
free of state) and import heavy libraries (TensorFlow) only inside :meth:`RecordFormat.open`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from ilsvrc_assets.fileio import HashedWriter
    from ilsvrc_assets.images import ImageInfo
    from ilsvrc_assets.shard_plan import Box, RecordSource, ShardJob
    from ilsvrc_assets.shard_scan import ShardScan

# name -> module defining FORMAT; imported only when chosen.
FORMATS = {"tfrecord": "ilsvrc_assets.formats.tfrecord", "webdataset": "ilsvrc_assets.formats.webdataset"}
DEFAULT = "tfrecord"


@dataclass(frozen=True)
class StoredRecord:
    """A record as read back from a shard, as the previews show it."""

    filename: str
    synset: str
    label: int  # the model zoo's 1..1000
    image: bytes  # the stored JPEG
    boxes: tuple[Box, ...] = ()


class ShardWriter(Protocol):
    """An open shard file of one format, taking one image at a time."""

    bytes: int  # written so far (once the ``with`` block has ended: the file's size)
    md5: str  # hex MD5 of the bytes written so far (once the block has ended: the file's)

    def add(self, source: RecordSource, image: bytes, info: ImageInfo) -> Any:
        """Write ``image`` (the prepared bytes: an RGB or grayscale JPEG of ``info``'s size) as the
        next record, with what ``source`` says about it (file name, synset, label, text, boxes);
        returns the record as written, for the format's :class:`RecordChecker`."""


class HashedFileWriter:
    """A base for a format's :class:`ShardWriter` that writes through a ``fileio.HashedWriter``
    (``self._file``): its ``bytes`` and ``md5`` are those of the bytes as written."""

    _file: HashedWriter

    @property
    def bytes(self) -> int:
        return self._file.bytes

    @property
    def md5(self) -> str:
        return self._file.md5


class RecordChecker(Protocol):
    """The checks of one shard's records, given one at a time (see :meth:`RecordFormat.checker`)."""

    def add(self, record: Any, crc: int | None = None, decode: bool = False) -> None:
        """Check ``record`` (as the writer returned it); ``crc``: the CRC-32 its image bytes must have
        (those read from the archive; None: not compared); ``decode``: decode its image whatever
        the policy (it was re-encoded)."""

    def finish(self, size: int, md5: str) -> ShardScan:
        """What the checks found, for a file of ``size`` bytes with that MD5."""


@dataclass(frozen=True)
class Companion:
    """A small file a format publishes with each shard, in a folder of its own beside the shards' folder
    (so that readers globbing the shards' folder see shards only)."""

    kind: str  # e.g. "index": how the stats, the ledger and the metadata name it
    folder: str  # beside the format's folder, e.g. "tfrecords-index"
    suffix: str  # after the shard's file name, e.g. ".idx"

    def path(self, shard_path: Path) -> Path:
        """Where the companion of the shard at ``shard_path`` (``<data>/<format folder>/<file>``) goes."""
        return shard_path.parent.parent / self.folder / f"{shard_path.name}{self.suffix}"


class RecordFormat(ABC):
    """One way of writing a shard (see the module's docstring)."""

    name: ClassVar[str]  # e.g. "tfrecord"
    folder: ClassVar[str]  # under the data folder, e.g. "tfrecords"
    companions: ClassVar[tuple[Companion, ...]] = ()  # published with each shard (none by default)
    asset_suffix: ClassVar[str]  # its shard assets are <split>_<asset_suffix>, e.g. "shards"
    record_keys: ClassVar[tuple[str, ...]]  # what each record holds (listed in the manifest)
    # What its checks records_parse and images_decode prove, in its own terms.
    check_descriptions: ClassVar[dict[str, str]]

    def file_name(self, shard: str) -> str:
        """The file name of the shard named ``shard`` (``release.shard_name``); the name itself unless a
        format needs a suffix (e.g. ``.tar``)."""
        return shard

    @abstractmethod
    def space_needed(self, job: ShardJob) -> int:
        """About how many bytes the shard of ``job`` will take (generously: it is checked against
        the free space before writing)."""

    @abstractmethod
    def open(self, path: Path) -> AbstractContextManager[ShardWriter]:
        """A writer on a new file at ``path``, closed (complete) when the ``with`` block ends.

        ``path`` is a temporary name that the caller renames into place once the block ends
        without error, and removes otherwise. A shard without images must still be a valid file.
        """

    def companion_data(self, writer: ShardWriter, companion: Companion) -> bytes:
        """The contents of ``companion`` for the shard ``writer`` has just written (its block has ended).

        Only called for formats that declare :attr:`companions`."""
        raise NotImplementedError(f"{self.name} declares no companion {companion.kind!r}")

    def companion_from_shard(self, shard_path: Path, companion: Companion) -> bytes:
        """The contents of ``companion`` made again from the shard file at ``shard_path``: the same bytes
        :meth:`companion_data` gave when it was written. Raises ValueError if the file is damaged."""
        raise NotImplementedError(f"{self.name} declares no companion {companion.kind!r}")

    @abstractmethod
    def checker(self, name: str, policy: str) -> RecordChecker:
        """The checks of the records of the shard file ``name`` as they are written, decoding the
        images the decode ``policy`` (``shard_scan.ALL``, ``SAMPLE``, ``NONE``) names. Runs in a
        record worker."""

    @abstractmethod
    def scan(self, path: Path, decode: bool | str = True) -> ShardScan:
        """Read the shard at ``path`` back and check every record with :meth:`checker`'s checks
        (``shard_scan.ShardScan`` says what is counted); ``decode``: the decode policy (True: every
        image, False: none). Damage is reported in the result, not raised; a missing file raises
        FileNotFoundError. Runs in a record worker."""

    @abstractmethod
    def first_records(self, path: Path, count: int) -> list[StoredRecord]:
        """The first ``count`` records of the shard at ``path`` (fewer if it has fewer), unchecked."""

    def dataset_files(self, manifest: dict) -> dict[str, str]:
        """Files its readers want beside the shards ({file name: text}), made from the read-back
        summary (``manifest.build``); none by default."""
        return {}

    def __repr__(self) -> str:
        return f"<record format {self.name}>"


def by_name(name: str) -> RecordFormat:
    """The record format called ``name`` (a key of :data:`FORMATS`)."""
    if name not in FORMATS:
        raise ValueError(f"unknown record format {name!r}; known: {', '.join(sorted(FORMATS))}")
    return importlib.import_module(FORMATS[name]).FORMAT
