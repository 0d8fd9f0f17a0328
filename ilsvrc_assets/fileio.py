"""Writing files so that nothing half-written ever sits under a final name.

Every output of the preparation goes through :func:`atomic_write` (or the helpers built on it):
bytes go to a hidden temporary name in the destination folder and are renamed into place only
once complete, so an interrupted or failed step leaves the old file or no file, never a partial
one, and running again simply redoes what is missing.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

TEMP_MARKER = ".tmp-"
CHUNK = 8 * 1024 * 1024


def temp_path_for(path: Path) -> Path:
    """A unique hidden temporary name beside ``path`` (same folder, so rename is atomic)."""
    return path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")


def is_temp_path(path: Path) -> bool:
    """True for a name made by :func:`temp_path_for` (left behind only by a killed process)."""
    return path.name.startswith(".") and TEMP_MARKER in path.name


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", fsync: bool = False) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it to ``path`` when the block succeeds.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        with open(tmp, mode) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def _writer_alive(path: Path) -> bool:
    """Whether the process that made temp file ``path`` (its pid is in the name) still runs here."""
    try:
        pid = int(path.name.rsplit(TEMP_MARKER, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> int:
    """Delete temporary files left in ``folder`` (not recursive) by a killed run; return how many.

    A temp file whose writer is still alive (another run at work) is left alone.
    """
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for entry in folder.iterdir():
        if entry.is_file() and is_temp_path(entry) and not _writer_alive(entry):
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


def md5_file(path: str | os.PathLike[str], chunk: int = CHUNK) -> str:
    """Hex MD5 of a file, read in chunks (never the whole file in memory)."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_md5sums(path: str | os.PathLike[str]) -> dict[str, str]:
    """Parse an ``md5sum``-format file into {file name: md5}.

    Accepts both text (``<md5>  name``) and binary (``<md5> *name``) lines; blank lines and
    ``#`` comments are ignored. Raises ValueError naming the file and line on anything else.
    """
    path = Path(path)
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        digest, _, name = line.partition(" ")
        name = name.lstrip(" ").removeprefix("*")
        if len(digest) != 32 or any(c not in "0123456789abcdefABCDEF" for c in digest) or not name:
            raise ValueError(
                f"{path}: line {number} is not in md5sum format ('<md5>  <file name>'): {line!r}"
            )
        sums[os.path.basename(name)] = digest.lower()
    return sums


def format_md5sums(sums: dict[str, str]) -> str:
    """The inverse of :func:`read_md5sums`, sorted by name."""
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items()))
