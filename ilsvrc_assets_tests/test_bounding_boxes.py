"""The bounding-box table and reference CSV, checked against values worked out by hand.

Every expected number below follows the TF inception ``process_bounding_boxes.py`` rules: read
``int(float(text))``, divide x by the ``<size>`` width and y by its height, swap reversed
min/max, clamp to [0, 1], drop boxes of zero width or height and boxes named with another
challenge WNID, print ``%.4f``.
"""

from __future__ import annotations

import gzip
import io
import math
import random
import tarfile
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ilsvrc_assets import bounding_boxes as bb
from ilsvrc_assets import box_rules, box_workers, fileio
from ilsvrc_assets.bounding_boxes import BoundingBoxError

TENCH, GOLDFISH, DEERHOUND = "n01440764", "n01443537", "n02092002"
SYNSETS = frozenset({TENCH, GOLDFISH, DEERHOUND})
TRAIN = "ILSVRC2012_bbox_train_v2.tar.gz"
VAL = "ILSVRC2012_bbox_val_v3.tgz"


def voc(
    folder: str,
    filename: str,
    size: tuple[object, object] | None,
    objects: list[tuple[str, tuple[object, object, object, object]]],
    doctype: str = "",
) -> bytes:
    """A PASCAL VOC annotation laid out like the release's files."""
    parts = [
        '<?xml version="1.0"?>\n' if doctype else "",
        doctype,
        f"<annotation>\n\t<folder>{folder}</folder>\n\t<filename>{filename}</filename>\n",
        "\t<source>\n\t\t<database>ILSVRC_2012</database>\n\t</source>\n",
    ]
    if size is not None:
        parts.append(
            f"\t<size>\n\t\t<width>{size[0]}</width>\n\t\t<height>{size[1]}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
        )
    parts.append("\t<segmented>0</segmented>\n")
    for name, (xmin, ymin, xmax, ymax) in objects:
        parts.append(
            f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
            f"\t\t<difficult>0</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{xmin}</xmin>\n\t\t\t<ymin>{ymin}</ymin>\n"
            f"\t\t\t<xmax>{xmax}</xmax>\n\t\t\t<ymax>{ymax}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        )
    parts.append("</annotation>\n")
    return "".join(parts).encode()


def make_archive(
    path: Path,
    members: dict[str, bytes],
    directories: bool = True,
    prefix: str = "",
    fmt: int = tarfile.GNU_FORMAT,
) -> Path:
    """A tar.gz in the release's layout: a directory entry before each folder's files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", format=fmt) as tar:
        folders_done = set()
        for name, data in members.items():
            folder = name.rpartition("/")[0]
            if directories and folder and folder not in folders_done:
                folders_done.add(folder)
                info = tarfile.TarInfo(prefix + folder)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# --- The training archive: every rule, by hand --------------------------------------------------

TRAIN_MEMBERS = {
    # Several objects; float coordinates truncated; a reversed box; a box partly outside.
    f"{TENCH}/{TENCH}_96.xml": voc(
        TENCH,
        f"{TENCH}_96",
        (500, 375),
        [
            (TENCH, ("64.0994", "10.9", "300.7", "200.2")),  # -> 64, 10, 300, 200
            (TENCH, (300, 200, 100, 50)),  # reversed in x and y
            (TENCH, (-20, -5, 600, 400)),  # outside on every side: clamped to the whole frame
        ],
    ),
    # Zero area three ways; a box of another challenge synset; a WNID that is no challenge synset.
    f"{TENCH}/{TENCH}_1200.xml": voc(
        TENCH,
        f"{TENCH}_1200",
        (500, 375),
        [
            (TENCH, (100, 50, 100, 80)),  # xmin == xmax
            (TENCH, ("100.2", 50, "100.9", 80)),  # distinct floats, the same integer
            (TENCH, (600, 10, 700, 20)),  # entirely right of the frame: both x clamp to 1
            (GOLDFISH, (10, 10, 20, 20)),  # another challenge synset: dropped
            ("n00000001", (10, 10, 20, 20)),  # a WNID but not a challenge one: kept
            (TENCH, (1, 1, 3, 3)),  # ordinary, after the dropped ones: box index 5
        ],
    ),
    # No object at all: no rows.
    f"{TENCH}/{TENCH}_7.xml": voc(TENCH, f"{TENCH}_7", (500, 375), []),
    # Junk <filename>; the frame (250 x 200) differs from the real image: normalise by the frame.
    f"{GOLDFISH}/{GOLDFISH}_31.xml": voc(GOLDFISH, "%s", (250, 200), [(GOLDFISH, (25, 20, 250, 150))]),
    # Text labels instead of the WNID in a dog folder: kept under the folder's synset.
    f"{DEERHOUND}/{DEERHOUND}_5.xml": voc(
        DEERHOUND,
        f"{DEERHOUND}_5",
        (400, 300),
        [("Scottish_deerhound", (40, 30, 200, 150)), (TENCH, (1, 1, 9, 9))],
    ),
    # An exact binary tie for %.4f: 1 / 32 = 0.03125 prints as 0.0312 (round half to even).
    f"{DEERHOUND}/{DEERHOUND}_10.xml": voc(
        DEERHOUND, f"{DEERHOUND}_10", (32, 64), [(DEERHOUND, (1, 2, 31, 63))]
    ),
}

# image, box, name, kept, reason, (xmin, ymin, xmax, ymax) as the CSV prints them
EXPECTED_TRAIN = [
    (f"{TENCH}_1200.JPEG", 0, TENCH, False, "zero_area", (0.2, 0.1333, 0.2, 0.2133)),
    (f"{TENCH}_1200.JPEG", 1, TENCH, False, "zero_area", (0.2, 0.1333, 0.2, 0.2133)),
    (f"{TENCH}_1200.JPEG", 2, TENCH, False, "zero_area", (1.0, 0.0267, 1.0, 0.0533)),
    (f"{TENCH}_1200.JPEG", 3, GOLDFISH, False, "other_synset", (0.02, 0.0267, 0.04, 0.0533)),
    (f"{TENCH}_1200.JPEG", 4, "n00000001", True, "", (0.02, 0.0267, 0.04, 0.0533)),
    (f"{TENCH}_1200.JPEG", 5, TENCH, True, "", (0.002, 0.0027, 0.006, 0.008)),
    (f"{TENCH}_96.JPEG", 0, TENCH, True, "", (0.128, 0.0267, 0.6, 0.5333)),
    (f"{TENCH}_96.JPEG", 1, TENCH, True, "", (0.2, 0.1333, 0.6, 0.5333)),
    (f"{TENCH}_96.JPEG", 2, TENCH, True, "", (0.0, 0.0, 1.0, 1.0)),
    (f"{GOLDFISH}_31.JPEG", 0, GOLDFISH, True, "", (0.1, 0.1, 1.0, 0.75)),
    (f"{DEERHOUND}_10.JPEG", 0, DEERHOUND, True, "", (0.0312, 0.0312, 0.9688, 0.9844)),
    (f"{DEERHOUND}_5.JPEG", 0, "Scottish_deerhound", True, "", (0.1, 0.1, 0.5, 0.5)),
    (f"{DEERHOUND}_5.JPEG", 1, TENCH, False, "other_synset", (0.0025, 0.0033, 0.0225, 0.03)),
]

EXPECTED_TRAIN_CSV = (
    f"{TENCH}_1200.JPEG,0.0200,0.0267,0.0400,0.0533\n"
    f"{TENCH}_1200.JPEG,0.0020,0.0027,0.0060,0.0080\n"
    f"{TENCH}_96.JPEG,0.1280,0.0267,0.6000,0.5333\n"
    f"{TENCH}_96.JPEG,0.2000,0.1333,0.6000,0.5333\n"
    f"{TENCH}_96.JPEG,0.0000,0.0000,1.0000,1.0000\n"
    f"{GOLDFISH}_31.JPEG,0.1000,0.1000,1.0000,0.7500\n"
    f"{DEERHOUND}_10.JPEG,0.0312,0.0312,0.9688,0.9844\n"
    f"{DEERHOUND}_5.JPEG,0.1000,0.1000,0.5000,0.5000\n"
)


@pytest.fixture
def train_archive(tmp_path: Path) -> Path:
    return make_archive(tmp_path / TRAIN, TRAIN_MEMBERS)


def test_train_boxes_follow_the_reference_rules(train_archive: Path) -> None:
    table = bb.read_train_boxes(train_archive, SYNSETS)
    assert tuple(table.columns) == bb.COLUMNS
    assert (table["split"] == "train").all()
    got = [
        (r.image, r.box, r.name, r.kept, r.drop_reason, (r.xmin, r.ymin, r.xmax, r.ymax))
        for r in table.itertuples(index=False)
    ]
    assert got == EXPECTED_TRAIN
    # The image's synset is the folder, whatever <name> says.
    assert dict(zip(table["image"], table["synset"])) == {
        f"{TENCH}_1200.JPEG": TENCH,
        f"{TENCH}_96.JPEG": TENCH,
        f"{GOLDFISH}_31.JPEG": GOLDFISH,
        f"{DEERHOUND}_10.JPEG": DEERHOUND,
        f"{DEERHOUND}_5.JPEG": DEERHOUND,
    }
    # No row for the file without objects; no image named after the junk <filename>.
    assert f"{TENCH}_7.JPEG" not in set(table["image"])
    assert not table["image"].str.contains("%s").any()


def test_pixel_columns_and_frame_are_as_written(train_archive: Path) -> None:
    table = bb.read_train_boxes(train_archive, SYNSETS)
    first = table[(table["image"] == f"{TENCH}_96.JPEG") & (table["box"] == 0)].iloc[0]
    assert (first["xmin_px"], first["ymin_px"], first["xmax_px"], first["ymax_px"]) == (
        64.0994,
        10.9,
        300.7,
        200.2,
    )
    assert (first["frame_width"], first["frame_height"]) == (500.0, 375.0)
    frame = table[table["image"] == f"{GOLDFISH}_31.JPEG"].iloc[0]
    assert (frame["frame_width"], frame["frame_height"]) == (250.0, 200.0)


def test_table_dtypes(train_archive: Path) -> None:
    table = bb.read_train_boxes(train_archive, SYNSETS)
    assert table["box"].dtype == "int64" and table["kept"].dtype == bool
    for column in ("frame_width", "xmin_px", "xmin", "ymax"):
        assert table[column].dtype == "float64"


def test_reference_csv_text_exactly(train_archive: Path) -> None:
    table = bb.read_train_boxes(train_archive, SYNSETS)
    assert bb.reference_csv(table) == EXPECTED_TRAIN_CSV
    assert bb.reference_csv(table, "validation") == ""


def test_table_does_not_depend_on_member_order(tmp_path: Path, train_archive: Path) -> None:
    reversed_members = dict(reversed(list(TRAIN_MEMBERS.items())))
    other = make_archive(tmp_path / "other" / TRAIN, reversed_members, directories=False, prefix="./")
    pd.testing.assert_frame_equal(
        bb.read_train_boxes(train_archive, SYNSETS), bb.read_train_boxes(other, SYNSETS)
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_table_made_in_parts_is_the_table_made_at_once(
    tmp_path: Path, train_archive: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    reversed_members = dict(reversed(list(TRAIN_MEMBERS.items())))
    other = make_archive(tmp_path / "other" / TRAIN, reversed_members)
    at_once = [bb.read_train_boxes(archive, SYNSETS, workers=1) for archive in (train_archive, other)]
    # Batches of one file and a table every two files: parts sorted alone, then merged.
    monkeypatch.setattr(bb, "_BATCH", 1)
    monkeypatch.setattr(bb, "_FRAME_FILES", 2)
    for archive, expected in zip((train_archive, other), at_once):
        pd.testing.assert_frame_equal(bb.read_train_boxes(archive, SYNSETS, workers=workers), expected)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_every_tar_format_and_long_names(tmp_path: Path, fmt: int) -> None:
    # A 109-character path needs the ustar prefix field, a GNU long-name header or a pax record.
    stem = f"{TENCH}_" + "1" * 85  # basename within ustar's 100 characters, the path beyond them
    members = {f"{TENCH}/{stem}.xml": voc(TENCH, stem, (100, 100), [(TENCH, (10, 20, 30, 40))])}
    members.update(TRAIN_MEMBERS)
    archive = make_archive(tmp_path / TRAIN, members, fmt=fmt)
    table = bb.read_train_boxes(archive, SYNSETS)
    row = table[table["image"] == f"{stem}.JPEG"].iloc[0]
    assert (row["xmin"], row["ymin"], row["xmax"], row["ymax"]) == (0.1, 0.2, 0.3, 0.4)
    assert len(table) == len(EXPECTED_TRAIN) + 1


def test_a_bad_frame_drops_the_file_boxes_instead_of_crashing(tmp_path: Path) -> None:
    members = {
        f"{TENCH}/{TENCH}_1.xml": voc(TENCH, f"{TENCH}_1", (0, 375), [(TENCH, (1, 2, 3, 4))]),
        f"{TENCH}/{TENCH}_2.xml": voc(
            TENCH, f"{TENCH}_2", ("0.9", 375), [(TENCH, (1, 2, 3, 4))]
        ),  # truncates to 0
        f"{TENCH}/{TENCH}_3.xml": voc(TENCH, f"{TENCH}_3", (500, -3), [(GOLDFISH, (1, 2, 3, 4))]),
    }
    table = bb.read_train_boxes(make_archive(tmp_path / TRAIN, members), SYNSETS)
    assert list(table["drop_reason"]) == ["bad_frame", "bad_frame", "other_synset"]
    assert not table["kept"].any()
    assert table[["xmin", "ymin", "xmax", "ymax"]].isna().all().all()
    assert bb.reference_csv(table) == ""


def test_names_are_compared_as_written(tmp_path: Path) -> None:
    # The reference compares <name> text as it is: ' n01443537 ' is no challenge WNID, so kept.
    members = {
        f"{TENCH}/{TENCH}_1.xml": voc(TENCH, f"{TENCH}_1", (10, 10), [(f" {GOLDFISH} ", (1, 1, 5, 5))])
    }
    table = bb.read_train_boxes(make_archive(tmp_path / TRAIN, members), SYNSETS)
    assert table["kept"].tolist() == [True] and table["name"].tolist() == [f" {GOLDFISH} "]


def test_no_boxes_at_all_gives_an_empty_table(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / TRAIN, {f"{TENCH}/{TENCH}_7.xml": voc(TENCH, "f", (10, 10), [])})
    table = bb.read_train_boxes(archive, SYNSETS)
    assert len(table) == 0 and tuple(table.columns) == bb.COLUMNS
    assert table["kept"].dtype == bool and table["xmin"].dtype == "float64" and table["box"].dtype == "int64"
    bb.write_outputs(table, tmp_path / "b.parquet", tmp_path / "b.csv")
    assert (tmp_path / "b.csv").read_text() == ""
    pd.testing.assert_frame_equal(bb.read_table(tmp_path / "b.parquet"), table)


def test_round4_equals_the_printed_value() -> None:
    import numpy as np

    rng = random.Random(7)
    values = [k / w for w in (3, 7, 32, 64, 375, 500, 640, 1000, 1024, 2000, 4000) for k in range(w + 1)]
    values += [rng.random() for _ in range(20000)] + [0.00005, 0.00015, 0.99995, 0.03125, 0.96875]
    rounded = box_rules._round4(np.array(values))
    assert rounded.tolist() == [float("%.4f" % v) for v in values]
    assert math.isnan(box_rules._round4(np.array([math.nan]))[0])


# --- Validation --------------------------------------------------------------------------------


def val_member(number: int) -> str:
    return f"val/ILSVRC2012_val_{number:08d}.xml"


def test_validation_boxes_use_the_ground_truth_synset(tmp_path: Path) -> None:
    labels = [GOLDFISH, TENCH, DEERHOUND]
    members = {
        val_member(3): voc("val", "ILSVRC2012_val_00000003", (400, 200), [(DEERHOUND, (40, 20, 200, 100))]),
        # <name> differs from the ground truth and is a validation synset: dropped.
        val_member(2): voc(
            "val", "ILSVRC2012_val_00000002", (100, 100), [(TENCH, (0, 0, 50, 50)), (GOLDFISH, (1, 1, 2, 2))]
        ),
        val_member(1): voc("val", "ILSVRC2012_val_00000001", (500, 375), [(GOLDFISH, ("10.5", 0, 499, 374))]),
    }
    table = bb.read_validation_boxes(make_archive(tmp_path / VAL, members), labels)
    assert list(zip(table["image"], table["box"], table["synset"], table["kept"], table["drop_reason"])) == [
        ("ILSVRC2012_val_00000001.JPEG", 0, GOLDFISH, True, ""),
        ("ILSVRC2012_val_00000002.JPEG", 0, TENCH, True, ""),
        ("ILSVRC2012_val_00000002.JPEG", 1, TENCH, False, "other_synset"),
        ("ILSVRC2012_val_00000003.JPEG", 0, DEERHOUND, True, ""),
    ]
    assert (table["split"] == "validation").all()
    assert bb.reference_csv(table, "validation") == (
        "ILSVRC2012_val_00000001.JPEG,0.0200,0.0000,0.9980,0.9973\n"
        "ILSVRC2012_val_00000002.JPEG,0.0000,0.0000,0.5000,0.5000\n"
        "ILSVRC2012_val_00000003.JPEG,0.1000,0.1000,0.5000,0.5000\n"
    )


@pytest.mark.parametrize(
    "member, message",
    [
        (val_member(4), "image number 4 has no ground-truth label"),
        ("val/ILSVRC2012_val_1.xml", "not a validation annotation"),
        ("val/ILSVRC2012_val_00000001.txt", "not a validation annotation"),
        ("ILSVRC2012_val_00000001.xml", "not a validation annotation"),
    ],
)
def test_validation_member_errors(tmp_path: Path, member: str, message: str) -> None:
    archive = make_archive(tmp_path / VAL, {member: voc("val", "x", (10, 10), [])})
    with pytest.raises(BoundingBoxError, match=message) as error:
        bb.read_validation_boxes(archive, [TENCH, GOLDFISH, DEERHOUND])
    assert f"{VAL} member {member}" in str(error.value)


def test_build_table_is_sorted_by_split_image_box(tmp_path: Path, train_archive: Path) -> None:
    validation = make_archive(
        tmp_path / VAL,
        {
            val_member(2): voc("val", "v", (10, 10), [(TENCH, (1, 1, 5, 5))]),
            val_member(1): voc("val", "v", (10, 10), []),
        },
    )
    table = bb.build_table(train_archive, validation, SYNSETS, [GOLDFISH, TENCH])
    assert list(table["split"]) == ["train"] * len(EXPECTED_TRAIN) + ["validation"]
    assert table.equals(table.sort_values(["split", "image", "box"], kind="stable").reset_index(drop=True))
    assert list(table.index) == list(range(len(table)))


# --- Malformed and hostile input ---------------------------------------------------------------

BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE annotation [\n <!ENTITY lol "lol">\n'
    + "".join(
        f' <!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">\n' for i in range(1, 10)
    )
    + "]>\n<annotation><size><width>&lol9;</width><height>1</height></size></annotation>\n"
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
    "<annotation><filename>&x;</filename><size><width>10</width><height>10</height></size>"
    "<object><name>&x;</name><bndbox><xmin>&x;</xmin><ymin>1</ymin><xmax>2</xmax><ymax>3</ymax></bndbox></object>"
    "</annotation>\n"
)


@pytest.mark.parametrize(
    "xml, message",
    [
        (b"<annotation><size><width>1</width>", "malformed XML"),
        (b"", "malformed XML"),
        (
            voc(TENCH, "f", (500, 375), [(TENCH, (1, "twelve", 3, 4))]),
            r"box 0 <bndbox>/<ymin> is not a number: 'twelve'",
        ),
        (
            voc(TENCH, "f", (500, 375), [(TENCH, (1, 2, 3, 4)), (TENCH, (1, 2, "inf", 4))]),
            "box 1 <bndbox>/<xmax> is not a number",
        ),
        (voc(TENCH, "f", (500, 375), [(TENCH, (1, 2, 3, "nan"))]), "is not a number"),
        (voc(TENCH, "f", (500, 375), [(TENCH, (1, 2, 3, ""))]), "<ymax> is missing or empty"),
        (
            voc(TENCH, "f", (500, 375), [(TENCH, (1, 2, 3, 4))]).replace(b"<xmin>1</xmin>", b""),
            "<xmin> is missing",
        ),
        (voc(TENCH, "f", ("wide", 375), []), r"<size>/<width> is not a number: 'wide'"),
        (voc(TENCH, "f", None, [(TENCH, (1, 2, 3, 4))]), "no <size> element"),
        (b"<html><size><width>1</width><height>1</height></size></html>", "not <annotation>"),
        (BILLION_LAUGHS.encode(), "declares entities"),
        (EXTERNAL_ENTITY.encode(), "declares entities"),
        # The same attacks in an encoding where the bytes b'<!ENTITY' do not occur (libxml2's own
        # amplification limit may stop the first before the entity check does).
        (
            BILLION_LAUGHS.replace('version="1.0"', 'version="1.0" encoding="UTF-16"').encode("utf-16"),
            "declares entities|entity amplification",
        ),
        (
            EXTERNAL_ENTITY.replace('version="1.0"', 'version="1.0" encoding="UTF-16"').encode("utf-16"),
            "declares entities",
        ),
        # An undeclared entity is simply malformed.
        (voc(TENCH, "f", (10, 10), [(TENCH, ("&x;", 2, 3, 4))]), "malformed XML"),
    ],
)
def test_bad_xml_raises_naming_the_member(tmp_path: Path, xml: bytes, message: str) -> None:
    member = f"{TENCH}/{TENCH}_96.xml"
    archive = make_archive(
        tmp_path / TRAIN, {f"{GOLDFISH}/{GOLDFISH}_1.xml": voc(GOLDFISH, "g", (5, 5), []), member: xml}
    )
    with pytest.raises(BoundingBoxError, match=message) as error:
        bb.read_train_boxes(archive, SYNSETS)
    assert str(error.value).startswith(f"{TRAIN} member {member}: ")
    passwd = Path("/etc/passwd")
    if passwd.is_file():
        assert not any(line and line in str(error.value) for line in passwd.read_text().splitlines())


def test_parse_annotation_returns_values_as_written() -> None:
    xml = voc(
        "val", "%s", ("500.5", 375), [("Scottish_deerhound", ("64.0994", -3, 10, 20)), (TENCH, (1, 2, 3, 4))]
    )
    annotation = bb.parse_annotation(xml, "somewhere")
    assert annotation == bb.Annotation(
        width=500.5,
        height=375.0,
        filename="%s",
        objects=(("Scottish_deerhound", 64.0994, -3.0, 10.0, 20.0), (TENCH, 1.0, 2.0, 3.0, 4.0)),
    )


def test_parse_annotation_counts_bndboxes_and_tolerates_comments() -> None:
    xml = (
        b"<annotation><!-- a comment --><size><width>10</width><height>20</height></size>"
        b"<object><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox>"
        b"<name>n01440764</name></object>"  # <name> after <bndbox> still names it
        b"<object><name>nameless?</name></object>"  # no <bndbox>: no box
        b"<object><bndbox><ymax>8</ymax><xmax>7</xmax><ymin>6</ymin><xmin>5</xmin></bndbox></object>"
        b"</annotation>"
    )
    annotation = bb.parse_annotation(xml, "w")
    assert annotation.filename is None
    assert annotation.objects == ((TENCH, 1.0, 2.0, 3.0, 4.0), ("", 5.0, 6.0, 7.0, 8.0))


def test_oversized_xml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BoundingBoxError, match="more than the"):
        bb.parse_annotation(b" " * (bb.MAX_XML_BYTES + 1), "w")
    member = f"{TENCH}/{TENCH}_1.xml"
    big = voc(TENCH, "f", (10, 10), []) + b" " * bb.MAX_XML_BYTES
    with pytest.raises(BoundingBoxError, match=f"{TRAIN} member {member}: .*more than the"):
        bb.read_train_boxes(make_archive(tmp_path / TRAIN, {member: big}), SYNSETS)


@pytest.mark.parametrize(
    "member, message",
    [
        ("n09999999/n09999999_1.xml", "folder 'n09999999' is not one of the 3 challenge synsets"),
        (f"{TENCH}/{TENCH}_1.txt", "not an annotation"),
        (f"{TENCH}/{TENCH}_1.JPEG", "not an annotation"),
        (f"{TENCH}_1.xml", "not an annotation"),
        (f"{TENCH}/deeper/{TENCH}_1.xml", "not an annotation"),
    ],
)
def test_train_member_errors(tmp_path: Path, member: str, message: str) -> None:
    archive = make_archive(tmp_path / TRAIN, {member: voc(TENCH, "f", (10, 10), [])})
    with pytest.raises(BoundingBoxError, match=message) as error:
        bb.read_train_boxes(archive, SYNSETS)
    assert f"{TRAIN} member {member}" in str(error.value)


def test_links_and_duplicates_are_refused(tmp_path: Path) -> None:
    path = tmp_path / TRAIN
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(f"{TENCH}/{TENCH}_1.xml")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(BoundingBoxError, match=f"{TRAIN} member {TENCH}/{TENCH}_1.xml: a symbolic link"):
        bb.read_train_boxes(path, SYNSETS)
    xml = voc(TENCH, "f", (10, 10), [])
    with tarfile.open(path, "w:gz") as tar:
        for _ in range(2):
            info = tarfile.TarInfo(f"{TENCH}/{TENCH}_1.xml")
            info.size = len(xml)
            tar.addfile(info, io.BytesIO(xml))
    with pytest.raises(BoundingBoxError, match="appears twice"):
        bb.read_train_boxes(path, SYNSETS)


def test_damaged_archives_are_refused(tmp_path: Path, train_archive: Path) -> None:
    data = train_archive.read_bytes()
    truncated = tmp_path / "truncated" / TRAIN
    truncated.parent.mkdir()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(BoundingBoxError, match=f"^{TRAIN}: .*(truncated|damaged)"):
        bb.read_train_boxes(truncated, SYNSETS)
    # A tar cut in the middle of a member, correctly gzipped.
    raw = gzip.decompress(data)
    cut = tmp_path / "cut" / TRAIN
    cut.parent.mkdir()
    cut.write_bytes(gzip.compress(raw[:1000]))
    with pytest.raises(BoundingBoxError, match="truncated"):
        bb.read_train_boxes(cut, SYNSETS)
    # A damaged header block (its checksum no longer matches).
    damaged = tmp_path / "damaged" / TRAIN
    damaged.parent.mkdir()
    damaged.write_bytes(gzip.compress(raw[:5] + b"X" + raw[6:]))
    with pytest.raises(BoundingBoxError, match="damaged tar header"):
        bb.read_train_boxes(damaged, SYNSETS)
    not_gzip = tmp_path / "plain" / TRAIN
    not_gzip.parent.mkdir()
    not_gzip.write_bytes(raw)
    with pytest.raises(BoundingBoxError, match=f"^{TRAIN}: cannot be read as a gzip-compressed tar"):
        bb.read_train_boxes(not_gzip, SYNSETS)
    with pytest.raises(BoundingBoxError, match="archive not found"):
        bb.read_train_boxes(tmp_path / "missing.tar.gz", SYNSETS)


def test_a_tar_without_end_blocks_is_complete(tmp_path: Path, train_archive: Path) -> None:
    raw = gzip.decompress(train_archive.read_bytes())
    end = len(raw.rstrip(b"\0"))
    end += -end % 512  # the last member's data, padded; no end-of-archive blocks after it
    bare = tmp_path / "bare" / TRAIN
    bare.parent.mkdir()
    bare.write_bytes(gzip.compress(raw[:end]))
    pd.testing.assert_frame_equal(
        bb.read_train_boxes(bare, SYNSETS), bb.read_train_boxes(train_archive, SYNSETS)
    )


# --- Outputs -----------------------------------------------------------------------------------


@pytest.fixture
def table(tmp_path: Path, train_archive: Path) -> pd.DataFrame:
    validation = make_archive(
        tmp_path / VAL,
        {
            val_member(1): voc(
                "val", "v", (100, 100), [(GOLDFISH, (10, 10, 50, 50)), (GOLDFISH, (60, 60, 60, 90))]
            ),
            val_member(2): voc("val", "v", (100, 100), [(TENCH, (0, 0, 100, 100))]),
        },
    )
    return bb.build_table(train_archive, validation, SYNSETS, [GOLDFISH, TENCH])


def test_write_outputs(tmp_path: Path, table: pd.DataFrame) -> None:
    out = tmp_path / "out"
    bb.write_outputs(table, out / "boxes.parquet", out / "train.csv", out / "validation.csv")
    assert sorted(p.name for p in out.iterdir()) == ["boxes.parquet", "train.csv", "validation.csv"]
    assert (out / "train.csv").read_text() == EXPECTED_TRAIN_CSV
    assert (out / "validation.csv").read_text() == (
        "ILSVRC2012_val_00000001.JPEG,0.1000,0.1000,0.5000,0.5000\nILSVRC2012_val_00000002.JPEG,0.0000,0.0000,1.0000,1.0000\n"
    )
    back = bb.read_table(out / "boxes.parquet")
    pd.testing.assert_frame_equal(back, table)
    assert bb.reference_csv(back) == EXPECTED_TRAIN_CSV
    bb.write_outputs(table, out / "boxes.parquet", out / "train.csv")  # again, without the validation CSV
    assert not [p for p in out.iterdir() if fileio.is_temp_path(p)]


def test_write_outputs_never_leaves_a_partial_file(tmp_path: Path, table: pd.DataFrame, monkeypatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "boxes.parquet").write_bytes(b"previous")

    def failing_write(arrow, where, **kwargs):
        where.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        bb.write_outputs(table, out / "boxes.parquet", out / "train.csv", out / "validation.csv")
    assert (out / "boxes.parquet").read_bytes() == b"previous"
    assert sorted(p.name for p in out.iterdir()) == ["boxes.parquet"]  # no temp file, no CSV


def test_write_outputs_refuses_a_table_that_is_not_one(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        bb.write_outputs(pd.DataFrame({"image": ["x"]}), tmp_path / "b.parquet", tmp_path / "b.csv")
    assert list(tmp_path.iterdir()) == []


def test_boxes_by_image(table: pd.DataFrame) -> None:
    boxes = bb.boxes_by_image(table)
    assert boxes[f"{TENCH}_96.JPEG"] == [
        (0.128, 0.0267, 0.6, 0.5333),
        (0.2, 0.1333, 0.6, 0.5333),
        (0.0, 0.0, 1.0, 1.0),
    ]
    assert boxes[f"{TENCH}_1200.JPEG"] == [(0.02, 0.0267, 0.04, 0.0533), (0.002, 0.0027, 0.006, 0.008)]
    assert boxes["ILSVRC2012_val_00000001.JPEG"] == [(0.1, 0.1, 0.5, 0.5)]  # the zero-area box is not there
    assert f"{TENCH}_7.JPEG" not in boxes
    assert sum(len(v) for v in boxes.values()) == int(table["kept"].sum())
    # Box order even when the table is not in order.
    shuffled = table.sample(frac=1.0, random_state=3)
    assert bb.boxes_by_image(shuffled) == boxes


# --- The asset check ---------------------------------------------------------------------------

TRAIN_IMAGES = {
    f"{TENCH}_96.JPEG": TENCH,
    f"{TENCH}_1200.JPEG": TENCH,
    f"{TENCH}_7.JPEG": TENCH,
    f"{GOLDFISH}_31.JPEG": GOLDFISH,
    f"{DEERHOUND}_5.JPEG": DEERHOUND,
    f"{DEERHOUND}_10.JPEG": DEERHOUND,
}


def test_find_problems_passes_a_good_table(table: pd.DataFrame, tmp_path: Path) -> None:
    assert bb.find_problems(table, TRAIN_IMAGES, [GOLDFISH, TENCH]) == []
    bb.write_outputs(table, tmp_path / "b.parquet", tmp_path / "b.csv")
    assert bb.find_problems(bb.read_table(tmp_path / "b.parquet"), TRAIN_IMAGES, [GOLDFISH, TENCH]) == []


def _edit(table: pd.DataFrame, at_image: str, at_box: int, **values) -> pd.DataFrame:
    """A copy of the table with one row's values replaced."""
    table = table.copy()
    row = (table["image"] == at_image) & (table["box"] == at_box)
    assert row.sum() == 1
    for column, value in values.items():
        table.loc[row, column] = value
    return table


@pytest.mark.parametrize(
    "image, box, values, message",
    [
        (
            f"{TENCH}_96.JPEG",
            0,
            {"xmax": 1.5},
            f"train {TENCH}_96.JPEG box 0 ({TENCH}): xmax 1.5 outside [0, 1]",
        ),
        (f"{TENCH}_96.JPEG", 0, {"ymin": -0.1}, "ymin -0.1 outside [0, 1]"),
        (f"{TENCH}_96.JPEG", 1, {"xmin": 0.6}, "xmin 0.6 is not below xmax 0.6"),
        (f"{TENCH}_96.JPEG", 1, {"ymax": 0.1}, "ymin 0.1333 is not below ymax 0.1"),
        (f"{TENCH}_96.JPEG", 0, {"image": f"{TENCH}_404.JPEG"}, "no such image in the train archive"),
        (f"{TENCH}_96.JPEG", 0, {"synset": GOLDFISH}, f"the image is in synset {TENCH} in the train archive"),
        ("ILSVRC2012_val_00000002.JPEG", 0, {"synset": GOLDFISH}, f"the ground truth says {TENCH}"),
        (
            "ILSVRC2012_val_00000002.JPEG",
            0,
            {"image": "ILSVRC2012_val_00000003.JPEG"},
            "beyond the 2 validation images",
        ),
        ("ILSVRC2012_val_00000002.JPEG", 0, {"image": "val_2.JPEG"}, "not a validation image name"),
        (f"{TENCH}_96.JPEG", 0, {"split": "test"}, "unknown split 'test'"),
    ],
)
def test_find_problems_catches(table: pd.DataFrame, image: str, box: int, values: dict, message: str) -> None:
    problems = bb.find_problems(_edit(table, image, box, **values), TRAIN_IMAGES, [GOLDFISH, TENCH])
    assert len(problems) == 1 and message in problems[0], problems


def test_find_problems_catches_nan(table: pd.DataFrame) -> None:
    problems = bb.find_problems(
        _edit(table, f"{TENCH}_96.JPEG", 0, xmin=math.nan), TRAIN_IMAGES, [GOLDFISH, TENCH]
    )
    assert problems == [
        f"train {TENCH}_96.JPEG box 0 ({TENCH}): xmin nan outside [0, 1]",
        f"train {TENCH}_96.JPEG box 0 ({TENCH}): xmin nan is not below xmax 0.6",
    ]


def test_find_problems_ignores_dropped_boxes(table: pd.DataFrame) -> None:
    # The zero-area box (kept False) is out of order by design; the check is about kept boxes.
    assert (
        bb.find_problems(_edit(table, f"{TENCH}_1200.JPEG", 0, xmin=7.0), TRAIN_IMAGES, [GOLDFISH, TENCH])
        == []
    )


def test_find_problems_limit(table: pd.DataFrame) -> None:
    problems = bb.find_problems(table, {}, [GOLDFISH, TENCH], limit=3)
    kept_train = int((table["kept"] & (table["split"] == "train")).sum())
    assert len(problems) == 4 and problems[-1] == f"... and {kept_train - 3} more"
    assert all("no such image" in p for p in problems[:3])
    assert bb.find_problems(table[list(bb.COLUMNS[:3])], {}, []) == [
        f"the bounding-box table lacks columns {list(bb.COLUMNS[3:])}"
    ]


# --- Parsing in helper processes ---------------------------------------------------------------


def _many_members(count: int) -> dict[str, bytes]:
    rng = random.Random(count)
    members = {}
    for i in range(count):
        wnid = sorted(SYNSETS)[i % 3]
        boxes = [
            (wnid, (rng.randint(-5, 60), rng.randint(-5, 60), rng.randint(0, 110), rng.randint(0, 110)))
            for _ in range(i % 3)
        ]
        members[f"{wnid}/{wnid}_{i}.xml"] = voc(wnid, f"{wnid}_{i}", (100, 80), boxes)
    return members


@pytest.fixture
def eager_helpers(monkeypatch) -> list[bool]:
    """Small batches, and helpers waited for once started, so that even a tiny archive uses them.

    Returns, per full batch, whether it went to a helper.
    """
    from concurrent.futures import wait

    monkeypatch.setattr(bb, "_BATCH", 4)
    submitted: list[bool] = []
    submit = box_workers.Helpers.submit

    def submit_when_ready(self, batch):
        future = submit(self, batch)
        if future is None and self.warm_up:
            wait(self.warm_up)
            future = submit(self, batch)
        submitted.append(future is not None)
        return future

    monkeypatch.setattr(box_workers.Helpers, "submit", submit_when_ready)
    return submitted


def test_helper_processes_give_the_same_table(tmp_path: Path, eager_helpers: list[bool]) -> None:
    archive = make_archive(tmp_path / TRAIN, _many_members(60))
    alone = bb.read_train_boxes(archive, SYNSETS, workers=1)
    assert eager_helpers == []
    pd.testing.assert_frame_equal(bb.read_train_boxes(archive, SYNSETS, workers=2), alone)
    assert any(eager_helpers)
    assert len(alone) == 60 and alone["image"].is_monotonic_increasing


def test_helper_processes_report_the_first_problem_in_archive_order(
    tmp_path: Path, eager_helpers: list[bool]
) -> None:
    members = _many_members(40)
    names = list(members)
    members[names[9]] = b"<annotation>"  # the first problem
    members[names[30]] = voc(TENCH, "f", (10, 10), [(TENCH, (1, "x", 3, 4))])
    members["n09999999/n09999999_1.xml"] = members.pop(names[35])
    archive = make_archive(tmp_path / TRAIN, members)
    for workers in (1, 2):
        with pytest.raises(BoundingBoxError, match=f"^{TRAIN} member {names[9]}: malformed XML"):
            bb.read_train_boxes(archive, SYNSETS, workers=workers)
    # Without it, the next problem in archive order (found by whichever process) is reported.
    del members[names[9]]
    archive = make_archive(tmp_path / "2" / TRAIN, members)
    for workers in (1, 2):
        expected = f"^{TRAIN} member {names[30]}: box 0 <bndbox>/<ymin> is not a number"
        with pytest.raises(BoundingBoxError, match=expected):
            bb.read_train_boxes(archive, SYNSETS, workers=workers)
    assert any(eager_helpers)


def test_without_working_helpers_the_main_process_parses_everything(tmp_path: Path, monkeypatch) -> None:
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    archive = make_archive(tmp_path / TRAIN, _many_members(30))
    alone = bb.read_train_boxes(archive, SYNSETS, workers=1)
    monkeypatch.setattr(bb, "_BATCH", 4)

    def cannot_start(*args, **kwargs):
        raise AssertionError("daemonic processes are not allowed to have children")

    monkeypatch.setattr(box_workers, "ProcessPoolExecutor", cannot_start)
    pd.testing.assert_frame_equal(bb.read_train_boxes(archive, SYNSETS, workers=3), alone)

    def died(self, batch):  # a helper killed (say, by the OOM killer) after taking the batch
        future = Future()
        future.set_exception(BrokenProcessPool("a child process terminated abruptly"))
        return future

    monkeypatch.setattr(box_workers.Helpers, "submit", died)
    pd.testing.assert_frame_equal(bb.read_train_boxes(archive, SYNSETS, workers=2), alone)
