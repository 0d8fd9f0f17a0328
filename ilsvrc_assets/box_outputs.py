"""The bounding-box table's files (Parquet and the reference CSVs), reading it back, and its check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ilsvrc_assets import release, storage
from ilsvrc_assets.box_rules import COLUMNS, COORDINATES
from ilsvrc_assets.box_xml import BoundingBoxError


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
    with storage.open_output(parquet_path) as f:
        pq.write_table(arrow, f)
    for path, text in texts.items():
        storage.write_text(path, text)


def read_table(path: Path) -> pd.DataFrame:
    """Read a table written by :func:`write_outputs`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: bounding-box table not found; materialise its asset first")
    table = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise BoundingBoxError(f"{path}: not a bounding-box table, lacks columns {missing}")
    return table


KEPT_COLUMNS = ("image", "box", "xmin", "ymin", "xmax", "ymax")


def read_kept(path: Path, split: str) -> pd.DataFrame:
    """The kept boxes of ``split`` in a table written by :func:`write_outputs`: only the rows and the
    columns the records need (:data:`KEPT_COLUMNS`), read as such (not the whole table: at the
    release's 862,088 boxes, a third of the memory)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: bounding-box table not found; materialise its asset first")
    try:
        return pd.read_parquet(
            path, columns=list(KEPT_COLUMNS), filters=[("split", "==", split), ("kept", "==", True)]
        )
    except (KeyError, ValueError) as e:  # pyarrow: a column or a filter's field not in the file
        raise BoundingBoxError(f"{path}: not a bounding-box table ({e})") from e


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
    values = kept[list(COORDINATES)].to_numpy(dtype=np.float64)
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
                f"{c} {v!r}" for c, v, bad in zip(COORDINATES, values[row].tolist(), outside[row]) if bad
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
