"""The reference rules: every box of the parsed annotations as a row of the bounding-box table.

Each box keeps its pixel coordinates as written and gets its coordinates normalised by the rules
of TensorFlow inception's ``process_bounding_boxes.py``; boxes that script drops stay in the
table with ``kept`` False and a ``drop_reason``, so the reference CSV is exactly the kept rows and
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

The rules are applied to all boxes of many files at once with numpy: per-box Python would cost
more than the XML parsing.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pandas as pd

from ilsvrc_assets.box_xml import Box

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

COORDINATES = ("xmin", "ymin", "xmax", "ymax")


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


def table_of_files(
    split: str, files: list[tuple[str, str, float, float, list[Box]]], synsets: Collection[str]
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
    objects: list[Box] = []
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
    pixels = {c: np.array(v, dtype=np.float64) for c, v in zip(COORDINATES, pixel_columns)}
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
        **{f"{c}_px": pixels[c] for c in COORDINATES},
        **normalised,
        "kept": kept,
        "drop_reason": reason,
    }
    return typed(pd.DataFrame(data, columns=list(COLUMNS)))


def typed(table: pd.DataFrame) -> pd.DataFrame:
    """The table with its fixed column dtypes (also for an empty table)."""
    return table.astype({**{c: "str" for c in _TEXT_COLUMNS}, **_DTYPES})
