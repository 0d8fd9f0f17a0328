"""The local store: a file is written under a hidden temporary name beside its target and renamed
into place (``rename(2)`` is atomic within a file system), so no reader sees it partial."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import IO

from ilsvrc_assets import fileio
from ilsvrc_assets.storage import Location, OutputStore


class LocalStore(OutputStore):
    """Outputs on a local (or mounted) file system."""

    def open_write(self, location: Location, mode: str = "wb") -> AbstractContextManager[IO]:
        return fileio.atomic_write(location, mode)

    def write_into(self, folder: str, name: str, data: bytes) -> None:
        fileio.atomic_write_into(folder, name, data)

    def remove_partial(self, folder: Location) -> int:
        return fileio.remove_stale_temp_files(os.fspath(folder))
