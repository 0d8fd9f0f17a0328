"""Deterministic streamed archives: tar and gzip writers whose bytes depend only on what is added.

Tar headers carry a fixed time, mode and owner (:data:`TAR_MTIME`, GNU format, no PAX headers); the
gzip header no time or name. Archives are written member by member and atomically, and their MD5 and
size are computed on the way out, so no archive is read a second time.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ilsvrc_assets import fileio

# Fixed tar header fields, so the archives do not depend on when or by whom they were made.
TAR_MTIME = 1_338_508_800  # 2012-06-01 00:00 UTC, around the release
TAR_FORMAT = tarfile.GNU_FORMAT  # what GNU tar writes; no PAX headers that could carry times
GZIP_LEVEL = 6  # gzip's own default: a good size/speed balance for 50,000 small XML files


class _HashingWriter:
    """Passes writes through to a file while computing their MD5 and size (no second read)."""

    def __init__(self, f: IO[bytes]):
        self.f = f
        self.md5 = hashlib.md5()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.f.write(data)
        self.md5.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.f.flush()


@dataclass(frozen=True)
class _Written:
    md5: str
    size: int


@contextmanager
def _tar_writer(path: Path, gzipped: bool, result: list[_Written]) -> Iterator[tarfile.TarFile]:
    """A streaming tar (member by member, never held in memory) written atomically to ``path``."""
    import gzip

    with fileio.atomic_write(path) as f:
        out = _HashingWriter(f)
        # tarfile's own "w:gz" would put the current time (and the file name) in the gzip header.
        gz = (
            gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="", compresslevel=GZIP_LEVEL)
            if gzipped
            else None
        )
        try:
            with tarfile.open(fileobj=gz or out, mode="w|", format=TAR_FORMAT) as tar:
                yield tar
        finally:
            if gz is not None:
                gz.close()  # also on failure, while the file is open; atomic_write then discards it
    result.append(_Written(out.md5.hexdigest(), out.size))


def _info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.mtime = TAR_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    tar.addfile(_info(name.rstrip("/"), directory=True))
