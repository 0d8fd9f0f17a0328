"""The local store: a file is written under a hidden temporary name beside its target and renamed
into place (``rename(2)`` is atomic within a file system), so no reader sees it partial."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO

from ilsvrc_assets import fileio
from ilsvrc_assets.storage import Location, OutputStore


class LocalStore(OutputStore):
    """Outputs on a local (or mounted) file system."""

    def open_write(self, location: Location, mode: str = "wb") -> AbstractContextManager[IO]:
        return fileio.atomic_write(location, mode)

    @contextmanager
    def staged_file(self, location: Location) -> Iterator[Path]:
        path = Path(location)
        tmp = fileio.temp_path_for(path)
        try:
            yield tmp
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def write_into(self, folder: str, name: str, data: bytes) -> None:
        fileio.atomic_write_into(folder, name, data)

    def remove_partial(self, folder: Location) -> int:
        return fileio.remove_stale_temp_files(os.fspath(folder))
