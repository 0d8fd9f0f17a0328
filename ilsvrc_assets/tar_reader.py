"""The package's one tar reader: the members of an uncompressed tar, from a file or from a stream.

Two ways in, one header parser:

* :func:`members` walks a seekable file (the image archives, and the inner tars of the train
  archive in place): it reads the 512-byte headers only, with positioned reads, and reports where
  each member's bytes lie, so indexing never reads image data;
* :func:`stream_members` walks a stream that cannot seek (a gzip-compressed tar, the box archives
  and the devkit): every member's bytes go by, and are returned for the members the caller wants.

Why not :mod:`tarfile`: it costs about 30 µs a member in Python (a ``TarInfo`` with a dozen parsed
fields, a file object per member), 16 s for the box archives' 544,546 members and more for the
train archive's 1.28 million images; this reader parses only what it reports and checks the
header checksum with zlib, a few µs a member. It reads what tar writers emit (v7, ustar with
prefix, GNU long names, pax ``path`` and ``size`` records) and, where Python's :mod:`tarfile`
accepts an archive, reports the same regular-file members with the same names, offsets and
sizes (the fuzz tests hold it to that).

Nothing an archive says about itself is trusted. Every header checksum and numeric field is
checked; links, devices, FIFOs, sparse files and unknown member types are refused (the release
holds only regular files and directories); so are absolute names and names with ``..`` that
leave the archive, sizes that run past the end of the archive (or of the inner tar), extended
headers over :data:`MAX_METADATA_BYTES`, pax records that would rename or resize every later
member, and a damaged or truncated archive. tarfile silently stops at some of these (a damaged
header after the first); this reader raises. Each error is a :class:`TarError` that names the
archive and, where there is one, the member. Every step moves forward by at least one block, so
no archive can make it loop, and it never reads outside ``[start, end)``.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import re
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, NamedTuple

BLOCK = 512
MAX_METADATA_BYTES = 1024 * 1024  # a long name or a pax header; real ones are under a kilobyte

_ZEROS = bytes(BLOCK)
_WINDOW = 1 << 16  # bytes read at once where headers lie close together (small members)
_STREAM_CHUNK = 1 << 18  # bytes read from a stream at once: refills rare, the buffer stays in cache

_REGULAR = (b"0", b"\x00", b"7")  # regular file, old-style regular file, contiguous file
_DIRECTORY = b"5"
_REFUSED = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"6": "a FIFO",
}
_LINK_TYPES = (b"1", b"2")
_LONG_NAME, _LONG_LINK = b"L", b"K"  # GNU: the next member's name / link target
_PAX, _PAX_SOLARIS, _PAX_GLOBAL = b"x", b"X", b"g"  # pax: the next member's records / every member's
_EXTENSIONS = frozenset((_LONG_NAME, _LONG_LINK, _PAX, _PAX_SOLARIS, _PAX_GLOBAL))

# The numeric fields tarfile parses (and refuses a header for): mode, uid, gid, size, mtime,
# chksum, devmajor, devminor. One match accepts the spelling tar writers use (zero-padded octal
# ended by NUL; the checksum as six digits, NUL, space; device numbers zero or all NUL) and
# captures size and checksum; any other spelling is checked field by field as tarfile would.
_FIELDS = (("mode", 100, 8), ("uid", 108, 8), ("gid", 116, 8), ("size", 124, 12), ("mtime", 136, 12))
_FIELDS += (("checksum", 148, 8), ("devmajor", 329, 8), ("devminor", 337, 8))
_USUAL_NUMBERS = re.compile(
    rb"(?s).{100}(?:[0-7]{7}\x00){3}([0-7]{11})\x00[0-7]{11}\x00([0-7]{6})\x00 .{173}(?:[0-7]{7}\x00|\x00{8}){2}"
)
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")  # as tarfile reads it: '<length> <keyword>=<value>\n'
_PAX_CHARSET = re.compile(rb"\d+ hdrcharset=([^\n]+)\n")
_PAX_CHARSETS = (b"BINARY", b"ISO-IR 10646 2000 UTF-8")


class TarError(ValueError):
    """A damaged, truncated or hostile tar. ``archive`` and ``member`` (None for the archive as a
    whole) say where, ``problem`` what, worded to follow "is" as well as a colon."""

    def __init__(self, archive: str, problem: str, member: str | None = None) -> None:
        self.archive, self.problem, self.member = archive, problem, member
        where = archive if member is None else f"{archive} member {member}"
        super().__init__(f"{where}: {problem}")


_new = tuple.__new__


class Member(NamedTuple):
    """A regular file in a tar: its name (without leading './'), where its bytes start and how many."""

    name: str
    offset: int  # absolute in the file (for an inner tar too); in a stream, from the stream's start
    size: int


# --- Where the blocks come from ----------------------------------------------------------------


class _Truncated(Exception):
    pass


class _File:
    """Blocks of ``[start, end)`` of a seekable file by positioned reads; data is never read."""

    def __init__(self, file: BinaryIO, start: int, end: int | None) -> None:
        try:
            fd = file.fileno()
            os.fstat(fd)
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
            fd = -1
        self._fd = fd
        self._file = file
        if end is None:
            end = os.fstat(fd).st_size if fd >= 0 else file.seek(0, os.SEEK_END)
        self.start = self.pos = start
        self.end = end
        self._buffer = b""
        self._buffer_start = 0
        self._last_size = 0  # the previous member's size: is the next header near?

    def _read(self, size: int, offset: int) -> bytes:
        if self._fd >= 0:
            return os.pread(self._fd, size, offset)
        self._file.seek(offset)
        return self._file.read(size)

    def header(self) -> bytes:
        """The block at the current position (b"" at the end); moves past it."""
        pos = self.pos
        at = pos - self._buffer_start
        if 0 <= at <= len(self._buffer) - BLOCK:
            self.pos = pos + BLOCK
            return self._buffer[at : at + BLOCK]
        # Close headers (small members) come from one read; far ones (images) one block each.
        remaining = self.end - pos
        if remaining <= 0:
            return b""
        want = _WINDOW if self._last_size < _WINDOW // 4 else BLOCK
        if want > remaining:
            want = remaining
        self._buffer = block = os.pread(self._fd, want, pos) if self._fd >= 0 else self._read(want, pos)
        self._buffer_start = pos
        if len(block) < BLOCK:
            raise _Truncated
        self.pos = pos + BLOCK
        return block[:BLOCK] if want > BLOCK else block

    def metadata(self, size: int) -> bytes:
        if self.pos + _padded(size) > self.end:
            raise _Truncated
        data = self._read(size, self.pos) if size else b""
        if len(data) < size:
            raise _Truncated
        self.pos += _padded(size)
        return data

    def data(self, size: int, want: bool) -> None:
        # Only checks that the member lies inside: its bytes are the caller's to read.
        end = self.pos + size + (-size % BLOCK)
        if end > self.end:
            raise _Truncated
        self.pos = end
        self._last_size = size


class _Stream:
    """Exactly-sized reads from a stream, refilled in large chunks."""

    def __init__(self, stream: BinaryIO) -> None:
        self._read = stream.read
        self._buffer = b""
        self._at = 0
        self.start = self.pos = 0
        self.last: bytes | None = None  # the bytes of the member just passed, if wanted

    def _take(self, size: int) -> bytes:
        end = self._at + size
        if end > len(self._buffer):
            parts = [self._buffer[self._at :]]
            have = len(parts[0])
            while have < size:
                chunk = self._read(max(_STREAM_CHUNK, size - have))
                if not chunk:
                    raise _Truncated
                parts.append(chunk)
                have += len(chunk)
            self._buffer = b"".join(parts)
            self._at = 0
            end = size
        data = self._buffer[self._at : end]
        self._at = end
        self.pos += size
        return data

    def _skip(self, size: int) -> None:
        end = self._at + size
        if end <= len(self._buffer):
            self._at = end
            self.pos += size
            return
        # A large member nobody wants: read through it a chunk at a time, never holding it whole.
        size -= len(self._buffer) - self._at
        self.pos += len(self._buffer) - self._at
        self._buffer, self._at = b"", 0
        while size > _STREAM_CHUNK:
            chunk = self._read(_STREAM_CHUNK)
            if not chunk:
                raise _Truncated
            size -= len(chunk)
            self.pos += len(chunk)
        self._take(size)

    def header(self) -> bytes:
        if self._at >= len(self._buffer):
            self._buffer, self._at = self._read(_STREAM_CHUNK), 0
            if not self._buffer:
                return b""
        return self._take(BLOCK)

    def metadata(self, size: int) -> bytes:
        data = self._take(size)
        self._skip(-size % BLOCK)
        return data

    def data(self, size: int, want: bool) -> None:
        """Reads the member's bytes into ``last`` (None when not wanted, then skipped)."""
        if want:
            self.last = self._take(size)
            self._skip(-size % BLOCK)
        else:
            self.last = None
            self._skip(_padded(size))


def _padded(size: int) -> int:
    return size + (-size % BLOCK)


# --- Headers -----------------------------------------------------------------------------------


def _text(field: bytes) -> str:
    """A NUL-terminated field as tarfile decodes it (UTF-8, undecodable bytes kept as surrogates)."""
    return field.partition(b"\x00")[0].decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    """A numeric field exactly as tarfile reads it (octal text, or GNU base-256); ValueError if bad."""
    if field[0] in (0o200, 0o377):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0o377 else value
    text = field.partition(b"\x00")[0].decode("ascii")  # UnicodeDecodeError is a ValueError
    return int(text.strip() or "0", 8)


def _check_header(header: bytes) -> int:
    """The member's size, after checking the checksum and every numeric field; ValueError if bad."""
    usual = _USUAL_NUMBERS.match(header)
    if usual is not None:
        size = int(usual[1], 8)
        checksum = int(usual[2], 8)
    else:
        for field, start, length in _FIELDS:
            try:
                _number(header[start : start + length])
            except ValueError:
                raise ValueError(f"the {field} field is not a number") from None
        checksum = _number(header[148:156])
        size = _number(header[124:136])
    # The sum of all bytes, with the checksum field counted as 8 spaces. Each half's sum is below
    # 65,521, so adler32's low half (1 + sum) is that sum exactly, ten times faster than sum().
    unsigned = (zlib.adler32(header[:256]) & 0xFFFF) + (zlib.adler32(header[256:]) & 0xFFFF) + 254
    unsigned -= sum(header[148:156])
    if checksum != unsigned:
        # Some old writers summed signed bytes.
        high = sum(1 for b in header[:148] + header[156:] if b > 127)
        if checksum != unsigned - 256 * high:
            raise ValueError("the header checksum does not match")
    if size < 0:
        raise ValueError(f"negative size {size}")
    return size


def _pax_records(data: bytes) -> dict[str, str]:
    """The records of a pax extended header, read as tarfile reads them; ValueError where it
    would stop early or misread (tarfile then drops the records that follow)."""
    charset = _PAX_CHARSET.search(data)
    if charset is not None and charset.group(1) not in _PAX_CHARSETS:
        raise ValueError(f"unknown hdrcharset {charset.group(1)[:40]!r}")
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        match = _PAX_RECORD.match(data, pos)
        if match is None:
            if data.count(0, pos) == len(data) - pos:  # padding
                break
            raise ValueError(f"malformed record at byte {pos}")
        end = pos + int(match.group(1))
        if end <= match.end() or end > len(data) or data[end - 1] != 0x0A:
            raise ValueError(f"record at byte {pos} has a wrong length")
        keyword = match.group(2).decode("utf-8", "surrogateescape")
        records[keyword] = data[match.end() : end - 1].decode("utf-8", "surrogateescape")
        pos = end
    if any(keyword.startswith("GNU.sparse.") for keyword in records):
        raise ValueError("a GNU sparse file; the release holds none")
    size = records.get("size")
    if size is not None and not (size.isascii() and size.isdigit()):
        raise ValueError(f"size {size[:40]!r} is not a number")
    return records


def _outside(name: str) -> bool:
    """True for an absolute name or one whose '..' leads out of the archive."""
    if name.startswith("/"):
        return True
    normalised = posixpath.normpath(name)
    return normalised == ".." or normalised.startswith("../")


def _walk(
    blocks: _File | _Stream,
    archive: str,
    max_size: int | None,
    wanted: Callable[[str], bool] | None,
) -> Iterator[Member]:
    """Every regular file; from a stream, ``blocks.last`` holds its bytes if ``wanted``."""
    name_override: tuple[str, bool] | None = None  # (name, from pax) of the first GNU 'L' or pax path
    size_override: int | None = None  # of the first pax size
    extended = False  # an extension header was read: a member header must follow
    previous = None  # the last member's name, to say where a damaged header lies
    next_header, data_of = blocks.header, blocks.data  # looked up once: this loop runs a million times
    usual_numbers, adler32 = _USUAL_NUMBERS.match, zlib.adler32
    while True:
        at = blocks.pos
        try:
            header = next_header()
        except _Truncated:
            raise TarError(archive, _cut_header(at, previous)) from None
        if not header or header == _ZEROS:  # the end (a tar without end blocks is complete too)
            if extended:
                raise TarError(archive, f"ends at byte {at:,} after an extended header, before its member")
            if not header and at == blocks.start:
                raise TarError(archive, "is empty, not a tar; delete it and fetch it again")
            return
        # The usual header, checked inline; anything else (or a mismatch) the careful way.
        usual = usual_numbers(header)
        if usual is not None and int(usual[2], 8) == (
            (adler32(header[:256]) & 0xFFFF) + (adler32(header[256:]) & 0xFFFF) + 254 - sum(header[148:156])
        ):
            size = int(usual[1], 8)
        else:
            try:
                size = _check_header(header)
            except ValueError as e:
                after = "" if previous is None else f", after member {previous!r}"
                raise TarError(
                    archive,
                    f"damaged tar header at byte {at:,} ({e}{after}); delete the archive and fetch it again",
                ) from None
        kind = header[156:157]
        if kind in _EXTENSIONS:
            if size > MAX_METADATA_BYTES:
                raise TarError(
                    archive,
                    f"has a {size:,}-byte extended header at byte {at:,}, more than the "
                    f"{MAX_METADATA_BYTES:,} any name needs; this is not a release archive",
                )
            try:
                data = blocks.metadata(size)
            except _Truncated:
                raise TarError(archive, _cut_header(at, previous)) from None
            extended = True
            if kind == _LONG_NAME:
                if name_override is None:
                    name_override = (_text(data), False)
                continue
            if kind == _LONG_LINK:
                continue
            try:
                records = _pax_records(data)
            except ValueError as e:
                raise TarError(archive, f"damaged pax header at byte {at:,} ({e})") from None
            if kind == _PAX_GLOBAL:
                # tarfile applies a global path or size to every later member; no writer does that.
                if "path" in records or "size" in records:
                    raise TarError(
                        archive,
                        f"has a global pax header at byte {at:,} that renames or resizes every member",
                    )
                continue
            if "path" in records and name_override is None:
                name_override = (records["path"], True)
            if "size" in records and size_override is None:
                size_override = int(records["size"])
            continue

        name = header[:100].partition(b"\x00")[0].decode("utf-8", "surrogateescape")
        is_dir = kind == _DIRECTORY or (kind == b"\x00" and name.endswith("/"))
        if header[345]:  # the ustar prefix
            name = _text(header[345:500]) + "/" + (name.rstrip("/") if is_dir else name)
        if extended:
            if name_override is not None:
                override, from_pax = name_override
                name = (
                    override.rstrip("/") if from_pax else override.removesuffix("/") if is_dir else override
                )
            if size_override is not None:
                size = size_override
            name_override = size_override = None
            extended = False
        previous = name
        if is_dir:
            continue  # nothing is extracted, so a directory's name is harmless; it has no data
        if kind not in _REGULAR:
            what = _REFUSED.get(kind) or f"an unsupported tar member type {kind!r}"
            sort = "link" if kind in _LINK_TYPES else "special file"
            raise TarError(
                archive,
                f"{what}, not a regular file ({sort}); the release's archives hold only regular files",
                name,
            )
        clean = name
        while clean.startswith("./"):
            clean = clean[2:]
        if clean[:1] == "/" or (".." in clean and _outside(clean)):
            raise TarError(archive, "a path outside the archive; refusing to read it", name)
        want = wanted is None or wanted(clean)
        if want and max_size is not None and size > max_size:
            raise TarError(archive, f"{size:,} bytes, more than the {max_size:,} a member of it can be", name)
        offset = blocks.pos
        try:
            data_of(size, want)
        except _Truncated:
            raise TarError(
                archive,
                f"cut short: its {size:,} bytes from byte {offset:,} run past the end of the archive; "
                f"the archive is truncated: delete it and fetch it again",
                name,
            ) from None
        yield _new(Member, (clean, offset, size))  # tuple.__new__: half the cost of Member(...)


def _cut_header(at: int, previous: str | None) -> str:
    after = "" if previous is None else f" (after member {previous!r})"
    return f"ends in the middle of a header at byte {at:,}{after}; the archive is truncated: delete it and fetch it again"


# --- The two ways in ---------------------------------------------------------------------------


def members(file: BinaryIO, archive: str, *, start: int = 0, end: int | None = None) -> Iterator[Member]:
    """The regular files of the tar in ``file[start:end]``, in archive order, reading headers only.

    ``file`` is a seekable binary file (positioned reads are used when it has a descriptor, so
    several walks may share it); ``end`` defaults to the file's size. For a tar stored as a member
    of another (the train archive's inner tars), pass the member's ``offset`` and
    ``offset + size``: the offsets reported are absolute in ``file`` and nothing outside the
    member is read. ``archive`` names the tar in errors (e.g. ``"outer.tar member inner.tar"``).
    Directories are skipped; anything else that is not a regular file, and any damage, raises
    :class:`TarError`.
    """
    return _walk(_File(file, start, end), archive, None, None)


def stream_members(
    stream: BinaryIO,
    archive: str,
    *,
    max_size: int | None = None,
    wanted: Callable[[str], bool] | None = None,
) -> Iterator[tuple[Member, bytes | None]]:
    """(member, its bytes) for the regular files of the tar read from ``stream``, in archive order.

    The bytes are read for the members whose name ``wanted`` accepts (all when None) and
    skipped otherwise (None); a wanted member over ``max_size`` bytes raises :class:`TarError`
    before it is read (so ``max_size`` bounds the memory a hostile size can take). Directories are skipped; everything else as for :func:`members`.
    """
    blocks = _Stream(stream)
    for member in _walk(blocks, archive, max_size, wanted):
        yield member, blocks.last


class _CheckedStream:
    """A decompressing stream whose read errors become :class:`TarError` naming the archive."""

    def __init__(self, stream: BinaryIO, archive: str) -> None:
        self._stream = stream
        self._archive = archive

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except (EOFError, OSError, zlib.error) as e:
            # gzip reports a bad header, CRC or length as OSError (BadGzipFile), a cut-off
            # stream as EOFError.
            raise TarError(
                self._archive,
                f"cannot be read as a gzip-compressed tar ({e}); if it is damaged or truncated, "
                f"delete it and fetch it again",
            ) from e


@contextmanager
def open_gzip_tar(path: Path) -> Iterator[BinaryIO]:
    """The decompressed stream of a gzip-compressed tar, for :func:`stream_members`.

    When the block ends without an error, the rest of the stream is read so that gzip checks its
    CRC and length. A read from a damaged, truncated or non-gzip file raises :class:`TarError`
    naming it.
    """
    if not path.is_file():
        raise TarError(str(path), "archive not found")
    with gzip.open(path, "rb") as raw:
        stream = _CheckedStream(raw, path.name)  # type: ignore[arg-type]
        yield stream  # type: ignore[misc]
        while stream.read(_STREAM_CHUNK):
            pass
