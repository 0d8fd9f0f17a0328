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


class _Inflating:
    """A decompression in progress from a seek point: the output position it has reached, and more of
    it on demand, reading the compressed file a chunk at a time."""

    CHUNK = 1 << 18  # compressed bytes read at a time

    def __init__(self, fd: int, at: int, shift: int, inflate: zlib._Decompress, position: int) -> None:
        self.fd = fd
        self.started_at = at + 1 if shift else at  # the seek point's byte, for messages
        self.at = at  # the next compressed byte to read (with ``shift``: the byte before it, too)
        self.shift = shift  # bits of each byte that belong to the byte before (0: none)
        self.inflate = inflate
        self.position = position  # offset in the decompressed stream of the next byte out
        self.ended = False

    def take(self, size: int) -> bytes:
        """The next ``size`` bytes of output (fewer only at the end of the stream)."""
        parts = []
        while size > 0 and not self.ended:
            feed = self.inflate.unconsumed_tail
            if not feed:
                data = os.pread(self.fd, self.CHUNK, self.at)
                if len(data) <= (1 if self.shift else 0):
                    self.ended = True
                    break
                # A shifted chunk ends one byte short: its last byte is read again with the next chunk.
                self.at += len(data) - 1 if self.shift else len(data)
                feed = _shifted(data, self.shift)
            out = self.inflate.decompress(feed, size)
            self.position += len(out)
            size -= len(out)
            parts.append(out)
            if self.inflate.eof:
                self.ended = True
        return b"".join(parts)

    def skip(self, size: int) -> None:
        """Decompress and drop the next ``size`` bytes, a bounded piece at a time."""
        while size > 0 and not self.ended:
            size -= len(self.take(min(size, 1 << 20)))


class GzipIndex:
    """Reads byte ranges of a gzip file's decompressed stream through its saved seek-point index.

    Open one per thread or process (it holds two file handles); close it with ``with``.
    """

    def __init__(self, path: Path, index_path: Path) -> None:
        self.path = path
        self.index_path = index_path
        self._points = _read_points(index_path)
        self._stream: _Inflating | None = None  # the decompression the last read left off in
        self._gz = open(path, "rb")
        self._index = open(index_path, "rb")
        if os.fstat(self._gz.fileno()).st_size != self._points.compressed_size:
            self.close()
            raise GzipIndexError(
                f"{path.name}: its size is not the one its seek-point index {index_path} was made for; "
                f"materialise the image index asset again"
            )

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes of the decompressed stream from ``offset``; fewer only past its end.

        A read at or after the end of the previous one, before the next seek point, continues the
        previous decompression instead of starting again from a point: reading members in archive
        order (a tree, a contiguous run of members) is then one pass over the stream, not one
        decompression of up to ``SPACING`` bytes per member.
        """
        points = self._points
        i = bisect.bisect_right(points.uncompressed, offset) - 1
        stream = self._stream
        point = points.uncompressed[i] if i >= 0 else 0
        if stream is None or not point <= stream.position <= offset or stream.ended:
            stream = self._stream = self._start_at(i)
        try:
            stream.skip(offset - stream.position)
            return stream.take(size)
        except zlib.error as e:
            self._stream = None
            raise GzipIndexError(
                f"{self.path.name}: cannot decompress from byte {stream.started_at:,} ({e}); the file is "
                f"damaged or not the one indexed: delete it, fetch it again and materialise the image "
                f"index again"
            ) from None

    def _start_at(self, i: int) -> _Inflating:
        """A decompression from seek point ``i`` (from the start of the file if ``i`` < 0)."""
        points = self._points
        if i < 0:  # no point before it (a small file has none): from the start, gzip header and all
            return _Inflating(self._gz.fileno(), 0, 0, zlib.decompressobj(zlib.MAX_WBITS | 16), 0)
        window = b""
        if points.window_at[i] >= 0:
            window = os.pread(self._index.fileno(), points.window_size, points.window_at[i])
        inflate = (
            zlib.decompressobj(-zlib.MAX_WBITS, zdict=window)
            if window
            else zlib.decompressobj(-zlib.MAX_WBITS)
        )
        start, bits = points.compressed[i], points.bits[i]
        # A point inside a byte: its bits start in the byte before, shifted (zlib's inflatePrime).
        return _Inflating(
            self._gz.fileno(),
            start - 1 if bits else start,
            8 - bits if bits else 0,
            inflate,
            points.uncompressed[i],
        )

    def close(self) -> None:
        self._gz.close()
        self._index.close()

    def __enter__(self) -> GzipIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
