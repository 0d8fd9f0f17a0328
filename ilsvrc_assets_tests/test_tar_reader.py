"""The tar reader against Python's tarfile as the oracle, on written and on fuzzed archives.

The property, for any bytes: the reader either returns exactly the regular-file members tarfile
lists (same names without './', same data offsets and sizes), or raises TarError naming the
archive (and the member, where it is about one). It may refuse more than tarfile does (a damaged
header after the first, where tarfile silently stops; links; names outside the archive); it never
accepts what tarfile refuses, never reports other members, never raises anything else, never
reads outside the range it was given, and never writes.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ilsvrc_assets import tar_reader
from ilsvrc_assets.tar_reader import Member, TarError

ARCHIVE = "fuzzed.tar"
FUZZ = settings(
    max_examples=150,
    deadline=2000,  # ms per example: a hang or a quadratic walk fails, a loaded machine does not
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

REFUSED = "refused"  # tarfile lists a member this reader must refuse


# --- The oracle and the reader, side by side ---------------------------------------------------


def _clean(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def _outside(name: str) -> bool:
    return name.startswith("/") or os.path.normpath(name) == ".." or os.path.normpath(name).startswith("../")


def tarfile_members(data: bytes) -> list[tuple[str, int, int]] | str | None:
    """What tarfile lists as (name, offset, size) of regular files; None if it refuses the archive,
    REFUSED if it lists something this reader refuses by design."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            infos = tar.getmembers()
    except Exception:  # noqa: BLE001 - tarfile lets some damage through as other errors: all are refusals
        return None
    found = []
    for info in infos:
        if info.isdir():
            continue
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE) or _outside(
            _clean(info.name)
        ):
            return REFUSED
        found.append((_clean(info.name), info.offset_data, info.size))
    return found


def reader_members(
    data: bytes, start: int = 0, end: int | None = None
) -> list[tuple[str, int, int]] | TarError:
    try:
        return [
            tuple(m) for m in tar_reader.members(_Bounded(data, start, end), ARCHIVE, start=start, end=end)
        ]
    except TarError as e:
        return e


def stream_members(data: bytes) -> list[tuple[str, int, int, bytes]] | TarError:
    try:
        return [(*m, d) for m, d in tar_reader.stream_members(_OneWay(data), ARCHIVE)]  # type: ignore[list-item]
    except TarError as e:
        return e


class _Bounded(io.BytesIO):
    """A seekable file (no descriptor, so the reader seeks and reads) that fails any read outside
    ``[start, end)`` and any write."""

    def __init__(self, data: bytes, start: int, end: int | None) -> None:
        super().__init__(data)
        self.start, self.end = start, len(data) if end is None else end

    def read(self, size: int | None = -1) -> bytes:
        at = self.tell()
        assert size is not None and size >= 0, "the reader reads exact sizes"
        if at != self.end:  # the size query seeks to the end; reads there return nothing
            assert self.start <= at and at + size <= self.end, f"read of {size} at {at} outside the range"
        return super().read(size)

    def write(self, *args: object) -> int:
        raise AssertionError("the reader wrote")


class _OneWay(io.RawIOBase):
    """A stream that cannot seek, handing out at most 700 bytes per read (as a pipe might)."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._at = 0

    def read(self, size: int = -1) -> bytes:
        size = min(size if size >= 0 else len(self._data), 700)
        chunk = bytes(self._data[self._at : self._at + size])
        self._at += len(chunk)
        return chunk

    def seekable(self) -> bool:
        return False


def check_against_tarfile(data: bytes) -> list[tuple[str, int, int]] | TarError:
    """The property, for both ways in; returns the reader's outcome."""
    ours = reader_members(data)
    streamed = stream_members(data)
    theirs = tarfile_members(data)
    event(
        "tarfile: "
        + ("refuses" if theirs is None else "lists a member to refuse" if theirs == REFUSED else "lists")
    )
    event(
        "reader: "
        + ("refuses" if isinstance(ours, TarError) else "lists members" if ours else "lists nothing")
    )
    if isinstance(ours, TarError):
        assert str(ours).startswith(
            f"{ARCHIVE}: " if ours.member is None else f"{ARCHIVE} member {ours.member}: "
        )
        assert isinstance(streamed, TarError), "the stream accepted what the file refused"
    else:
        assert theirs is not None, f"tarfile refuses this archive, the reader listed {ours}"
        assert theirs != REFUSED, "the reader listed an archive holding a member it must refuse"
        assert ours == theirs
        assert not isinstance(streamed, TarError), streamed
        assert [s[:3] for s in streamed] == ours
        assert all(d == data[o : o + n] for _, o, n, d in streamed)
    return ours


# --- Archives written by tarfile -----------------------------------------------------------------

# Mostly names any archive may hold, some that leave it, some too long for a plain header.
_SEGMENTS = st.sampled_from(
    ["a", "b", "n01440764", "a", "b", ".", "..", "", "é", "x" * 60, "y" * 120, "a\\b", " "]
)
_NAMES = st.builds(
    lambda lead, parts: lead + "/".join(parts),
    st.sampled_from(["", "", "", "", "./", "/", "././"]),
    st.lists(_SEGMENTS, min_size=1, max_size=4),
)
_KINDS = st.sampled_from(["file"] * 8 + ["dir", "dir", "contiguous", "symlink", "hardlink", "fifo", "device"])
_MEMBERS = st.lists(st.tuples(_KINDS, _NAMES, st.integers(0, 1500)), max_size=6)
_FORMATS = st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])


def write_tar(members: list[tuple[str, str, int]], fmt: int) -> bytes | None:
    """The archive tarfile writes, or None where it cannot (a name too long for ustar)."""
    out = io.BytesIO()
    try:
        with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
            for i, (kind, name, size) in enumerate(members):
                info = tarfile.TarInfo(name)
                info.mtime = 1_000_000 + i
                if kind in ("file", "contiguous"):
                    info.type = tarfile.REGTYPE if kind == "file" else tarfile.CONTTYPE
                    info.size = size
                    tar.addfile(info, io.BytesIO(bytes([i + 1]) * size))
                    continue
                info.type = {
                    "dir": tarfile.DIRTYPE,
                    "symlink": tarfile.SYMTYPE,
                    "hardlink": tarfile.LNKTYPE,
                    "fifo": tarfile.FIFOTYPE,
                    "device": tarfile.CHRTYPE,
                }[kind]
                info.linkname = "../../etc/passwd" if "link" in kind else ""
                tar.addfile(info)
    except ValueError:
        return None
    return out.getvalue()


@FUZZ
@given(_MEMBERS, _FORMATS)
def test_written_archives_give_tarfiles_members(members, fmt):
    data = write_tar(members, fmt)
    if data is None:
        return
    ours = check_against_tarfile(data)
    theirs = tarfile_members(data)
    if theirs != REFUSED:
        # An intact archive of files and directories with safe names is never refused.
        assert ours == theirs
    else:
        assert isinstance(ours, TarError) and ours.member is not None


@FUZZ
@given(_MEMBERS, _FORMATS, st.data())
def test_damaged_archives_give_tarfiles_members_or_an_error(members, fmt, data):
    raw = write_tar(members, fmt)
    if not raw:
        return
    damaged = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        what = data.draw(st.sampled_from(["truncate", "byte", "size", "checksum", "append", "block"]))
        at = data.draw(st.integers(0, max(0, len(damaged) - 1)))
        if what == "truncate":
            del damaged[at:]
        elif what == "byte" and damaged:
            damaged[at] = data.draw(st.integers(0, 255))
        elif what in ("size", "checksum") and len(damaged) >= 512:
            # A header field rewritten, with the checksum made right again (or not).
            header = at - at % 512
            field = slice(header + 124, header + 136) if what == "size" else slice(header + 148, header + 156)
            value = data.draw(
                st.sampled_from(
                    [
                        b"%011o\x00" % data.draw(st.integers(0, 8**11 - 1)),
                        b"\x80" + bytes(3) + os.urandom(8)[:8],
                        b"garbage!    ",
                        b"  17  \x00\x00\x00\x00\x00\x00",
                    ]
                )
            )
            damaged[field] = value[: field.stop - field.start].ljust(field.stop - field.start, b"\x00")
            if what == "size" and data.draw(st.booleans()):
                _fix_checksum(damaged, header)
        elif what == "append":
            damaged += data.draw(st.binary(max_size=1100))
        elif what == "block":
            damaged[at:at] = data.draw(st.sampled_from([bytes(512), os.urandom(512), raw[:512]]))
    check_against_tarfile(bytes(damaged))


def _fix_checksum(buffer: bytearray, header: int) -> None:
    block = buffer[header : header + 512]
    if len(block) < 512:
        return
    block[148:156] = b" " * 8
    buffer[header + 148 : header + 156] = b"%06o\x00 " % sum(block)


# --- Headers made by hand ------------------------------------------------------------------------

_OCTALS = st.one_of(
    st.integers(0, 4000).map(lambda n: b"%o" % n),
    st.sampled_from(
        [b"", b" ", b"  644 ", b"0_7", b"+7", b"-7", b"8", b"\x1c7", b"7 7", b"\xff" * 3, b"\x80\x00\x01"]
    ),
    st.binary(max_size=12),
)


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    """One header block with fields of every spelling, checksummed (signed, unsigned or wrongly),
    followed by some data."""
    block = bytearray(512)

    def put(start: int, length: int, value: bytes) -> None:
        block[start : start + length] = value[:length].ljust(length, b"\x00")

    put(
        0,
        100,
        draw(
            st.one_of(
                st.sampled_from([b"a", b"./b", b"../c", b"/d", b"e/", b"f" * 100, b"\xff\xfe"]),
                st.binary(max_size=100),
            )
        ),
    )
    for start, length in ((100, 8), (108, 8), (116, 8), (136, 12), (329, 8), (337, 8)):
        put(start, length, draw(st.one_of(st.just(b"0000644\x00"), _OCTALS)))
    size = draw(st.integers(0, 1200))
    put(124, 12, draw(st.one_of(st.just(b"%011o" % size), _OCTALS)))
    block[156:157] = draw(
        st.sampled_from(
            [
                b"0",
                b"\x00",
                b"7",
                b"5",
                b"1",
                b"2",
                b"3",
                b"4",
                b"6",
                b"S",
                b"A",
                b"L",
                b"K",
                b"x",
                b"g",
                b"X",
                b"D",
            ]
        )
    )
    put(257, 8, draw(st.sampled_from([b"ustar\x0000", b"ustar  \x00", b""])))
    put(345, 155, draw(st.sampled_from([b"", b"", b"pre", b"pre/", b"../up", b"/abs"])))
    checksum = 256 + sum(block[:148]) + sum(block[156:])
    signed = checksum - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)
    spelling = draw(st.sampled_from(["unsigned", "unsigned", "signed", "wrong", "spaces"]))
    value = {"unsigned": checksum, "signed": signed, "wrong": checksum + 1, "spaces": checksum}[spelling]
    put(148, 8, (b" %o " if spelling == "spaces" else b"%06o\x00 ") % value if value >= 0 else b"")
    return bytes(block) + draw(st.binary(max_size=size + 600))


def pax_data(records: list[tuple[str, str, int]]) -> bytes:
    out = b""
    for keyword, value, error in records:
        body = f" {keyword}={value}\n".encode("utf-8", "surrogateescape")
        length = len(body) + len(str(len(body)))
        length = len(body) + len(str(length))  # the length counts its own digits
        out += str(length + error).encode() + body
    return out


_PAX_RECORDS = st.lists(
    st.tuples(
        st.sampled_from(
            ["path", "size", "mtime", "comment", "linkpath", "GNU.sparse.size", "hdrcharset", "é", "a=b"]
        ),
        st.one_of(
            st.sampled_from(
                ["n01440764/x.xml", "12", "-3", "1_0", "", "../../etc", "a/", "BINARY", "x" * 200]
            ),
            st.text(max_size=20),
        ),
        st.sampled_from([0, 0, 0, 0, 1, -1, -5]),
    ),
    max_size=4,
)


@st.composite
def extended(draw: st.DrawFn) -> bytes:
    """A pax (or GNU long name) header block with hand-made records, and the member after it."""
    kind = draw(st.sampled_from([tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME]))
    if kind == tarfile.GNUTYPE_LONGNAME:
        payload = draw(st.sampled_from([b"long/" * 40, b"./name\x00junk", b"../out", b"dir/", b""]))
    else:
        payload = pax_data(draw(_PAX_RECORDS)) + draw(st.sampled_from([b"", b"", b"\x00\x00", b"junk"]))
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = kind, len(payload)
    header = (
        info.tobuf(tarfile.USTAR_FORMAT)
        if kind != tarfile.GNUTYPE_LONGNAME
        else info.tobuf(tarfile.GNU_FORMAT)
    )
    padded = payload + bytes(-len(payload) % 512)
    member = tarfile.TarInfo(draw(st.sampled_from(["short", "dir/", "./x"])))
    member.type = draw(st.sampled_from([tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE]))
    member.size = draw(st.integers(0, 700))
    body = member.tobuf(tarfile.USTAR_FORMAT) + bytes(range(256)) * 3
    return header + padded + body[: 512 + member.size + (-member.size % 512)]


@FUZZ
@given(st.lists(st.one_of(headers(), extended()), min_size=1, max_size=4), st.booleans())
def test_hand_made_headers_give_tarfiles_members_or_an_error(blocks, end_blocks):
    check_against_tarfile(b"".join(blocks) + (bytes(1024) if end_blocks else b""))


@FUZZ
@given(st.binary(max_size=3000))
def test_garbage_is_an_error_or_tarfiles_members(data):
    check_against_tarfile(data)


# --- Nested tars ---------------------------------------------------------------------------------


@FUZZ
@given(_MEMBERS, st.sampled_from(["intact", "garbage", "truncated", "empty"]), st.binary(max_size=700))
def test_an_inner_tar_is_read_in_place_with_absolute_offsets(members, state, garbage):
    inner = write_tar([m for m in members if m[0] in ("file", "dir")], tarfile.GNU_FORMAT) or b""
    inner = {"intact": inner, "garbage": garbage, "truncated": inner[: len(inner) // 2], "empty": b""}[state]
    outer = write_tar([], tarfile.GNU_FORMAT)  # only for the end blocks
    info = tarfile.TarInfo("n01440764.tar")
    info.size = len(inner)
    head = info.tobuf(tarfile.GNU_FORMAT)
    data = head + inner + bytes(-len(inner) % 512) + (outer or b"")
    [(name, start, size)] = reader_members(data)  # type: ignore[misc]
    assert (name, start) == ("n01440764.tar", 512)
    # _Bounded fails any read outside the inner tar.
    ours = reader_members(data, start, start + size)
    theirs = tarfile_members(inner)
    if isinstance(ours, TarError):
        assert str(ours).startswith(f"{ARCHIVE}")
        if state == "intact" and theirs != REFUSED:
            raise AssertionError(f"an intact inner tar was refused: {ours}")
    else:
        assert theirs not in (None, REFUSED)
        assert ours == [(n, start + o, s) for n, o, s in theirs]  # type: ignore[union-attr]


# --- Plain cases, by hand -------------------------------------------------------------------------


def test_offsets_point_at_the_data_and_the_file_is_shared(tmp_path: Path) -> None:
    inner = write_tar(
        [("file", "n01440764_1.JPEG", 700), ("dir", "d", 0), ("file", "./n01440764_2.JPEG", 3)], 0
    )
    assert inner
    path = tmp_path / "outer.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name in ("a.tar", "b.tar"):
            info = tarfile.TarInfo(name)
            info.size = len(inner)
            tar.addfile(info, io.BytesIO(inner))
    with open(path, "rb") as file:
        found = []
        for member in tar_reader.members(file, path.name):
            label = f"{path.name} member {member.name}"
            found += list(
                tar_reader.members(file, label, start=member.offset, end=member.offset + member.size)
            )
    data = path.read_bytes()
    assert [m.name for m in found] == ["n01440764_1.JPEG", "n01440764_2.JPEG"] * 2
    assert [data[m.offset : m.offset + m.size] for m in found] == [b"\x01" * 700, b"\x03" * 3] * 2


def test_links_devices_and_escaping_names_are_named(tmp_path: Path) -> None:
    for kind, name, problem in [
        ("symlink", "a", "a symbolic link, not a regular file (link)"),
        ("hardlink", "a", "a hard link, not a regular file (link)"),
        ("fifo", "a", "a FIFO, not a regular file (special file)"),
        ("device", "a", "a character device, not a regular file (special file)"),
        ("file", "/etc/x", "a path outside the archive"),
        ("file", "a/../../x", "a path outside the archive"),
    ]:
        data = write_tar([("file", "ok", 1), (kind, name, 0)], tarfile.GNU_FORMAT)
        error = reader_members(data)  # type: ignore[arg-type]
        assert isinstance(error, TarError) and error.member == name and problem in error.problem, error
        assert str(error).startswith(f"{ARCHIVE} member {name}: ")


def test_damage_is_named() -> None:
    data = write_tar([("file", "first", 10), ("file", "second", 2000)], tarfile.GNU_FORMAT)
    assert data
    cases = {
        "empty, not a tar": b"",
        "ends in the middle of a header at byte 1,024 (after member 'first')": data[:1100],
        "cut short": data[: 1024 + 1024],
        "damaged tar header at byte 1,024 (the header checksum does not match, after member 'first')": (
            data[:1030] + b"X" + data[1031:]
        ),
    }
    for problem, damaged in cases.items():
        error = reader_members(damaged)
        assert isinstance(error, TarError) and problem in str(error), (problem, error)
        assert str(error).startswith(ARCHIVE)


def test_sizes_are_limited_only_for_members_wanted() -> None:
    data = write_tar([("file", "big", 5000), ("file", "small", 10)], tarfile.GNU_FORMAT)
    wanted = lambda name: name == "small"
    got = [
        (m.name, d) for m, d in tar_reader.stream_members(_OneWay(data), ARCHIVE, max_size=100, wanted=wanted)
    ]
    assert got == [("big", None), ("small", b"\x02" * 10)]
    with pytest.raises(TarError, match=f"^{ARCHIVE} member big: 5,000 bytes, more than the 100"):
        list(tar_reader.stream_members(_OneWay(data), ARCHIVE, max_size=100))


def test_a_huge_extended_header_is_refused_before_it_is_read() -> None:
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = tarfile.GNUTYPE_LONGNAME, 10**10
    error = reader_members(info.tobuf(tarfile.GNU_FORMAT) + bytes(1024))
    assert isinstance(error, TarError) and "extended header" in error.problem


def test_a_gzip_tar_and_its_damage(tmp_path: Path) -> None:
    import gzip

    raw = write_tar([("file", "a", 3)], tarfile.GNU_FORMAT)
    assert raw
    path = tmp_path / "a.tar.gz"
    path.write_bytes(gzip.compress(raw))
    with tar_reader.open_gzip_tar(path) as stream:
        assert [(m, d) for m, d in tar_reader.stream_members(stream, path.name)] == [
            (Member("a", 512, 3), b"\x01" * 3)
        ]
    path.write_bytes(gzip.compress(raw)[:-9])
    with (
        pytest.raises(TarError, match="^a.tar.gz: cannot be read as a gzip-compressed tar"),
        tar_reader.open_gzip_tar(path) as stream,
    ):
        list(tar_reader.stream_members(stream, path.name))
    with (
        pytest.raises(TarError, match="archive not found"),
        tar_reader.open_gzip_tar(tmp_path / "missing.tar.gz"),
    ):
        pass
