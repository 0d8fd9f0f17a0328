"""One PASCAL VOC annotation file, read as the untrusted input it is.

The box archives' XML is parsed with lxml with entity resolution, DTD loading and network access
off; documents over :data:`MAX_XML_BYTES` are refused, and so is any DOCTYPE declaring entities
(the "billion laughs" and external-entity attacks). Values are returned as written; the
reference rules (:mod:`ilsvrc_assets.box_rules`) turn them into boxes.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from lxml import etree


class BoundingBoxError(ValueError):
    """A bounding-box archive or one of its XML files is not what the release holds; the message names it."""


MAX_XML_BYTES = 1024 * 1024  # the real files are under 2 KB; anything near this is not an annotation


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

Box = tuple[str, float, float, float, float]


def parse_annotation_values(xml: bytes, where: str) -> tuple[float, float, str | None, list[Box]]:
    """(width, height, filename, objects) of one annotation: :func:`parse_annotation` without
    building the dataclass (the table building calls it 1.3 million times)."""
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
    objects: list[Box] = []
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

    The slow path of :func:`parse_annotation_values`: the box is named by its position, so that it can be found
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
    width, height, filename, objects = parse_annotation_values(xml, where)
    return Annotation(width=width, height=height, filename=filename, objects=tuple(objects))
