"""Reading a zip archive in place: its central directory streamed, each member by its offset.

Kaggle's copy of the release is one zip of about 155 GB and 1.9 million members. Python's
``zipfile`` reads the whole central directory into a ``ZipInfo`` per member before anything else,
about a gigabyte at that count, in every process that opens it; so this module walks the
central directory entry by entry instead (ZIP64 included) and reads a member from its local
header's offset: a stored member is its bytes, a deflated one is decompressed on its own. Nothing
is extracted. A zip cut short (no end record, a central directory or member running past the end
of the file) and a member whose CRC or length is wrong raise :class:`ZipError` naming the archive
(and member); so do names that would leave the archive's root.
"""

from __future__ import annotations

import posixpath
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record (22 bytes + comment)
_EOCD_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # 20 bytes, just before the end record
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # 56 bytes
_ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # 46 bytes + name + extra + comment
_CENTRAL_SIGNATURE = b"PK\x01\x02"
_LOCAL = struct.Struct("<4s2B4HL2L2H")  # 30 bytes + name + extra
_LOCAL_SIGNATURE = b"PK\x03\x04"
_ZIP64_EXTRA = 0x0001
_MAX_COMMENT = 0xFFFF
_STORED, _DEFLATED = 0, 8
_FLAG_DATA_DESCRIPTOR = 0x08
_FLAG_UTF8 = 0x800
_CHUNK = 1 << 20


class ZipError(ValueError):
    """A zip archive is damaged, cut short or holds what it must not; the message names it."""


class ZipMember(NamedTuple):
    """One entry of the central directory."""

    name: str
    offset: int  # of the member's local header
    compressed_size: int
    size: int
    method: int
    crc: int

    @property
    def is_dir(self) -> bool:
        return self.name.endswith("/")


def _end_record(file: BinaryIO, where: str) -> tuple[int, int, int]:
    """(entries, central directory size, central directory offset), ZIP64 where needed."""
    file.seek(0, 2)
    length = file.tell()
    tail_start = max(0, length - _EOCD.size - _MAX_COMMENT)
    file.seek(tail_start)
    tail = file.read()
    at = tail.rfind(_EOCD_SIGNATURE)
    if at < 0 or len(tail) - at < _EOCD.size:
        raise ZipError(
            f"{where}: no end-of-central-directory record: not a zip, or cut short (an interrupted "
            f"download?); download it again"
        )
    _, _, _, _, entries, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
    locator_at = at - _ZIP64_LOCATOR.size
    if locator_at >= 0 and tail[locator_at : locator_at + 4] == _ZIP64_LOCATOR_SIGNATURE:
        _, _, record_offset, _ = _ZIP64_LOCATOR.unpack_from(tail, locator_at)
        file.seek(record_offset)
        record = file.read(_ZIP64_EOCD.size)
        if len(record) < _ZIP64_EOCD.size or record[:4] != _ZIP64_EOCD_SIGNATURE:
            raise ZipError(f"{where}: the ZIP64 end record at offset {record_offset} is missing or damaged")
        _, _, _, _, _, _, _, entries, cd_size, cd_offset = _ZIP64_EOCD.unpack(record)
    if cd_offset + cd_size > length:
        raise ZipError(
            f"{where}: its central directory runs past the end of the file ({cd_offset + cd_size:,} > "
            f"{length:,} bytes): the zip is cut short; download it again"
        )
    return entries, cd_size, cd_offset


def _zip64_values(extra: bytes, wanted: list[str], where: str) -> dict[str, int]:
    """The 64-bit values of the ZIP64 extra field, in the order the fields were saturated."""
    at = 0
    while at + 4 <= len(extra):
        tag, size = struct.unpack_from("<2H", extra, at)
        if tag == _ZIP64_EXTRA:
            values = (
                struct.unpack_from(f"<{len(wanted)}Q", extra, at + 4) if size >= 8 * len(wanted) else None
            )
            if values is None:
                break
            return dict(zip(wanted, values))
        at += 4 + size
    raise ZipError(f"{where}: a ZIP64 size or offset without its extra field")


def check_name(name: str, where: str) -> str:
    """``name`` if it stays inside the archive's root; else :class:`ZipError` naming it."""
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or ".." in parts or (parts and ":" in parts[0]):
        raise ZipError(
            f"{where}: member {name!r} would leave the archive's root; the archive is not a safe copy"
        )
    return posixpath.normpath(name) + ("/" if name.endswith("/") else "")


def members(path: Path) -> Iterator[ZipMember]:
    """Every entry of the central directory of the zip at ``path``, in directory order (streamed)."""
    where = path.name
    with open(path, "rb", buffering=_CHUNK) as file:
        entries, _, cd_offset = _end_record(file, where)
        file.seek(cd_offset)
        for count in range(entries):
            header = file.read(_CENTRAL.size)
            if len(header) < _CENTRAL.size or header[:4] != _CENTRAL_SIGNATURE:
                raise ZipError(f"{where}: central directory entry {count + 1:,} is damaged or missing")
            fields = _CENTRAL.unpack(header)
            flags, method, crc, csize, size = fields[5], fields[6], fields[9], fields[10], fields[11]
            name_length, extra_length, comment_length, offset = fields[12], fields[13], fields[14], fields[18]
            rest = file.read(name_length + extra_length + comment_length)
            name = rest[:name_length].decode("utf-8" if flags & _FLAG_UTF8 else "cp437", errors="replace")
            wanted = [k for k, v in (("size", size), ("csize", csize), ("offset", offset)) if v == 0xFFFFFFFF]
            if wanted:
                extra = rest[name_length : name_length + extra_length]
                big = _zip64_values(extra, wanted, f"{where} member {name}")
                size, csize, offset = (
                    big.get("size", size),
                    big.get("csize", csize),
                    big.get("offset", offset),
                )
            yield ZipMember(check_name(name, where), offset, csize, size, method, crc)


def read_member(file: BinaryIO, where: str, offset: int, compressed_size: int) -> bytes:
    """The bytes of the member whose local header is at ``offset`` (decompressed, CRC checked).

    ``compressed_size`` from the central directory (the local header may not carry it).
    """
    file.seek(offset)
    header = file.read(_LOCAL.size)
    if len(header) < _LOCAL.size or header[:4] != _LOCAL_SIGNATURE:
        raise ZipError(
            f"{where}: no local header at offset {offset:,}: the zip is cut short or damaged (download it "
            f"again), or the image index is stale"
        )
    fields = _LOCAL.unpack(header)
    flags, method, crc, size, name_length, extra_length = (
        fields[3],
        fields[4],
        fields[7],
        fields[9],
        fields[10],
        fields[11],
    )
    file.seek(name_length + extra_length, 1)
    data = file.read(compressed_size)
    if len(data) != compressed_size:
        raise ZipError(
            f"{where}: cut short ({len(data):,} of {compressed_size:,} bytes): the zip is truncated; "
            f"download it again"
        )
    if method == _DEFLATED:
        inflater = zlib.decompressobj(-15)
        try:
            data = inflater.decompress(data) + inflater.flush()
        except zlib.error as e:
            raise ZipError(f"{where}: damaged deflate data ({e}); download the zip again") from None
        if not inflater.eof:
            raise ZipError(f"{where}: its deflate data stops early: the zip is damaged; download it again")
    elif method != _STORED:
        raise ZipError(f"{where}: compression method {method} is not supported (stored or deflated only)")
    if not flags & _FLAG_DATA_DESCRIPTOR and (
        zlib.crc32(data) != crc or (size != 0xFFFFFFFF and len(data) != size)
    ):
        raise ZipError(
            f"{where}: CRC or size does not match its header: the zip is damaged; download it again"
        )
    return data


def read(path: Path, member: ZipMember) -> bytes:
    """The bytes of one member, opening the archive for it (small files: the CSVs, the mapping)."""
    with open(path, "rb") as file:
        return read_member(file, f"{path.name} member {member.name}", member.offset, member.compressed_size)
