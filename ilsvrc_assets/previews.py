"""Pictures and small tables of what each stage made, to look at before training.

Each function here takes what its stage already has in hand (the image index, the box table,
the tree on disk, a shard file) and returns small value objects: a :class:`Picture` (a PNG and
a caption) or a :class:`TablePreview` (a few rows). They are cheap by construction: a fixed
sample of images read by their index offsets (one seek and one read each), counts already in
the tables, the first records of one shard; never a second pass over the data. The Dagster
layer shows them on each materialisation; :func:`write` puts each beside the outputs, under
``<data>/previews/<asset>/``, so they can be opened outside the UI too.

Plots are drawn with matplotlib's Agg backend (no display, no pyplot state), images with
Pillow (:mod:`ilsvrc_assets.contact_sheets`). The output is deterministic: the same data give
the same PNG bytes (matplotlib's defaults and bundled font, no "Software" entry in the PNG, a
fixed SVG hash salt; samples chosen by a fixed hash of the file names, never at random).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ilsvrc_assets import contact_sheets, fileio, release, storage
from ilsvrc_assets.contact_sheets import Box, Tile

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ilsvrc_assets.sources import ImageReader, Reading

DPI = 80  # small files: a 9 x 2.6 inch plot is 720 x 208 pixels
TOP_COLOUR = "#1f77b4"
LOW_COLOUR = "#d62728"


@dataclass(frozen=True)
class Picture:
    """One picture: ``name`` is its file stem (``<name>.png``), ``caption`` says what it shows."""

    name: str
    png: bytes
    caption: str


@dataclass(frozen=True)
class TablePreview:
    """A few rows worth showing as a table (written beside the pictures as ``<name>.csv``)."""

    name: str
    table: pd.DataFrame
    caption: str


Preview = Picture | TablePreview


def folder_for(data_dir: Path, asset: str) -> Path:
    """Where the previews of ``asset`` are written: ``<data>/previews/<asset>/``."""
    return data_dir / "previews" / asset


def write(preview: Preview, folder: Path) -> Path:
    """Write ``preview`` into ``folder`` atomically (a picture as PNG, a table as CSV); return its path."""
    if isinstance(preview, Picture):
        path = folder / f"{preview.name}.png"
        storage.write_bytes(path, preview.png)
    else:
        path = folder / f"{preview.name}.csv"
        storage.write_text(path, preview.table.to_csv(index=False))
    return path


def write_all(previews: Sequence[Preview], folder: Path) -> list[Path]:
    """Write every preview into ``folder``; return their paths in order."""
    return [write(preview, folder) for preview in previews]


# --- Plots ----------------------------------------------------------------------------------------

# matplotlib's own defaults (not the user's matplotlibrc), its bundled DejaVu font, and a fixed
# hash salt: what makes the same data draw the same bytes on every machine with this version.
_RC = {"font.family": "DejaVu Sans", "font.size": 8, "svg.hashsalt": "ilsvrc_assets", "axes.titlesize": 9}


@contextmanager
def new_figure(width: float, height: float) -> Iterator[tuple[Figure, Any]]:
    """A figure of ``width`` x ``height`` inches with one axes, on an Agg canvas."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(_RC)
        figure = Figure(figsize=(width, height), dpi=DPI)
        # Fixed margins: the constrained layout engine costs more than the drawing.
        figure.subplots_adjust(
            left=0.8 / width, right=1 - 0.2 / width, bottom=0.5 / height, top=1 - 0.3 / height
        )
        FigureCanvasAgg(figure)
        yield figure, figure.add_subplot()


def figure_png(figure: Figure) -> bytes:
    """The figure as PNG bytes, without the "Software" entry (it names matplotlib's version)."""
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=DPI, metadata={"Software": None})
    return out.getvalue()


# --- Image indexes: train_images, validation_images ------------------------------------------------


def class_counts(index: pd.DataFrame, synsets: Sequence[str] | None = None) -> pd.Series:
    """Images per synset, most first (ties by WNID), with 0 for any of ``synsets`` that has none."""
    counts = index.groupby("synset").size()
    if synsets is not None:
        counts = counts.reindex(sorted(set(synsets) | set(counts.index)), fill_value=0)
    counts = counts.sort_index()
    return counts.iloc[np.argsort(-counts.to_numpy(), kind="stable")].astype("int64")


def draw_class_counts(ax: Any, counts: pd.Series, split: str) -> None:
    """One bar per synset on the axes ``ax``, sorted, the fewest and the most marked."""
    values = counts.to_numpy()
    # One filled step artist for all bars: 1,000 rectangle artists take seconds to draw.
    ax.stairs(values, np.arange(len(values) + 1) - 0.5, fill=True, color=TOP_COLOUR)
    ax.set_xlim(-0.5, max(len(values), 1) - 0.5)
    ax.set_xlabel(f"synsets, most images first ({len(values):,})")
    ax.set_ylabel("images")
    ax.set_title(f"{split}: images per class ({int(values.sum()):,} images)")
    if len(values):
        # The extremes as lines across the plot and in words, where no bar can hide them.
        for value, colour in ((values[0], "black"), (values[-1], LOW_COLOUR)):
            ax.axhline(value, color=colour, linewidth=0.8, linestyle="--")
        ax.text(
            0.99,
            0.97,
            f"most: {counts.index[0]} ({values[0]:,})\nfewest: {counts.index[-1]} ({values[-1]:,})",
            transform=ax.transAxes,
            ha="right",
            va="top",
            bbox={"facecolor": "white", "edgecolor": "gray", "linewidth": 0.5},
        )
        ax.set_ylim(0, values.max() * 1.35 + 1)


def images_per_class(index: pd.DataFrame, split: str, synsets: Sequence[str] | None = None) -> Picture:
    """Bars of images per synset (the 732 and 1,300 extremes of the training set visible)."""
    counts = class_counts(index, synsets)
    with new_figure(9, 2.6) as (figure, ax):
        draw_class_counts(ax, counts, split)
        png = figure_png(figure)
    low, high = (int(counts.iloc[-1]), int(counts.iloc[0])) if len(counts) else (0, 0)
    return Picture(
        "images_per_class",
        png,
        f"{split}: images per class, sorted; {len(counts):,} classes, from {low:,} to {high:,} images",
    )


def smallest_classes(index: pd.DataFrame, synset_table: pd.DataFrame, rows: int = 10) -> TablePreview:
    """The ``rows`` synsets with the fewest images: WNID, TF label, text, images."""
    counts = class_counts(index, list(synset_table["wnid"]))
    fewest = counts.iloc[::-1].head(rows)
    by_wnid = synset_table.set_index("wnid")
    table = pd.DataFrame(
        {
            "wnid": fewest.index,
            "label": [int(by_wnid.at[w, "label"]) if w in by_wnid.index else 0 for w in fewest.index],
            "text": [str(by_wnid.at[w, "text"]) if w in by_wnid.index else "" for w in fewest.index],
            "images": fewest.to_numpy(),
        }
    )
    return TablePreview("smallest_classes", table, f"the {len(table)} classes with the fewest images")


def image_sizes(index: pd.DataFrame, split: str) -> Picture:
    """A histogram of the images' file sizes in bytes (log scale; the index has no pixel sizes)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    sizes = index["size"].to_numpy()
    with new_figure(6, 2.4) as (figure, ax):
        if len(sizes):
            low, high = max(1, int(sizes.min())), max(2, int(sizes.max()))
            edges = np.geomspace(low, high * 1.0001, 41)
            ax.hist(sizes, bins=edges, color=TOP_COLOUR)
            ax.set_xscale("log")
            # Plain labels ("10.0 KB") and no minor ticks: the default "10^4" labels go through
            # matplotlib's TeX parser, which costs more than the rest of the plot.
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 3.0)))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: fileio.format_bytes(value)))
            ax.axvline(float(np.median(sizes)), color=LOW_COLOUR, linewidth=1)
        ax.set_xlabel("file size (log scale); red: median")
        ax.set_ylabel("images")
        ax.set_title(f"{split}: image file sizes ({len(sizes):,} images)")
        png = figure_png(figure)
    median = int(np.median(sizes)) if len(sizes) else 0
    return Picture(
        "image_sizes", png, f"{split}: file sizes of {len(sizes):,} images, median {median:,} bytes"
    )


def for_image_index(index: pd.DataFrame, split: str, synset_table: pd.DataFrame) -> list[Preview]:
    """The previews of an image index asset (``train_images``, ``validation_images``)."""
    synsets = list(synset_table["wnid"])
    return [
        images_per_class(index, split, synsets),
        smallest_classes(index, synset_table),
        image_sizes(index, split),
    ]


# --- Bounding boxes ----------------------------------------------------------------------------------

SHEET_TILE = 128
SHEET_COLUMNS = 4
SHEET_IMAGES = {"train": 8, "validation": 4}
SHEET_DROPPED = 4  # of the training tiles, at most this many show images with a dropped box


def box_counts(table: pd.DataFrame) -> TablePreview:
    """Boxes per split, kept and dropped by reason."""
    outcome = table["drop_reason"].where(~table["kept"], "kept").fillna("dropped")
    outcome = outcome.where(outcome != "", "dropped")
    counts = (
        pd.DataFrame({"split": table["split"], "outcome": outcome})
        .groupby(["split", "outcome"])
        .size()
        .rename("boxes")
        .reset_index()
    )
    counts["boxes"] = counts["boxes"].astype("int64")
    counts["order"] = counts["outcome"] != "kept"  # kept first, then the reasons by name
    counts = counts.sort_values(["split", "order", "outcome"]).drop(columns="order").reset_index(drop=True)
    return TablePreview("box_counts", counts, "bounding boxes per split: kept, and dropped by reason")


def box_areas(table: pd.DataFrame) -> Picture:
    """A histogram of the kept boxes' areas as a fraction of their image, per split."""
    kept = table[table["kept"]]
    area = ((kept["xmax"] - kept["xmin"]) * (kept["ymax"] - kept["ymin"])).to_numpy()
    edges = np.linspace(0.0, 1.0, 26)
    with new_figure(6, 2.4) as (figure, ax):
        for split, colour in zip(release.SPLITS, (TOP_COLOUR, LOW_COLOUR)):
            values = area[(kept["split"] == split).to_numpy()]
            ax.hist(values, bins=edges, histtype="step", color=colour, label=f"{split} ({len(values):,})")
        ax.set_xlabel("box area / image area")
        ax.set_ylabel("kept boxes")
        ax.set_title("kept boxes by relative area")
        ax.legend(loc="upper right", frameon=False)
        png = figure_png(figure)
    return Picture("box_areas", png, f"relative area of {len(area):,} kept boxes, per split")


def _stable_order(names: pd.Series) -> pd.Series:
    """``names`` ordered by a fixed hash: a sample spread over the split, the same on every run."""
    hashes = pd.util.hash_pandas_object(names, index=False)
    return names.iloc[np.argsort(hashes.to_numpy(), kind="stable")]


def sample_box_images(table: pd.DataFrame, split: str, count: int, dropped_first: int = 0) -> list[str]:
    """A fixed sample of ``count`` images of ``split`` that have boxes; up to ``dropped_first``
    of them with a dropped box (so the sheet shows what the rules drop), then others."""
    rows = table[table["split"] == split]
    with_dropped = _stable_order(pd.Series(rows.loc[~rows["kept"], "image"].unique()))
    chosen = list(with_dropped.head(min(dropped_first, count)))
    others = _stable_order(pd.Series(rows["image"].unique()))
    for name in others.head(count + len(chosen)):
        if len(chosen) == count:
            break
        if name not in chosen:
            chosen.append(name)
    return chosen


def _box_tiles(
    table: pd.DataFrame, split: str, names: list[str], index: pd.DataFrame, reader: ImageReader
) -> list[Tile]:
    where = index[index["filename"].isin(names)].set_index("filename")
    rows = table[(table["split"] == split) & table["image"].isin(names)].sort_values(["image", "box"])
    tiles = []
    with reader.open() as reading:
        for name in names:
            tiles.append(_box_tile(rows, name, where, reading))
    return tiles


def _box_tile(rows: pd.DataFrame, name: str, where: pd.DataFrame, reading: Reading) -> Tile:
    boxes = rows[rows["image"] == name]
    reasons = sorted({str(r) for r in boxes.loc[~boxes["kept"], "drop_reason"]})
    drawn = tuple(
        Box(b.xmin, b.ymin, b.xmax, b.ymax, bool(b.kept))
        for b in boxes.itertuples()
        if not np.isnan([b.xmin, b.ymin, b.xmax, b.ymax]).any()  # a bad frame has no normalised box
    )
    shown = name.removeprefix("ILSVRC2012_")  # the validation names are too long for a tile
    caption = (shown, f"dropped: {', '.join(reasons)}" if reasons else f"{len(drawn)} kept boxes")
    if name in where.index:
        data = reading.read(name, int(where.at[name, "offset"]), int(where.at[name, "size"]))
    else:  # a box file for an image the archive lacks (the check reports it); show the gap
        data, caption = b"", (shown, "not in the archive")
    return Tile(data, caption, drawn)


def box_contact_sheet(
    table: pd.DataFrame, sources: Mapping[str, tuple[pd.DataFrame, ImageReader]]
) -> tuple[Picture, contact_sheets.Sheet]:
    """Training and validation images with their boxes: kept solid green, dropped dashed magenta.

    ``sources`` maps each split to its image index and the reader of its images. Returns the picture and the
    drawn sheet (where each image lies on it, in the order of :func:`sample_box_images`).
    """
    tiles = []
    for split in release.SPLITS:
        if split not in sources:
            continue
        dropped = SHEET_DROPPED if split == "train" else 0
        names = sample_box_images(table, split, SHEET_IMAGES[split], dropped)
        index, reader = sources[split]
        tiles.extend(_box_tiles(table, split, names, index, reader))
    sheet = contact_sheets.draw_sheet(tiles, SHEET_COLUMNS, SHEET_TILE)
    caption = (
        f"{len(tiles)} images with their boxes as the records store them (normalised, drawn on the "
        "image): kept solid green, dropped dashed magenta with the reason"
    )
    return Picture("box_contact_sheet", sheet.png, caption), sheet


def for_bounding_boxes(
    table: pd.DataFrame,
    train_index: pd.DataFrame,
    train_reader: ImageReader,
    validation_index: pd.DataFrame,
    validation_reader: ImageReader,
) -> list[Preview]:
    """The previews of ``bounding_boxes``: the contact sheet, the counts, the area histogram."""
    sheet, _ = box_contact_sheet(
        table, {"train": (train_index, train_reader), "validation": (validation_index, validation_reader)}
    )
    return [sheet, box_counts(table), box_areas(table)]


# --- The validation tree ------------------------------------------------------------------------------

TREE_CLASSES = 20
TREE_TILE = 96


def for_validation_tree(
    tree: Path, synset_table: pd.DataFrame, classes: int = TREE_CLASSES, name: str = "validation_classes"
) -> list[Preview]:
    """One image per class for ``classes`` classes spread evenly over the sorted WNIDs, read from
    the tree on disk (the first file of each folder: what ``ImageFolder`` reads), labelled with
    the WNID and the text. The training tree's is the same picture, ``name`` ``train_classes``."""
    texts = dict(zip(synset_table["wnid"], synset_table["text"]))
    folders = sorted(entry.name for entry in os.scandir(tree) if entry.is_dir()) if tree.is_dir() else []
    step = max(1, len(folders) // classes)
    tiles = []
    for wnid in folders[::step][:classes]:
        files = sorted(f for f in os.listdir(tree / wnid) if not fileio.is_temp_path(Path(f)))
        data = (tree / wnid / files[0]).read_bytes() if files else b""
        text = str(texts.get(wnid, "not a challenge synset"))
        tiles.append(Tile(data, (f"{wnid} ({len(files)})", text)))
    sheet = contact_sheets.draw_sheet(tiles, 5, TREE_TILE)
    return [
        Picture(
            name,
            sheet.png,
            f"the first image of {len(tiles)} of the {len(folders):,} class folders, with the WNID, "
            "the number of images in the folder and the class text",
        )
    ]
