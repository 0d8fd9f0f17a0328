"""Writing files so that nothing half-written ever sits under a final name.

Every output of the preparation goes through :func:`atomic_write` (or the helpers built on it):
bytes go to a hidden temporary name in the destination folder and are renamed into place only
once complete, so an interrupted or failed step leaves the old file or no file, never a partial
one, and running again simply redoes what is missing.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

TEMP_MARKER = ".tmp-"
CHUNK = 8 * 1024 * 1024


class DiskFullError(OSError):
    """Not enough free space (or inodes) for a step's outputs; the message says where and how much."""

    def __str__(self) -> str:
        return str(self.strerror)


class BusyError(RuntimeError):
    """Another run holds the lock on what this run wants to write; the message names it."""


def temp_path_for(path: Path) -> Path:
    """A unique hidden temporary name beside ``path`` (same folder, so rename is atomic)."""
    return path.with_name(_temp_name(path.name))


def _temp_name(name: str) -> str:
    return f".{name}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"


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
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC and not isinstance(e, DiskFullError):
            raise disk_full(path, e) from e
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_into(folder: str, name: str, data: bytes) -> None:
    """Write ``data`` to ``folder/name`` atomically; ``folder`` must exist.

    :func:`atomic_write_bytes` for many small files (the validation tree's 50,000 images): plain
    strings and system calls, no folder creation, the same temporary names.
    """
    tmp = f"{folder}/{_temp_name(name)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(tmp, f"{folder}/{name}")
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise disk_full(f"{folder}/{name}", e) from e
        raise


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
    return pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host."""
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


class HashedWriter:
    """A binary file being written, with the size and MD5 of the bytes written through it, so that a
    writer knows its file's checksum without reading the file again."""

    def __init__(self, file: IO[bytes]):
        self.file = file
        self.bytes = 0
        self._md5 = hashlib.md5()

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self._md5.update(data)
        self.bytes += len(data)

    @property
    def md5(self) -> str:
        """The hex MD5 of everything written so far."""
        return self._md5.hexdigest()


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


# --- Free space -------------------------------------------------------------------------------


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KB'`` (decimal units, as ``df -H`` and disk vendors count)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def disk_full(path: str | os.PathLike[str], error: OSError | None = None) -> DiskFullError:
    """A :class:`DiskFullError` for a write to ``path`` that ran out of space."""
    folder = Path(path).parent
    try:
        free = f"{format_bytes(shutil.disk_usage(folder).free)} free now"
    except OSError:
        free = "free space unknown"
    return DiskFullError(
        errno.ENOSPC,
        f"no space left on the device writing {path} ({free}); nothing was left half-written: "
        f"free up space (or point ILSVRC_DATA_DIR at a bigger disk) and run again to continue",
    )


def space_needed(sizes: Iterable[int], folder: str | os.PathLike[str]) -> tuple[int, int]:
    """(bytes, files) that files of ``sizes`` take on the filesystem of ``folder``, block-rounded."""
    folder = _existing_ancestor(Path(folder))
    block = os.statvfs(folder).f_frsize or 4096
    total = files = 0
    for size in sizes:
        total += -(-int(size) // block) * block or block
        files += 1
    return total, files


def require_free_space(
    folder: str | os.PathLike[str], needed_bytes: int, needed_files: int, what: str
) -> None:
    """Refuse to start ``what`` when ``folder``'s filesystem lacks the space or inodes it will take.

    Checked before a long step starts writing, so a full disk is reported at once, with the
    amount needed, rather than hours later mid-write. (Writes still go through
    :func:`atomic_write`, so a disk filled by someone else meanwhile leaves nothing partial.)
    """
    folder = Path(folder)
    probe_at = _existing_ancestor(folder)
    st = os.statvfs(probe_at)
    free = st.f_bavail * st.f_frsize
    if needed_bytes > free:
        raise DiskFullError(
            errno.ENOSPC,
            f"{what} needs about {format_bytes(needed_bytes)} in {folder}, but only "
            f"{format_bytes(free)} is free there: free up {format_bytes(needed_bytes - free)} "
            f"(or point ILSVRC_DATA_DIR at a bigger disk) and run again; nothing has been written",
        )
    if st.f_files and needed_files > st.f_favail:
        raise DiskFullError(
            errno.ENOSPC,
            f"{what} needs {needed_files:,} files in {folder}, but the filesystem has only "
            f"{st.f_favail:,} free inodes: free some or use a filesystem with more, and run again",
        )


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# --- Locks ------------------------------------------------------------------------------------


@contextmanager
def exclusive(lock_path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` for the block, or raise :class:`BusyError` at once.

    Two runs writing the same output at the same time (two ``ilsvrc-assets build``, or a UI run
    and a command-line run of the same asset) would race on its files; the second one is refused
    with a message naming the holder instead. The lock is an ``flock`` on an open file, so the
    kernel releases it when the holder exits, even when it is killed: no stale lock ever blocks
    a later run.
    """
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(
                f"{what} is in use by another run ({_holder(fd)}, lock {lock_path}); wait for it "
                f"to finish (or stop it) and run again"
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int, wait: float = 1.0) -> str:
    """Who holds the lock, from what it wrote into the file right after taking it.

    A holder that has only just taken the lock may not have written yet: read again for up to
    ``wait`` seconds before giving up on naming it.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            holder = json.loads(os.pread(fd, 4096, 0))
            return f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() >= deadline:
                return "a process that is just starting"
            time.sleep(0.01)
