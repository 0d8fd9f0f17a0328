"""Where outputs go: one small interface for every write of a published output.

Every output readers consume (the synset and label tables, the box table and CSVs, the shards,
the manifest, the validation tree) is written through an :class:`OutputStore`, chosen by the
location's protocol from :data:`STORES` (fsspec's model: callers never branch on the backend).
Each store guarantees the same thing: a reader never sees a partial object under its final name;
on failure the previous object (or none) stays.

The stores: :class:`~ilsvrc_assets.storage.local.LocalStore` (a temporary name beside the target,
renamed into place), and the object stores of :mod:`~ilsvrc_assets.storage.s3` and
:mod:`~ilsvrc_assets.storage.gcs` (an upload published only when complete, verified and
conditional: :mod:`~ilsvrc_assets.storage.objects`), imported when first used.
Working files that are not outputs (locks, ledgers, indexes, caches under ``<data>/.state``) are
local by nature and use :mod:`ilsvrc_assets.fileio` directly.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO

Location = str | os.PathLike[str]


class OutputStore(ABC):
    """A place outputs are published to, whole or not at all."""

    @abstractmethod
    def open_write(self, location: Location, mode: str = "wb") -> AbstractContextManager[IO]:
        """A file to write ``location``'s new contents to; published when the block succeeds, discarded
        (the previous contents kept) when it raises."""

    @abstractmethod
    def staged_file(self, location: Location) -> AbstractContextManager[Path]:
        """A local path to write ``location``'s new contents to (for writers that need a path, such
        as TensorFlow's); published when the block succeeds, removed when it raises."""

    @abstractmethod
    def write_into(self, folder: str, name: str, data: bytes) -> None:
        """Publish ``data`` as ``folder/name``; ``folder`` exists. The fast path for many small files
        (the validation tree's 50,000 images)."""

    def write_bytes(self, location: Location, data: bytes) -> None:
        with self.open_write(location, "wb") as f:
            f.write(data)

    def write_text(self, location: Location, text: str) -> None:
        with self.open_write(location, "w") as f:
            f.write(text)

    @abstractmethod
    def remove_partial(self, folder: Location) -> int:
        """Remove what writers killed mid-write left in ``folder``; return how many were removed."""


STORES: dict[str, Callable[[], OutputStore]] = {}
"""Protocol (``""`` for a local path) -> the store serving it."""


def protocol(location: Location) -> str:
    text = os.fspath(location)
    head, sep, _ = text.partition("://")
    return head if sep and "/" not in head else ""


def store_for(location: Location) -> OutputStore:
    """The store that serves ``location`` (a local path, or a URL of a registered protocol)."""
    name = protocol(location)
    if name not in STORES:
        known = ", ".join(f"{p}://" for p in STORES if p) or "none"
        raise ValueError(
            f"{os.fspath(location)}: no output store for {name}:// (known: local paths, {known})"
        )
    return STORES[name]()


def open_output(location: Location, mode: str = "wb") -> AbstractContextManager[IO]:
    """:meth:`OutputStore.open_write` of the store serving ``location``."""
    return store_for(location).open_write(location, mode)


def write_bytes(location: Location, data: bytes) -> None:
    store_for(location).write_bytes(location, data)


def write_text(location: Location, text: str) -> None:
    store_for(location).write_text(location, text)


def _register_builtin() -> None:
    from ilsvrc_assets.storage.local import LocalStore

    STORES[""] = LocalStore
    # The object stores are imported when first asked for: their clients are optional extras, and a
    # missing one says which (pip install 'ilsvrc-assets[s3]' or '[gcs]').
    STORES["s3"] = _imported_when_used("ilsvrc_assets.storage.s3", "S3Store")
    STORES["gs"] = _imported_when_used("ilsvrc_assets.storage.gcs", "GCSStore")


def _imported_when_used(module: str, name: str) -> Callable[[], OutputStore]:
    def make() -> OutputStore:
        return getattr(importlib.import_module(module), name)()

    return make


_register_builtin()

__all__ = [
    "Location",
    "OutputStore",
    "STORES",
    "open_output",
    "protocol",
    "store_for",
    "write_bytes",
    "write_text",
]
