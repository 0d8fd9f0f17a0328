"""The bounding-box archives as one table, plus the reference CSV the TF inception scripts make.

Both archives hold PASCAL VOC XML files (``<wnid>/<wnid>_<n>.xml`` for training,
``val/ILSVRC2012_val_<8 digits>.xml`` for validation). Every box of every file becomes one row of
the table, with its pixel coordinates as written and its coordinates normalised by the rules of
TensorFlow inception's ``process_bounding_boxes.py``; boxes that script drops stay in the table
with ``kept`` False and a ``drop_reason``, so the reference CSV is exactly the kept rows and
nothing is lost silently.

The reference rules, which :func:`_apply_rules` follows:

* pixel values are read as ``int(float(text))`` (truncation toward zero), frame width and height
  from ``<size>`` likewise; x values are divided by the width, y values by the height;
* min and max are swapped where reversed, then each value is clamped to [0, 1];
* a box whose ``<name>`` is a challenge WNID other than the image's synset is dropped (a name that
  is not a challenge WNID, such as the text label ``Scottish_deerhound``, keeps the box);
* a box with xmin >= xmax or ymin >= ymax after that is dropped (zero area);
* the image name is the XML file's basename with ``.JPEG``, never ``<filename>``.

Deliberate deviations: each object's own ``<name>`` is used (the script uses the first object's
name for every box of a file, so in a file that mixes names it can keep a box of another synset
or drop a good one), objects are counted by ``<object>/<bndbox>`` elements (the script counts
``<xmin>`` elements anywhere), and a frame whose width or height truncates to 0 or less marks the
file's boxes ``bad_frame`` where the script would crash with ZeroDivisionError.

Reading is streamed (the archive is never extracted) and fast: tar headers are read directly
from the gzip stream, XML is parsed with lxml in the main process and in helper processes, and
the rules are applied to all boxes at once with numpy; see the sections below.

The XML is untrusted input: it is parsed with entity resolution, DTD loading and network access
off, documents over :data:`MAX_XML_BYTES` are refused, and so is any DOCTYPE declaring entities
(the "billion laughs" and external-entity attacks).
"""

from __future__ import annotations

import gc
import gzip
import math
import multiprocessing
import os
import posixpath
import tarfile
import threading
import zlib
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from lxml import etree

from ilsvrc_assets import archives, fileio, release, synsets as synsets_module
from ilsvrc_assets.settings import Settings
from ilsvrc_assets.stage import Log, Made, Verdict, quiet

if TYPE_CHECKING:
    from ilsvrc_assets.sources import ImageSource


class BoundingBoxError(ValueError):
    """A bounding-box archive or one of its XML files is not what the release holds; the message names it."""


MAX_XML_BYTES = 1024 * 1024  # the real files are under 2 KB; anything near this is not an annotation

COLUMNS: tuple[str, ...] = (
    "split",
    "image",
    "synset",
    "box",
    "name",
    "frame_width",
    "frame_height",
    "xmin_px",
    "ymin_px",
    "xmax_px",
    "ymax_px",
    "xmin",
    "ymin",
    "xmax",
    "ymax",
    "kept",
    "drop_reason",
)
_DTYPES: dict[str, str] = {
    "box": "int64",
    "frame_width": "float64",
    "frame_height": "float64",
    "xmin_px": "float64",
    "ymin_px": "float64",
    "xmax_px": "float64",
    "ymax_px": "float64",
    "xmin": "float64",
    "ymin": "float64",
    "xmax": "float64",
    "ymax": "float64",
    "kept": "bool",
}
_TEXT_COLUMNS = ("split", "image", "synset", "name", "drop_reason")

DROP_ZERO_AREA = "zero_area"
DROP_OTHER_SYNSET = "other_synset"
DROP_BAD_FRAME = "bad_frame"

_COORDINATES = ("xmin", "ymin", "xmax", "ymax")


# --- One XML file ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Annotation:
    """What one PASCAL VOC file says, values as written (not yet truncated or normalised)."""

    width: float  # <size><width>
    height: float  # <size><height>
    filename: str | None  # <filename>; informative only, it can be junk such as '%s'
    objects: tuple[
        tuple[str, float, float, float, float], ...
    ]  # (name, xmin, ymin, xmax, ymax) per <object>/<bndbox>


_parsers = threading.local()  # lxml parsers must not be shared between threads


def _parser() -> etree.XMLParser:
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            huge_tree=False,
            remove_comments=True,
        )
        _parsers.parser = parser
    return parser


def _number(text: str | None, where: str, what: str) -> float:
    """A finite number from element text; the reference would crash (or misread) on anything else."""
    if text is None:
        raise BoundingBoxError(f"{where}: {what} is missing or empty")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise BoundingBoxError(f"{where}: {what} is not a number: {shown!r}")
    return value


_ENTITIES = "the DOCTYPE declares entities; refusing it (entity expansion and external entities are attacks, never annotations)"

_Box = tuple[str, float, float, float, float]


def _parse(xml: bytes, where: str) -> tuple[float, float, str | None, list[_Box]]:
    """(width, height, filename, objects) of one annotation; the work of :func:`parse_annotation`."""
    if len(xml) > MAX_XML_BYTES:
        raise BoundingBoxError(
            f"{where}: {len(xml):,} bytes, more than the {MAX_XML_BYTES:,} an annotation can be; refusing to parse it"
        )
    # Cheap early refusal for the usual (ASCII-compatible) spelling; the check after parsing
    # catches the same in any other encoding.
    if b"<!ENTITY" in xml:
        raise BoundingBoxError(f"{where}: {_ENTITIES}")
    try:
        root = etree.fromstring(xml, _parser())
    except etree.XMLSyntaxError as e:
        raise BoundingBoxError(f"{where}: malformed XML ({e.msg})") from None
    dtd = root.getroottree().docinfo.internalDTD
    if dtd is not None and any(True for _ in dtd.entities()):
        raise BoundingBoxError(f"{where}: {_ENTITIES}")
    if root.tag != "annotation":
        raise BoundingBoxError(
            f"{where}: root element is <{root.tag}>, not <annotation>; not a PASCAL VOC annotation"
        )
    # iterchildren() with tag names filters in C and is two to three times faster than
    # find()/findtext(), which matters at 544,546 files. Where an element repeats, the first
    # one counts (as with find).
    size: dict[str, str | None] | None = None
    filename = None
    objects: list[_Box] = []
    for child in root.iterchildren("object", "size", "filename"):
        tag = child.tag
        if tag == "object":
            name = None
            boxes = []
            for part in child.iterchildren("name", "bndbox"):
                if part.tag == "bndbox":
                    values: dict[str, str | None] = {}
                    for value in part.iterchildren("xmin", "ymin", "xmax", "ymax"):
                        values.setdefault(value.tag, value.text)
                    try:
                        box = (
                            float(values["xmin"]),  # type: ignore[arg-type]
                            float(values["ymin"]),  # type: ignore[arg-type]
                            float(values["xmax"]),  # type: ignore[arg-type]
                            float(values["ymax"]),  # type: ignore[arg-type]
                        )
                        total = box[0] + box[1] + box[2] + box[3]
                        finite = (
                            total - total == 0.0
                        )  # False for any inf or NaN (and, harmlessly, on overflow)
                    except (KeyError, TypeError, ValueError):
                        finite = False
                    if not finite:
                        box = _coordinates(values, where, len(objects) + len(boxes))
                    boxes.append(box)
                elif name is None:
                    name = part.text or ""
            # A missing <name> is "": not a challenge WNID, so the reference would keep the box.
            name = name or ""
            for box in boxes:
                objects.append((name, *box))
        elif tag == "size":
            if size is None:
                size = {}
                for value in child.iterchildren("width", "height"):
                    size.setdefault(value.tag, value.text)
        elif filename is None:
            filename = child.text or ""
    if size is None:
        raise BoundingBoxError(f"{where}: no <size> element, so the boxes cannot be normalised")
    width = _number(size.get("width"), where, "<size>/<width>")
    height = _number(size.get("height"), where, "<size>/<height>")
    return width, height, filename, objects


def _coordinates(values: dict[str, str | None], where: str, box: int) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of one <bndbox> as finite floats, or the error naming what is wrong.

    The slow path of :func:`_parse`: the box is named by its position, so that it can be found
    in the file by eye.
    """
    return (
        _number(values.get("xmin"), where, f"box {box} <bndbox>/<xmin>"),
        _number(values.get("ymin"), where, f"box {box} <bndbox>/<ymin>"),
        _number(values.get("xmax"), where, f"box {box} <bndbox>/<xmax>"),
        _number(values.get("ymax"), where, f"box {box} <bndbox>/<ymax>"),
    )


def parse_annotation(xml: bytes, where: str) -> Annotation:
    """Parse one PASCAL VOC annotation; ``where`` (archive and member) prefixes every error.

    Raises :class:`BoundingBoxError` for a document over :data:`MAX_XML_BYTES`, one declaring
    entities, malformed XML, a root other than ``<annotation>``, a missing ``<size>`` and any
    missing or non-numeric (or infinite) width, height or coordinate. An ``<object>`` without
    ``<name>`` gets the name "" (not a challenge WNID, so the reference would keep its box).
    """
    width, height, filename, objects = _parse(xml, where)
    return Annotation(width=width, height=height, filename=filename, objects=tuple(objects))


# --- The reference rules -----------------------------------------------------------------------


def _round4(values: np.ndarray) -> np.ndarray:
    """``float('%.4f' % v)`` for every value in [0, 1] (NaN stays NaN), without a Python loop.

    ``rint(v * 1e4) / 1e4`` is that exactly unless ``v * 1e4`` lies within its own rounding
    error (about 1e-12 here) of a half: k / 1e4 is the double nearest k / 10**4, which is what
    ``float('%.4f' % v)`` parses to. Those near-ties are redone with ``round(v, 4)``, which
    CPython rounds correctly, i.e. equals ``float('%.4f' % v)``.
    """
    scaled = values * 1e4
    rounded = np.rint(scaled) / 1e4
    near_tie = np.abs(scaled - np.floor(scaled) - 0.5) < 1e-9
    for i in np.flatnonzero(near_tie):
        rounded[i] = round(float(values[i]), 4)
    return rounded


def _apply_rules(
    synsets_of_boxes: np.ndarray,
    names: np.ndarray,
    width: np.ndarray,
    height: np.ndarray,
    pixels: dict[str, np.ndarray],
    synsets: Collection[str],
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The reference's verdict on every box: (normalised coordinates, kept, drop_reason).

    Arrays are aligned, one element per box. Normalised coordinates are rounded as the
    reference CSV prints them, and NaN where the frame is unusable.
    """
    # int(float(text)) truncates toward zero, which np.trunc does exactly for finite floats
    # (and the results are the same doubles as float(int(...)) in the reference).
    w = np.trunc(width)
    h = np.trunc(height)
    frame_ok = (w > 0) & (h > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        x0 = np.trunc(pixels["xmin"]) / w
        x1 = np.trunc(pixels["xmax"]) / w
        y0 = np.trunc(pixels["ymin"]) / h
        y1 = np.trunc(pixels["ymax"]) / h
    # Swap reversed min/max, then clamp to [0, 1] (unrounded, as the reference compares).
    normalised = {
        "xmin": np.clip(np.minimum(x0, x1), 0.0, 1.0),
        "ymin": np.clip(np.minimum(y0, y1), 0.0, 1.0),
        "xmax": np.clip(np.maximum(x0, x1), 0.0, 1.0),
        "ymax": np.clip(np.maximum(y0, y1), 0.0, 1.0),
    }
    zero_area = (normalised["xmin"] >= normalised["xmax"]) | (normalised["ymin"] >= normalised["ymax"])
    # A <name> that is a challenge WNID other than the image's synset drops the box; any other
    # name (e.g. the text label 'Scottish_deerhound') keeps it under the image's synset.
    other_synset = pd.Series(names, dtype=object).isin(frozenset(synsets)).to_numpy() & (
        names != synsets_of_boxes
    )
    # The reference checks the label before the geometry; bad_frame sits between because the
    # reference would have crashed there (ZeroDivisionError).
    reason = np.select(
        [other_synset, ~frame_ok, zero_area],
        [DROP_OTHER_SYNSET, DROP_BAD_FRAME, DROP_ZERO_AREA],
        default="",
    ).astype(object)
    kept = reason == ""
    for column, values in normalised.items():
        values[~frame_ok] = np.nan
        normalised[column] = _round4(values)
    return normalised, kept, reason


def _frame(
    split: str, files: list[tuple[str, str, float, float, list[_Box]]], synsets: Collection[str]
) -> pd.DataFrame:
    """(image, synset, width, height, objects) per file -> the table of a split, sorted by image then box."""
    # Sorting by image name makes the table independent of member order in the archive; each
    # file's boxes keep their order in the file.
    files.sort(key=lambda f: f[0])
    images: list[str] = []
    synsets_of_boxes: list[str] = []
    widths: list[float] = []
    heights: list[float] = []
    box_numbers: list[int] = []
    objects: list[_Box] = []
    for image, synset, width, height, file_objects in files:
        n = len(file_objects)
        if n == 1:  # the common case, without building lists of one
            images.append(image)
            synsets_of_boxes.append(synset)
            widths.append(width)
            heights.append(height)
            box_numbers.append(0)
            objects.append(file_objects[0])
        elif n:
            images.extend([image] * n)
            synsets_of_boxes.extend([synset] * n)
            widths.extend([width] * n)
            heights.extend([height] * n)
            box_numbers.extend(range(n))
            objects.extend(file_objects)
    names, *pixel_columns = zip(*objects) if objects else ((), (), (), (), ())
    pixels = {c: np.array(v, dtype=np.float64) for c, v in zip(_COORDINATES, pixel_columns)}
    names_array = np.array(names, dtype=object)
    width_array = np.array(widths, dtype=np.float64)
    height_array = np.array(heights, dtype=np.float64)
    synset_array = np.array(synsets_of_boxes, dtype=object)
    normalised, kept, reason = _apply_rules(
        synset_array, names_array, width_array, height_array, pixels, synsets
    )
    data = {
        "split": np.full(len(images), split, dtype=object),
        "image": np.array(images, dtype=object),
        "synset": synset_array,
        "box": np.array(box_numbers, dtype=np.int64),
        "name": names_array,
        "frame_width": width_array,
        "frame_height": height_array,
        **{f"{c}_px": pixels[c] for c in _COORDINATES},
        **normalised,
        "kept": kept,
        "drop_reason": reason,
    }
    return _typed(pd.DataFrame(data, columns=list(COLUMNS)))


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    """The table with its fixed column dtypes (also for an empty table)."""
    return table.astype({**{c: "str" for c in _TEXT_COLUMNS}, **_DTYPES})


# --- The archives ------------------------------------------------------------------------------


# Reading tar headers ourselves: tarfile's stream mode costs about 30 µs per member in Python
# (buffer slicing, TarInfo parsing, a file object per member), which alone would take 16 s for the
# 544,546 members of the train archive; this reader costs a few µs. It understands what tar
# writers emit (v7, ustar with prefix, GNU long names, pax path/size records), checks every
# header checksum and refuses links and special files.
_BLOCK = 512
_READ_CHUNK = (
    1 << 18
)  # decompressed bytes per read; big enough that refills are rare, small enough to stay in cache
_POSIX_MAGIC = b"ustar\x0000"
_ZEROS = bytes(_BLOCK)
_REGULAR = (b"0", b"\x00", b"7")  # regular file, old-style regular file, contiguous file
_LINKS_AND_SPECIAL = {
    b"1": "hard link",
    b"2": "symbolic link",
    b"3": "character device",
    b"4": "block device",
    b"6": "FIFO",
}


class _Truncated(Exception):
    pass


class _Blocks:
    """Exactly-sized reads from a file object, refilled in large chunks."""

    def __init__(self, file: object) -> None:
        self._read = file.read  # type: ignore[attr-defined]
        self._buf = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._buf):
            parts = [self._buf[self._pos :]]
            have = len(parts[0])
            while have < n:
                chunk = self._read(max(_READ_CHUNK, n - have))
                if not chunk:
                    raise _Truncated
                parts.append(chunk)
                have += len(chunk)
            self._buf = b"".join(parts)
            self._pos = 0
            end = n
        data = self._buf[self._pos : end]
        self._pos = end
        return data

    def skip(self, n: int) -> None:
        end = self._pos + n
        if end <= len(self._buf):
            self._pos = end
        else:
            self.take(n)

    def at_end(self) -> bool:
        """True when nothing is left (refilling the buffer if it is empty)."""
        if self._pos < len(self._buf):
            return False
        self._buf = self._read(_READ_CHUNK)
        self._pos = 0
        return not self._buf

    def drain(self) -> None:
        """Read to the end, so that gzip checks its CRC and length."""
        while self._read(_READ_CHUNK):
            pass


def _header_number(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # GNU base-256 for values too big for octal
        return tarfile.nti(field)
    return int(field.split(b"\x00", 1)[0].strip() or b"0", 8)


def _pax_records(data: bytes) -> dict[str, str]:
    """``"<length> <key>=<value>\\n"`` records of a pax extended header."""
    records = {}
    pos = 0
    while pos < len(data) and data[pos : pos + 1] != b"\x00":
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        if length <= space - pos:
            raise ValueError("bad pax record length")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _tar_files(blocks: _Blocks, archive: str) -> Iterator[tuple[str, bytes]]:
    """(name without './', bytes) of every regular file of an uncompressed tar stream; directories skipped."""
    long_name: str | None = None  # from a GNU 'L' or pax header, for the next member only
    pax_size: int | None = None
    while True:
        # Like tarfile, a stream that ends cleanly where a header would start is a complete tar
        # without the end-of-archive blocks (gzip's own check has already caught truncation).
        if long_name is None and pax_size is None and blocks.at_end():
            return
        header = blocks.take(_BLOCK)
        if header == _ZEROS:  # end-of-archive marker
            return
        try:
            # The checksum is what tells a header from garbage (a damaged or misaligned stream).
            stored = _header_number(header[148:156])
            unsigned = sum(header) - sum(header[148:156]) + 256  # the checksum field counts as 8 spaces
            if stored != unsigned:
                # Some old writers summed signed bytes.
                high = sum(1 for b in header[:148] + header[156:] if b > 127)
                if stored != unsigned - 256 * high:
                    raise ValueError("header checksum mismatch")
            size = _header_number(header[124:136])
            if size < 0:
                raise ValueError(f"negative size {size}")
        except ValueError as e:
            raise BoundingBoxError(
                f"{archive}: damaged tar header ({e}); delete the archive and fetch it again"
            ) from None
        kind = header[156:157]
        name = header[:100].split(b"\x00", 1)[0]
        if header[257:265] == _POSIX_MAGIC and header[345] != 0:
            name = header[345:500].split(b"\x00", 1)[0] + b"/" + name
        text = name.decode("utf-8", "surrogateescape")
        if kind in (b"L", b"x", b"g", b"K"):  # metadata for the next member
            if size > MAX_XML_BYTES:
                raise BoundingBoxError(
                    f"{archive}: a {size:,}-byte tar metadata header; this is not the release's archive"
                )
            data = blocks.take(size)
            blocks.skip(-size % _BLOCK)
            if kind == b"L":
                long_name = data.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")
            elif kind == b"x":
                try:
                    records = _pax_records(data)
                    pax_size = int(records["size"]) if "size" in records else None
                    if pax_size is not None and pax_size < 0:
                        raise ValueError(f"negative size {pax_size}")
                except ValueError as e:
                    raise BoundingBoxError(f"{archive}: damaged pax header ({e})") from None
                long_name = records.get("path", long_name)
            continue  # 'g' (global pax) and 'K' (long link target) say nothing this reader uses
        if long_name is not None:
            text = long_name
        if pax_size is not None:
            size = pax_size
        long_name = pax_size = None
        while text.startswith("./"):
            text = text[2:]
        if kind in _LINKS_AND_SPECIAL:
            raise BoundingBoxError(
                f"{archive} member {text}: a {_LINKS_AND_SPECIAL[kind]}, not a regular file; the release holds only XML files"
            )
        is_dir = kind == b"5" or (kind == b"\x00" and text.endswith("/"))
        if not is_dir and kind not in _REGULAR:
            raise BoundingBoxError(
                f"{archive} member {text}: unsupported tar member type {kind!r}; the release holds only XML files"
            )
        if size > MAX_XML_BYTES:
            raise BoundingBoxError(
                f"{archive} member {text}: {size:,} bytes, more than the {MAX_XML_BYTES:,} an annotation can be"
            )
        data = blocks.take(size)
        blocks.skip(-size % _BLOCK)
        if not is_dir:
            yield text, data


def _xml_members(archive: Path) -> Iterator[tuple[str, str, bytes]]:
    """(member name without './', where-string, bytes) of every file member, streamed in archive order.

    Directories are skipped; links and special files, oversized or duplicate members and a
    damaged or truncated stream raise :class:`BoundingBoxError` naming the archive (and member).
    """
    name_of_archive = archive.name
    if not archive.is_file():
        raise BoundingBoxError(f"{archive}: archive not found")
    seen: set[str] = set()
    try:
        with gzip.open(archive, "rb") as file:
            blocks = _Blocks(file)
            for name, data in _tar_files(blocks, name_of_archive):
                where = f"{name_of_archive} member {name}"
                if name in seen:
                    raise BoundingBoxError(f"{where}: appears twice in the archive")
                seen.add(name)
                yield name, where, data
            blocks.drain()
    except _Truncated:
        raise BoundingBoxError(
            f"{name_of_archive}: the tar ends in the middle of a member; the archive is truncated: "
            f"delete it and fetch it again"
        ) from None
    except (EOFError, OSError, zlib.error) as e:
        # gzip reports a bad header, CRC or length as OSError (BadGzipFile), a cut-off stream as EOFError.
        raise BoundingBoxError(
            f"{name_of_archive}: cannot be read as a gzip-compressed tar ({e}); "
            f"if it is damaged or truncated, delete it and fetch it again"
        ) from e


# --- Parsing in parallel -----------------------------------------------------------------------

# The archive is one gzip stream, so reading it is serial, but parsing the XML (about two thirds
# of the work) is not: full batches of members go to helper processes while the main process
# keeps reading, and the main process parses a batch itself whenever the helpers are busy, so
# every core stays busy. Small archives (under one batch) never start a helper.
_BATCH = 2000  # members per task: pickling overhead small, memory in flight small
_QUEUED_PER_HELPER = 2  # batches a helper may have waiting; beyond that the main process parses
_MAX_WORKERS = 4  # past this the serial reading of the stream is the limit

_Parsed = list[tuple[float, float, tuple[_Box, ...]]]


def _parse_batch(batch: list[tuple[str, bytes]]) -> _Parsed:
    """(width, height, objects) of each (where, XML bytes); runs in a helper process or in place."""
    parsed = []
    for where, data in batch:
        width, height, _, objects = _parse(data, where)
        # A tuple, not the list: tuples of numbers and strings drop out of the garbage
        # collector's tracking, lists never do.
        parsed.append((width, height, tuple(objects)))
    return parsed


def _ready() -> bool:
    """A helper's first task: unpickling it imports this module, so the helper is then ready."""
    return True


class _Helpers:
    """Helper processes for :func:`_parse_batch`, started on first use."""

    def __init__(self, workers: int | None) -> None:
        self.size = (min(os.cpu_count() or 1, _MAX_WORKERS) if workers is None else max(1, workers)) - 1
        self.pool: ProcessPoolExecutor | None = None
        self.warm_up: list[Future] = []

    def submit(self, batch: list[tuple[str, bytes]]) -> Future | None:
        """The batch's future, or None when no helper is ready (the caller parses it)."""
        if self.size <= 0:
            return None
        try:
            if self.pool is None:
                # spawn, not fork: forking a process that runs threads (as Dagster does) can
                # deadlock. gc.disable: see _gc_paused.
                context = multiprocessing.get_context("spawn")
                self.pool = ProcessPoolExecutor(self.size, mp_context=context, initializer=gc.disable)
                # A helper takes about a second to start and import pandas and lxml; batches
                # queued before that would keep the main process waiting at the end, so it
                # parses everything itself until the helpers are ready.
                self.warm_up = [self.pool.submit(_ready) for _ in range(self.size)]
            if not all(f.done() for f in self.warm_up):
                return None
            if self.warm_up:
                for future in self.warm_up:
                    future.result()  # a helper that could not start raises BrokenProcessPool
                self.warm_up = []
            return self.pool.submit(_parse_batch, batch)
        except Exception:  # e.g. a daemonic process may not start children: parse in place
            self.size = 0
            return None

    def outcome(self, future: Future, batch: list[tuple[str, bytes]]) -> _Parsed:
        """A submitted batch's result; parsed here if the helper died (killed, or could not start)."""
        try:
            return future.result()
        except BrokenProcessPool:
            self.size = 0
            return _parse_batch(batch)

    def __enter__(self) -> _Helpers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a block, then back as it was.

    Reading an archive allocates tens of millions of short-lived objects (lxml proxies, dicts,
    tuples) and keeps about a million, none in reference cycles: the collector finds nothing to
    free but, triggered over and over, costs seconds (measured: 5 s of 23 s on 544,546 files).
    Reference counting still frees everything as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _HelperFailed(Exception):
    """Carries a helper's BoundingBoxError past the handler for errors found in this process."""

    def __init__(self, error: BoundingBoxError) -> None:
        super().__init__(error)
        self.error = error


_FRAME_FILES = 50_000


@_gc_paused()
def _read(
    archive: Path,
    split: str,
    locate: Callable[[str, str], tuple[str, str]],
    synsets: Collection[str],
    helpers: _Helpers,
) -> pd.DataFrame:
    """The table of one archive; ``locate(member name, where)`` gives (image, synset) or raises.

    Where the archive has several problems, the first in archive order is raised, whichever
    process found it.
    """
    located: list[tuple[str, str]] = []  # (image, synset) per file not yet in a frame, in archive order
    parts: list[_Parsed | None] = []  # parsed batches, in archive order ([] while with a helper)
    pending: deque[tuple[int, Future, list[tuple[str, bytes]]]] = deque()  # (part, future, batch), in order
    batch: list[tuple[str, bytes]] = []
    frames: list[pd.DataFrame] = []  # the files parsed so far, as tables of at most about _FRAME_FILES
    framed = 0  # parts[:framed] are in frames

    def settle(wait: bool) -> None:
        # In archive order, so that a helper's error found here is the first problem of all.
        while pending and (wait or pending[0][1].done()):
            index, future, sent = pending.popleft()
            try:
                parts[index] = helpers.outcome(future, sent)
            except BoundingBoxError as error:
                raise _HelperFailed(error) from None

    def to_frames(last: bool) -> None:
        # Parsed files become a compact table every _FRAME_FILES or so: as Python objects they
        # would take most of a gigabyte at the release's scale.
        nonlocal framed, located
        ready = parts[framed : pending[0][0] if pending else len(parts)]
        count = sum(len(part) for part in ready)  # type: ignore[arg-type]
        if count < _FRAME_FILES and not last:
            return
        parsed = (f for part in ready for f in part)  # type: ignore[union-attr]
        files = [
            (image, synset, width, height, objects)
            for (image, synset), (width, height, objects) in zip(located[:count], parsed)
        ]
        # The rules are applied to all boxes of the files at once, with numpy: per-box Python
        # would cost more than the XML parsing.
        frames.append(_frame(split, files, synsets))
        located = located[count:]
        for i in range(framed, framed + len(ready)):
            parts[i] = None
        framed += len(ready)

    try:
        try:
            for name, where, data in _xml_members(archive):
                located.append(locate(name, where))
                batch.append((where, data))
                if len(batch) == _BATCH:
                    settle(wait=False)
                    busy = len(pending) >= helpers.size * _QUEUED_PER_HELPER
                    future = None if busy else helpers.submit(batch)
                    if future is None:
                        parts.append(_parse_batch(batch))
                    else:
                        pending.append((len(parts), future, batch))
                        parts.append([])
                    batch = []
                    to_frames(last=False)
            parts.append(_parse_batch(batch))
            settle(wait=True)
        except BoundingBoxError:
            # Found in this process: the batches still with helpers and the members read
            # before it in this batch come first in the archive.
            settle(wait=True)
            _parse_batch(batch)
            raise
    except _HelperFailed as failed:
        raise failed.error from None
    to_frames(last=True)
    if len(frames) == 1:
        return frames[0]
    # Each frame is sorted by image; a stable sort of them in archive order gives what sorting
    # all files at once would (an image's boxes stay together and in their order).
    table = pd.concat(frames, ignore_index=True)
    return table.sort_values("image", kind="stable", ignore_index=True)


def read_train_boxes(archive: Path, synsets: Collection[str], *, workers: int | None = None) -> pd.DataFrame:
    """Every box of ``ILSVRC2012_bbox_train_v2.tar.gz`` (members ``<wnid>/<wnid>_<n>.xml``).

    The image's synset is the member's folder, which must be one of ``synsets``; the image name
    is the XML basename with ``.JPEG`` (like the reference, the basename is not checked against
    the folder: the asset check finds a box on an image that is not in its synset). Returns the
    table (:data:`COLUMNS`, split "train") sorted by image and box. Raises
    :class:`BoundingBoxError` naming the member for a member that is not such an XML file of a
    challenge synset, and for any XML it cannot use (see :func:`parse_annotation`); where there
    are several, the first in archive order. ``workers`` is the number of processes that parse
    (default: the CPU count, at most 4; 1 parses in this process only).
    """
    with _Helpers(workers) as helpers:
        return _read_train(archive, synsets, helpers)


def _read_train(archive: Path, synsets: Collection[str], helpers: _Helpers) -> pd.DataFrame:
    known = frozenset(synsets)

    def locate(name: str, where: str) -> tuple[str, str]:
        folder, slash, filename = name.partition("/")
        stem, ext = posixpath.splitext(filename)
        if not slash or "/" in filename or ext != ".xml" or not stem:
            raise BoundingBoxError(
                f"{where}: not an annotation '<wnid>/<wnid>_<n>.xml'; is this the official {release.BBOX_TRAIN.name}?"
            )
        if folder not in known:
            raise BoundingBoxError(
                f"{where}: folder {folder!r} is not one of the {len(known):,} challenge synsets"
            )
        return stem + ".JPEG", folder

    return _read(archive, "train", locate, known, helpers)


_VALIDATION_PREFIX = "ILSVRC2012_val_"


def read_validation_boxes(
    archive: Path, validation_synsets: Sequence[str], *, workers: int | None = None
) -> pd.DataFrame:
    """Every box of ``ILSVRC2012_bbox_val_v3.tgz`` (members ``val/ILSVRC2012_val_<8 digits>.xml``).

    The image's synset is the ground truth, ``validation_synsets[number - 1]`` (the XML's own
    ``<name>`` only decides the other-synset rule, over the set of ``validation_synsets``).
    Returns the table (split "validation") sorted by image and box. Raises
    :class:`BoundingBoxError` naming the member for any other member name, a number without a
    ground-truth label and any XML it cannot use. ``workers`` as for :func:`read_train_boxes`.
    """
    with _Helpers(workers) as helpers:
        return _read_validation(archive, validation_synsets, helpers)


def _read_validation(archive: Path, validation_synsets: Sequence[str], helpers: _Helpers) -> pd.DataFrame:
    labels = list(validation_synsets)
    known = frozenset(labels)

    def locate(name: str, where: str) -> tuple[str, str]:
        folder, slash, filename = name.partition("/")
        stem, ext = posixpath.splitext(filename)
        digits = stem[len(_VALIDATION_PREFIX) :]
        if (
            folder != "val"
            or "/" in filename
            or ext != ".xml"
            or not stem.startswith(_VALIDATION_PREFIX)
            or len(digits) != 8
            or not (digits.isascii() and digits.isdigit())
        ):
            raise BoundingBoxError(
                f"{where}: not a validation annotation 'val/ILSVRC2012_val_<8 digits>.xml'; "
                f"is this the official {release.BBOX_VAL.name}?"
            )
        number = int(digits)
        if not 1 <= number <= len(labels):
            raise BoundingBoxError(
                f"{where}: image number {number} has no ground-truth label (there are {len(labels):,})"
            )
        return stem + ".JPEG", labels[number - 1]

    return _read(archive, "validation", locate, known, helpers)


def build_table(
    train_archive: Path,
    validation_archive: Path,
    synsets: Collection[str],
    validation_synsets: Sequence[str],
    *,
    workers: int | None = None,
) -> pd.DataFrame:
    """Training and validation boxes in one table, sorted by (split, image, box).

    ``workers`` as for :func:`read_train_boxes`; the helper processes serve both archives.
    """
    with _Helpers(workers) as helpers:
        train = _read_train(train_archive, synsets, helpers)
        validation = _read_validation(validation_archive, validation_synsets, helpers)
    # Each part is sorted by (image, box) and "train" < "validation", so concatenating keeps the order.
    return _typed(pd.concat([train, validation], ignore_index=True))


# --- Outputs -----------------------------------------------------------------------------------


def reference_csv(table: pd.DataFrame, split: str = "train") -> str:
    """The reference CSV text (``<image>,xmin,ymin,xmax,ymax`` with ``%.4f``, no header) for a split's kept boxes."""
    kept = table[(table["split"] == split) & table["kept"].astype(bool)]
    return "".join(
        "%s,%.4f,%.4f,%.4f,%.4f\n" % row
        for row in zip(
            kept["image"].tolist(),
            kept["xmin"].tolist(),
            kept["ymin"].tolist(),
            kept["xmax"].tolist(),
            kept["ymax"].tolist(),
        )
    )


def write_outputs(
    table: pd.DataFrame,
    parquet_path: Path,
    csv_path: Path,
    validation_csv_path: Path | None = None,
) -> None:
    """Write the table as Parquet and the training (and optionally validation) reference CSV.

    Each file is written atomically: a failure leaves the previous file (or none), never a
    partial one.
    """
    # Everything that can fail on a bad table is done before the first file is replaced.
    arrow = pa.Table.from_pandas(table[list(COLUMNS)], preserve_index=False)
    texts = {csv_path: reference_csv(table, "train")}
    if validation_csv_path is not None:
        texts[validation_csv_path] = reference_csv(table, "validation")
    with fileio.atomic_write(parquet_path) as f:
        pq.write_table(arrow, f)
    for path, text in texts.items():
        fileio.atomic_write_text(path, text)


def read_table(path: Path) -> pd.DataFrame:
    """Read a table written by :func:`write_outputs`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: bounding-box table not found; materialise its asset first")
    table = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise BoundingBoxError(f"{path}: not a bounding-box table, lacks columns {missing}")
    return table


def boxes_by_image(table: pd.DataFrame) -> dict[str, list[tuple[float, float, float, float]]]:
    """Kept boxes per image name: ``{image: [(xmin, ymin, xmax, ymax), ...]}`` in box order."""
    kept = table[table["kept"].astype(bool)]
    result: dict[str, list[tuple[int, tuple[float, float, float, float]]]] = {}
    for image, box, *coords in zip(
        kept["image"].tolist(),
        kept["box"].tolist(),
        kept["xmin"].tolist(),
        kept["ymin"].tolist(),
        kept["xmax"].tolist(),
        kept["ymax"].tolist(),
    ):
        result.setdefault(image, []).append((box, tuple(coords)))
    # The table is normally in box order already; sorting makes that a guarantee.
    return {image: [c for _, c in sorted(boxes, key=lambda b: b[0])] for image, boxes in result.items()}


def find_problems(
    table: pd.DataFrame,
    train_images: Mapping[str, str],
    validation_synsets: Sequence[str],
    limit: int = 20,
) -> list[str]:
    """Problems with the kept boxes, for the asset check; ``[]`` when all is well.

    Every kept box must have coordinates in [0, 1], xmin < xmax and ymin < ymax, and lie on a
    known image of its synset: for training, ``train_images`` (image file name -> synset, from
    the train archive's index) must map the image to the row's synset; for validation, the
    image number must be in range and ``validation_synsets[number - 1]`` must be the synset.
    At most ``limit`` problems are listed, then a line saying how many more there are.
    """
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        return [f"the bounding-box table lacks columns {missing}"]
    kept = table[table["kept"].astype(bool)]
    splits, images, synsets, boxes = (kept[c].tolist() for c in ("split", "image", "synset", "box"))
    values = kept[list(_COORDINATES)].to_numpy(dtype=np.float64)
    # Written so that NaN fails every test.
    outside = ~((values >= 0.0) & (values <= 1.0))
    not_x = ~(values[:, 0] < values[:, 2])
    not_y = ~(values[:, 1] < values[:, 3])
    found: list[tuple[int, str]] = []  # (row, message), so that problems come in table order
    for row in np.flatnonzero(outside.any(axis=1) | not_x | not_y).tolist():
        xmin, ymin, xmax, ymax = values[row].tolist()
        label = f"{splits[row]} {images[row]} box {boxes[row]} ({synsets[row]})"
        if outside[row].any():
            wrong = ", ".join(
                f"{c} {v!r}" for c, v, bad in zip(_COORDINATES, values[row].tolist(), outside[row]) if bad
            )
            found.append((row, f"{label}: {wrong} outside [0, 1]"))
        if not_x[row]:
            found.append((row, f"{label}: xmin {xmin!r} is not below xmax {xmax!r}"))
        if not_y[row]:
            found.append((row, f"{label}: ymin {ymin!r} is not below ymax {ymax!r}"))
    for row, (split, image, synset) in enumerate(zip(splits, images, synsets)):
        problem = _image_problem(split, image, synset, train_images, validation_synsets)
        if problem:
            found.append((row, f"{split} {image} box {boxes[row]} ({synset}): {problem}"))
    found.sort(key=lambda f: f[0])
    problems = [message for _, message in found]
    if len(problems) > limit:
        problems = problems[:limit] + [f"... and {len(problems) - limit:,} more"]
    return problems


def _image_problem(
    split: str, image: str, synset: str, train_images: Mapping[str, str], validation_synsets: Sequence[str]
) -> str | None:
    """Why a box's image is not a known image of its synset, or None."""
    if split == "train":
        actual = train_images.get(image)
        if actual is None:
            return "no such image in the train archive"
        if actual != synset:
            return f"the image is in synset {actual} in the train archive"
        return None
    if split == "validation":
        try:
            number = release.validation_number(image)
        except ValueError:
            return "not a validation image name"
        if not 1 <= number <= len(validation_synsets):
            return f"image number {number} is beyond the {len(validation_synsets):,} validation images"
        if validation_synsets[number - 1] != synset:
            return f"the ground truth says {validation_synsets[number - 1]}"
        return None
    return f"unknown split {split!r}"


# --- The stage and its check ---------------------------------------------------------------------


def make_bounding_boxes(
    settings: Settings, source: ImageSource, log: Log = quiet, outputs: BoxOutputs | None = None
) -> Made:
    """Stage ``bounding_boxes``: both box archives into ``<data>/bounding_boxes.parquet`` and the
    reference CSVs (needs ``synsets`` and ``validation_labels``).

    ``outputs`` puts the three files elsewhere (the benchmark's box table at scale).
    """
    out = outputs or BoxOutputs.of(settings)
    train_boxes, validation_boxes = source.box_archives(log)
    table = build_table(
        train_boxes,
        validation_boxes,
        set(synsets_module.read_synsets(settings.synsets_csv)["wnid"]),
        synsets_module.read_validation_labels(settings.validation_labels_csv),
        workers=settings.workers,
    )
    write_outputs(table, out.parquet, out.train_csv, out.validation_csv)
    kept = table[table["kept"]]
    dropped = table[~table["kept"]]
    return Made(
        out.parquet,
        {
            "reference_csv": out.train_csv,
            "boxes": len(table),
            "kept_train_boxes": int((kept["split"] == "train").sum()),
            "kept_validation_boxes": int((kept["split"] == "validation").sum()),
            "annotated_train_images": int(kept.loc[kept["split"] == "train", "image"].nunique()),
            "dropped": {str(k): int(v) for k, v in dropped["drop_reason"].value_counts().items()},
        },
        preview=table,
    )


@dataclass(frozen=True)
class BoxOutputs:
    """Where the box table and the two reference CSVs go."""

    parquet: Path
    train_csv: Path
    validation_csv: Path

    @classmethod
    def of(cls, settings: Settings) -> BoxOutputs:
        return cls(
            settings.bounding_boxes_parquet, settings.bounding_boxes_csv, settings.validation_bounding_boxes_csv
        )


def bounding_boxes_verdict(settings: Settings) -> Verdict:
    """Check ``boxes_are_valid``: every kept box valid and on a known image of its synset, and each
    split has kept boxes at all (needs ``train_images``)."""
    table = read_table(settings.bounding_boxes_parquet)
    index = archives.read_index(settings.image_index("train"))
    labels = synsets_module.read_validation_labels(settings.validation_labels_csv)
    problems = find_problems(table, dict(zip(index["filename"], index["synset"])), labels)
    for split in release.SPLITS:
        if not (table["kept"] & (table["split"] == split)).any():
            problems.append(
                f"no kept {split} boxes: the {split} bounding-box archive holds no usable annotation"
            )
    kept = int(table["kept"].sum())
    return Verdict(problems, f"{kept:,} kept boxes, all valid", {"kept_boxes": kept})
