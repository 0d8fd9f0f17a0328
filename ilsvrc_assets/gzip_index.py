"""Random access into a gzip-compressed tar: a seek-point index of its stream, read a window at a time.

Gzip cannot seek: to read a member in the middle, everything before it must be decompressed. A
seek-point index (zlib's ``zran``) records, every ``SPACING`` bytes of output, where a deflate
block starts in the compressed file (byte and bit) and the 32 KiB of output before it (the window
its back-references may reach); reading from there needs only the bytes from the nearest point on.

:func:`index_gzip_tar` makes the index with ``indexed_gzip`` in the same single pass that lists the
tar's members (:func:`tar_reader.stream_members` over the decompressing file), and saves it in
``indexed_gzip``'s file format (``GZIDX``). :class:`GzipIndex` reads that file back, keeping only
the small table of points in memory (18 bytes a point) and reading a point's window from the file
when it is used, so a reader's memory stays flat whatever the archive's size (``indexed_gzip``
itself loads every window: 4.5 GB for the training images at a 1 MiB spacing). The
decompression from a point is Python's zlib with the window as its dictionary; a point inside a
byte is entered by shifting the compressed bytes by the point's bit offset (what zlib's
``inflatePrime`` does, which Python does not offer).

README, "The huggingface source", gives the measurements behind this choice.
"""

from __future__ import annotations

import bisect
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ilsvrc_assets import tar_reader

SPACING = 1 << 20  # bytes of output between seek points: ~2.5 ms a random read, index ~3 % of the data
_MAGIC = b"GZIDX"
_HEADER = struct.Struct(
    "<5sBBQQIII"
)  # magic, version, flags, compressed, uncompressed, spacing, window, points
_POINT_V1 = struct.Struct("<QQBB")  # compressed offset, uncompressed offset, bits, has a window
_POINT_V0 = struct.Struct("<QQB")


class GzipIndexError(ValueError):
    """A gzip file or its index cannot be read; the message names the file and what to do."""


@contextmanager
def _indexed(path: Path) -> Iterator[BinaryIO]:
    import indexed_gzip

    if not path.is_file():
        raise tar_reader.TarError(str(path), "archive not found")
    try:
        with indexed_gzip.IndexedGzipFile(str(path), spacing=SPACING, buffer_size=1 << 20) as file:
            yield file
    except (indexed_gzip.ZranError, EOFError, OSError, zlib.error) as e:
        raise tar_reader.TarError(
            path.name,
            f"cannot be read as a gzip-compressed tar ({type(e).__name__}: {e}); if it is damaged or "
            f"truncated, delete it and fetch it again",
        ) from e


def index_gzip_tar(path: Path, index_path: Path, on_member: Callable[[tar_reader.Member], None]) -> None:
    """One pass over the gzip-compressed tar ``path``: ``on_member`` for each regular member (its
    offset and size in the decompressed tar), and the seek-point index saved to ``index_path``
    (written under a temporary name, renamed when complete). The stream is read to its end, so
    gzip's CRC and length are checked; damage raises :class:`tar_reader.TarError` naming the file."""
    with _indexed(path) as file:
        for member, _ in tar_reader.stream_members(file, path.name, wanted=lambda _name: False):
            on_member(member)
        while file.read(1 << 20):  # the end blocks and the gzip trailer (CRC, length)
            pass
        index_path.parent.mkdir(parents=True, exist_ok=True)
        # indexed_gzip writes to a path: exported beside, then renamed into place.
        temporary = index_path.with_name(index_path.name + ".partial")
        file.export_index(str(temporary))
        os.replace(temporary, index_path)


@dataclass(frozen=True)
class _Points:
    compressed: tuple[int, ...]
    uncompressed: tuple[int, ...]
    bits: tuple[int, ...]
    window_at: tuple[int, ...]  # where the point's window lies in the index file (-1: none)
    window_size: int
    compressed_size: int
    uncompressed_size: int


def _read_points(index_path: Path) -> _Points:
    try:
        with open(index_path, "rb") as file:
            head = file.read(_HEADER.size)
            if len(head) != _HEADER.size or not head.startswith(_MAGIC):
                raise GzipIndexError(f"{index_path}: not a gzip seek-point index; delete it and index again")
            _, version, _flags, compressed, uncompressed, _spacing, window, count = _HEADER.unpack(head)
            point = _POINT_V1 if version >= 1 else _POINT_V0
            table = file.read(point.size * count)
    except FileNotFoundError:
        raise GzipIndexError(
            f"{index_path}: gzip seek-point index not found; materialise the image index asset again"
        ) from None
    if len(table) != point.size * count:
        raise GzipIndexError(
            f"{index_path}: cut short; delete it and materialise the image index asset again"
        )
    rows = list(point.iter_unpack(table))
    at = _HEADER.size + len(table)
    window_at = []
    for row in rows:
        has_window = row[3] if version >= 1 else row[1] > 0
        window_at.append(at if has_window else -1)
        at += window if has_window else 0
    if at != index_path.stat().st_size:
        raise GzipIndexError(f"{index_path}: damaged (its size is not what its points say); index again")
    return _Points(
        tuple(r[0] for r in rows),
        tuple(r[1] for r in rows),
        tuple(r[2] for r in rows),
        tuple(window_at),
        window,
        compressed,
        uncompressed,
    )


def _shifted(data: bytes, shift: int) -> bytes:
    """``data`` as a bit stream (least significant bit first) without its first ``shift`` bits."""
    if not shift:
        return data
    a = np.frombuffer(data, dtype=np.uint8)
    out = (a[:-1] >> shift) | ((a[1:] << (8 - shift)) & 0xFF)
    return out.astype(np.uint8).tobytes()


class GzipIndex:
    """Reads byte ranges of a gzip file's decompressed stream through its saved seek-point index.

    Open one per thread or process (it holds two file handles); close it with ``with``.
    """

    def __init__(self, path: Path, index_path: Path) -> None:
        self.path = path
        self.index_path = index_path
        self._points = _read_points(index_path)
        self._gz = open(path, "rb")
        self._index = open(index_path, "rb")
        if os.fstat(self._gz.fileno()).st_size != self._points.compressed_size:
            self.close()
            raise GzipIndexError(
                f"{path.name}: its size is not the one its seek-point index {index_path} was made for; "
                f"materialise the image index asset again"
            )

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes of the decompressed stream from ``offset``; fewer only past its end."""
        points = self._points
        i = bisect.bisect_right(points.uncompressed, offset) - 1
        if i < 0:  # no point before it (a small file has none): from the start, gzip header and all
            start, bits, window, skip, wbits = 0, 0, b"", offset, zlib.MAX_WBITS | 16
        else:
            start, bits, skip, wbits = (
                points.compressed[i],
                points.bits[i],
                offset - points.uncompressed[i],
                -zlib.MAX_WBITS,
            )
            window = b""
            if points.window_at[i] >= 0:
                window = os.pread(self._index.fileno(), points.window_size, points.window_at[i])
        wanted = skip + size
        at = start - 1 if bits else start
        chunk = wanted + (wanted >> 3) + 65536  # deflate's worst case is a few bytes per 64 KiB more
        while True:
            data = os.pread(self._gz.fileno(), chunk, at)
            stream = _shifted(data, 8 - bits) if bits else data
            inflate = zlib.decompressobj(wbits, zdict=window) if window else zlib.decompressobj(wbits)
            try:
                out = inflate.decompress(stream, wanted)
            except zlib.error as e:
                raise GzipIndexError(
                    f"{self.path.name}: cannot decompress from byte {start:,} ({e}); the file is damaged or "
                    f"not the one indexed: delete it, fetch it again and materialise the image index again"
                ) from None
            if len(out) >= wanted or inflate.eof or len(data) < chunk:
                break
            chunk *= 2  # compressed more loosely than expected: read further
        return out[skip:wanted]

    def close(self) -> None:
        self._gz.close()
        self._index.close()

    def __enter__(self) -> GzipIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
