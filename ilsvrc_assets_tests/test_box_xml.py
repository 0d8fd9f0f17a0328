"""The annotation XML reader against a strict, independent parse (expat) as the oracle.

The property, for any document: ``parse_annotation`` returns exactly what a strict reading of the
PASCAL VOC rules gives (root ``<annotation>``; the first ``<size>``'s first ``<width>`` and
``<height>``; per ``<object>``, its first ``<name>`` (or "") and every ``<bndbox>`` with its first
``<xmin>``..``<ymax>``, each a finite number), or raises BoundingBoxError starting with ``where``
exactly when that reading fails; a DOCTYPE declaring entities is always refused.
"""

from __future__ import annotations

import math
import xml.parsers.expat
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ilsvrc_assets.box_xml import MAX_XML_BYTES, Annotation, BoundingBoxError, parse_annotation

WHERE = "fuzzed.tar.gz member n01440764/n01440764_1.xml"
FUZZ = settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


# --- The oracle ------------------------------------------------------------------------------------


@dataclass
class _Element:
    tag: str
    text: str | None = None
    children: list[_Element] = field(default_factory=list)

    def first(self, tag: str) -> _Element | None:
        return next((c for c in self.children if c.tag == tag), None)


class _Refused(Exception):
    pass


def _strict_tree(document: bytes) -> _Element:
    """The element tree by expat, refusing entity declarations; an element's text is what lxml
    calls ``.text``: the characters before its first child element (comments left out), or None."""
    parser = xml.parsers.expat.ParserCreate()
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    root: list[_Element] = []
    stack: list[tuple[_Element, list[str] | None]] = []  # (element, its text so far; None after a child)

    def start(tag: str, attributes: dict) -> None:
        element = _Element(tag)
        if stack:
            parent, parts = stack[-1]
            if parts is not None:
                parent.text = "".join(parts) if parts else None
                stack[-1] = (parent, None)
            parent.children.append(element)
        else:
            root.append(element)
        stack.append((element, []))

    def end(tag: str) -> None:
        element, parts = stack.pop()
        if parts:
            element.text = "".join(parts)

    def characters(data: str) -> None:
        parts = stack[-1][1] if stack else None
        if parts is not None:
            parts.append(data)

    def entity(*args: object) -> None:
        raise _Refused("entity declared")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = characters
    parser.EntityDeclHandler = entity
    parser.Parse(document, True)
    return root[0]


def _finite(text: str | None) -> float:
    if text is None:
        raise _Refused("missing")
    try:
        value = float(text)
    except ValueError:
        raise _Refused("not a number") from None
    if not math.isfinite(value):
        raise _Refused("not finite")
    return value


def oracle(document: bytes) -> Annotation | None:
    """What the document says by the rules, or None where they refuse it."""
    if len(document) > MAX_XML_BYTES:
        return None
    try:
        root = _strict_tree(document)
        if root.tag != "annotation":
            return None
        size = root.first("size")
        filename = root.first("filename")
        objects = []
        for child in root.children:
            if child.tag != "object":
                continue
            name = child.first("name")
            for box in (c for c in child.children if c.tag == "bndbox"):
                values = [box.first(tag) for tag in ("xmin", "ymin", "xmax", "ymax")]
                coordinates = [_finite(v.text if v is not None else None) for v in values]
                objects.append(((name.text or "") if name is not None else "", *coordinates))
        if size is None:
            return None
        width, height = (size.first(tag) for tag in ("width", "height"))
        return Annotation(
            width=_finite(width.text if width is not None else None),
            height=_finite(height.text if height is not None else None),
            filename=None if filename is None else filename.text or "",
            objects=tuple(objects),  # type: ignore[arg-type]
        )
    except (_Refused, xml.parsers.expat.ExpatError, LookupError, ValueError):  # LookupError: unknown encoding
        return None


def check_against_oracle(document: bytes) -> None:
    expected = oracle(document)
    try:
        got = parse_annotation(document, WHERE)
    except BoundingBoxError as e:
        assert str(e).startswith(f"{WHERE}: "), e
        event("both refuse" if expected is None else "refused")
        assert expected is None, f"refused ({e}) what the rules accept: {expected}"
        return
    event("both accept")
    assert expected is not None, f"accepted what the rules refuse: {got}"
    assert _same(got, expected), (got, expected)


def _same(a: Annotation, b: Annotation) -> bool:
    return repr(a) == repr(b)  # NaN never occurs; repr compares -0.0 and 0.0 apart, as the table does


# --- Documents -------------------------------------------------------------------------------------

_NUMBERS = st.one_of(st.integers(-10, 1000).map(str), st.floats(-10, 1000).map(lambda v: f"{v:.3f}"))
_ODD_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "",
            " 12 ",
            "1e3",
            "1_0",
            "x",
            "-0",
            "\u0661\u0662",
            "&#49;2",
            "<![CDATA[5]]>",
            "1<!--c-->2",
            "&amp;",
            "nan",
            "Infinity",
            "0x10",
            "1.5e308",
            "1e309",
            "<b>3</b>",
            "3<b>4</b>",
        ]
    ),
    st.text(
        alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="<&"), max_size=8
    ),
)
_VALUES = st.one_of(*[_NUMBERS] * 8, _ODD_VALUES)  # mostly numbers, so that most files are read


def _element(tag: str, body: str) -> str:
    return f"<{tag}>{body}</{tag}>"


@st.composite
def _box(draw: st.DrawFn) -> str:
    tags = draw(
        st.lists(
            st.sampled_from(["xmin", "ymin", "xmax", "ymax", "xmin", "ymin", "xmax", "ymax", "other"]),
            max_size=6,
        )
    )
    tags = tags if draw(st.integers(0, 3)) == 0 else ["xmin", "ymin", "xmax", "ymax"]
    return _element("bndbox", "".join(_element(tag, draw(_VALUES)) for tag in tags))


@st.composite
def _object(draw: st.DrawFn) -> str:
    parts = draw(
        st.lists(
            st.one_of(
                st.sampled_from(["n01440764", "Scottish_deerhound", "", "n01443537"]).map(
                    lambda n: _element("name", n)
                ),
                _box(),
                st.just("<pose>Unspecified</pose>"),
                st.just("<!-- note -->"),
                st.just("<name/>"),
            ),
            max_size=5,
        )
    )
    return _element("object", "\n\t".join(parts))


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    size = _element(
        "size", _element("width", draw(_VALUES)) + _element("height", draw(_VALUES)) + "<depth>3</depth>"
    )
    children = draw(
        st.lists(
            st.one_of(
                st.just(size),
                st.just(size),
                st.builds(lambda v: _element("size", _element("width", v)), _VALUES),
                _VALUES.map(lambda v: _element("filename", v)),
                st.just("<filename/>"),
                _object(),
                _object(),
                st.just("<folder>n01440764</folder>"),
                st.just("<!-- comment -->"),
            ),
            max_size=6,
        )
    )
    if draw(st.integers(0, 3)):
        children.insert(draw(st.integers(0, len(children))), size)
    root = draw(st.sampled_from(["annotation"] * 6 + ["annotations", "Annotation"]))
    prolog = draw(
        st.sampled_from(
            [
                "",
                "",
                '<?xml version="1.0"?>\n',
                '<?xml version="1.0" encoding="UTF-8"?>',
                "<!DOCTYPE annotation>",
                '<!DOCTYPE annotation [<!ENTITY e "5">]>',
                "<!DOCTYPE annotation [<!ELEMENT annotation ANY>]>",
            ]
        )
    )
    body = "\n\t".join(children)
    if "ENTITY" in prolog and draw(st.booleans()):
        body += _element("object", "<bndbox><xmin>&e;</xmin></bndbox>")
    return (prolog + _element(root, body)).encode()


@FUZZ
@given(documents())
def test_documents_read_as_the_strict_parse_reads_them(document):
    check_against_oracle(document)


@FUZZ
@given(documents(), st.data())
def test_damaged_documents_are_refused_or_read_as_the_strict_parse_reads_them(document, data):
    damaged = bytearray(document)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, max(0, len(damaged) - 1)))
        what = data.draw(st.sampled_from(["truncate", "byte", "insert"]))
        if what == "truncate":
            del damaged[at:]
        elif what == "byte" and damaged:
            damaged[at] = data.draw(st.sampled_from(list(b"<>/&;\"'= ax0\x00\xff")))
        else:
            damaged[at:at] = data.draw(
                st.sampled_from([b"<!ENTITY x 'y'>", b"<a>", b"</a>", b"&x;", b"<!--", b"]]>"])
            )
    check_against_oracle(bytes(damaged))


@FUZZ
@given(st.binary(max_size=400))
def test_any_bytes_are_refused_or_read_as_the_strict_parse_reads_them(document):
    check_against_oracle(document)


def test_entity_declarations_are_refused_even_unused() -> None:
    document = b'<!DOCTYPE annotation [<!ENTITY e "5">]><annotation><size><width>1</width><height>2</height></size></annotation>'
    with pytest.raises(BoundingBoxError, match=f"^{WHERE}: the DOCTYPE declares entities"):
        parse_annotation(document, WHERE)
    assert oracle(document) is None


def test_the_oracle_reads_a_release_file() -> None:
    document = (
        b"<annotation><folder>n01440764</folder><filename>n01440764_1</filename><size><width>500</width>"
        b"<height>375</height><depth>3</depth></size><object><name>n01440764</name><bndbox><xmin>10</xmin>"
        b"<ymin>20</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>"
    )
    expected = Annotation(500.0, 375.0, "n01440764_1", (("n01440764", 10.0, 20.0, 30.0, 40.0),))
    assert oracle(document) == expected == parse_annotation(document, WHERE)
