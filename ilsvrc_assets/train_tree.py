"""The training images sorted into one folder per synset: ``<data>/train/<wnid>/<wnid>_<n>.JPEG``.

With ``<data>/validation/`` (:mod:`ilsvrc_assets.validation_tree`) it is the layout
``torchvision.datasets.ImageFolder`` reads: the classes are the sorted folder names, so its 0-based
labels are the TFRecords' 1-based ones minus one. Opt-in: it is the whole training set again (about
140 GB in 1,281,167 files), so ``ilsvrc-assets build`` leaves it out unless asked
(``ILSVRC_FORMATS=tfrecord,imagefolder``: ``defs/outputs.FORMAT_ASSETS``, ``definitions.left_out``).

Each file holds its archive member's bytes as they are, like the validation tree: the one PNG and
the 22 CMYK JPEGs keep their own bytes and names (the PIL loader ImageFolder uses reads both and
converts them to RGB; only the TFRecords need them re-encoded).

Made one synset at a time in archive order, so one forward pass over the train archive (with
several threads, each takes a contiguous run of synsets with a file handle of its own), nothing
extracted first, and no Python object per image beyond the index itself: each folder is listed,
the files complete from an earlier run (size as indexed: files appear by rename, so they are whole)
are kept, anything else in it is removed, and the missing images are written under temporary names
and renamed. Re-running after an interruption writes only what is missing.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ilsvrc_assets import archives, class_folders, fileio, synsets, versions
from ilsvrc_assets.settings import Settings
from ilsvrc_assets.stage import Log, Made, Verdict, quiet
from ilsvrc_assets.validation_tree import TreeStats, make_class_tree

if TYPE_CHECKING:
    from ilsvrc_assets.sources import ImageReader, ImageSource

Group = tuple[str, int, int]  # a synset and its rows [start, end) in the ordered index


def by_synset(index: pd.DataFrame) -> tuple[pd.DataFrame, list[Group]]:
    """The index ordered for one forward pass, and each synset's run of rows in it.

    Synsets come in the order of their first image in the archive (the official archive stores
    each synset's images together, in an inner tar), each synset's images by offset.
    """
    if index.empty:
        return index.reset_index(drop=True), []
    first = index.groupby("synset")["offset"].transform("min").to_numpy()
    rows = index.iloc[np.lexsort((index["offset"].to_numpy(), first))].reset_index(drop=True)
    synset = rows["synset"].to_numpy()
    starts = np.flatnonzero(np.r_[True, synset[1:] != synset[:-1]])
    ends = np.r_[starts[1:], len(rows)]
    return rows, [(str(synset[s]), int(s), int(e)) for s, e in zip(starts, ends)]


def build(
    reader: ImageReader,
    index: pd.DataFrame,
    dest: Path,
    progress: Callable[[int, int], None] | None = None,
    threads: int = 2,
) -> TreeStats:
    """Write every indexed training image to ``dest/<synset>/<filename>``.

    ``index`` has the columns of :data:`archives.TRAIN_INDEX_COLUMNS`. An image already in place
    with the indexed size is kept; every other entry under ``dest`` is removed (a folder that is
    not an indexed synset, a file that is not one of its synset's images, a sub-folder: ImageFolder
    would read images in sub-folders too). Refuses to start (:class:`fileio.DiskFullError`) when
    the filesystem lacks the space or inodes for the images still to write. ``threads`` write at
    once. Not safe to run twice at once on one ``dest``: callers hold a lock (the asset does).
    """
    rows, groups = by_synset(index)
    names = rows["filename"].to_numpy()
    sizes = rows["size"].to_numpy()
    root = str(dest)
    present, new_folders, removed = _take_stock(root, groups, names, sizes)
    missing = ~present
    needed, files = fileio.space_needed(sizes[missing], dest)
    fileio.require_free_space(
        dest, needed, files + new_folders, f"the training tree ({files:,} images to write)"
    )
    skipped = int(present.sum())
    written = _write_images(
        reader,
        root,
        rows,
        [g for g in groups if missing[g[1] : g[2]].any()],
        missing,
        threads,
        lambda n: progress and progress(skipped + n, len(rows)),
    )
    if progress:
        progress(len(rows), len(rows))
    return TreeStats(
        images=len(rows), written=written, skipped=skipped, removed=removed, bytes=int(sizes.sum())
    )


def _take_stock(
    root: str, groups: Sequence[Group], names: np.ndarray, sizes: np.ndarray
) -> tuple[np.ndarray, int, int]:
    """(which rows are already in place, how many synset folders are still to make, how many
    entries were removed), tidying ``root`` on the way (see :func:`build`)."""
    present = np.zeros(len(names), dtype=bool)
    removed = new_folders = 0
    expected = {synset for synset, _, _ in groups}
    if os.path.isdir(root):
        for entry in os.scandir(root):
            if entry.name not in expected or not entry.is_dir(follow_symlinks=False):
                removed += _remove(entry)
    for synset, start, end in groups:
        try:
            entries = list(os.scandir(f"{root}/{synset}"))
        except FileNotFoundError:
            new_folders += 1
            continue
        wanted = dict(zip(names[start:end], range(start, end)))
        for entry in entries:
            row = wanted.get(entry.name)
            if row is None or not entry.is_file(follow_symlinks=False):
                removed += _remove(entry)
            elif entry.stat(follow_symlinks=False).st_size == sizes[row]:
                present[row] = True
            # else: cut short by something other than this stage; replaced by the rename
    return present, new_folders, removed


def _remove(entry: os.DirEntry) -> int:
    """Delete a file, or a folder with everything in it; how many files went."""
    if entry.is_dir(follow_symlinks=False):
        count = sum(len(files) for _, _, files in os.walk(entry.path))
        shutil.rmtree(entry.path)
        return count
    os.unlink(entry.path)
    return 1


def _write_images(
    reader: ImageReader,
    root: str,
    rows: pd.DataFrame,
    groups: Sequence[Group],
    missing: np.ndarray,
    threads: int,
    progress: Callable[[int], object],
) -> int:
    """Write the ``missing`` rows of ``groups`` (in archive order), each thread a contiguous run of
    synsets with about as many images to write as the others (:func:`class_folders.write_members`)."""
    counts = np.array([int(missing[start:end].sum()) for _, start, end in groups], dtype=np.int64)
    total = int(counts.sum())
    if not total:
        return 0
    threads = min(class_folders.threads_for(total, threads), len(groups))
    # Cut the synsets where the running count of images to write crosses each thread's share.
    cuts = np.searchsorted(np.cumsum(counts), [total * k / threads for k in range(1, threads)])
    bounds = [0, *sorted({int(c) + 1 for c in cuts}), len(groups)]
    names = rows["filename"].to_numpy()
    offsets = rows["offset"].to_numpy()
    sizes = rows["size"].to_numpy()

    def members(part: Sequence[Group]) -> Iterator[class_folders.Member]:
        for synset, start, end in part:
            folder = f"{root}/{synset}"
            os.makedirs(folder, exist_ok=True)
            for row in np.flatnonzero(missing[start:end]) + start:
                name = names[row]
                where = f"{reader.where} member {synset}.tar/{name}"
                yield folder, name, int(offsets[row]), int(sizes[row]), where

    chunks = [members(groups[a:b]) for a, b in itertools.pairwise(bounds) if a < b]
    return class_folders.write_members(reader, root, chunks, progress)


# --- What the tree holds, against the index ------------------------------------------------------


def problems(
    dest: Path, index: pd.DataFrame, wnids: Sequence[str], limit: int = 10
) -> tuple[list[str], dict[str, int]]:
    """How the tree on disk differs from the index ([] when it matches exactly), and what it holds.

    Expected: one folder per synset of ``wnids`` (the 1,000), holding exactly the images the index
    lists for it, each of the indexed size, and nothing else (no other file or folder, at the top
    or inside a class folder). Temporary files of a writer are not counted (ImageFolder skips them:
    their names do not end in an image extension); the next build removes a dead writer's.
    Listed one folder at a time: only one synset's names are held at once.
    """
    rows, groups = by_synset(index)
    names = rows["filename"].to_numpy()
    sizes = rows["size"].to_numpy()
    runs = {synset: (start, end) for synset, start, end in groups}
    classes = set(wnids)
    found = _Findings(limit)
    folders = files = 0
    on_disk = {e.name: e for e in os.scandir(dest)} if dest.is_dir() else {}
    for name, entry in sorted(on_disk.items()):
        is_dir = entry.is_dir(follow_symlinks=False)
        folders += is_dir
        # The published version's completeness marker sits at the top (ImageFolder reads folders only).
        if (is_dir and (name in classes or name in runs)) or name in versions.MARKER_FILES:
            continue
        if not fileio.is_temp_path(Path(name)):
            found.add("stray", f"{name}/" if is_dir else name)
    for synset in sorted(classes | set(runs)):
        start, end = runs.get(synset, (0, 0))
        entry = on_disk.get(synset)
        if entry is None or not entry.is_dir(follow_symlinks=False):
            found.add("missing", f"{synset}/ ({end - start:,} images)")
            continue
        wanted = dict(zip(names[start:end], range(start, end)))
        count = 0
        for item in sorted(os.scandir(entry.path), key=lambda e: e.name):
            if fileio.is_temp_path(Path(item.name)):
                continue
            row = wanted.pop(item.name, None)
            if row is None or not item.is_file(follow_symlinks=False):
                found.add(
                    "stray", f"{synset}/{item.name}" + ("/" if item.is_dir(follow_symlinks=False) else "")
                )
                continue
            count += 1
            size = item.stat(follow_symlinks=False).st_size
            if size != sizes[row]:
                found.add("wrong size", f"{synset}/{item.name} ({size:,} bytes, indexed {int(sizes[row]):,})")
        files += count
        for name in sorted(wanted):
            found.add("missing", f"{synset}/{name}")
        if count != end - start:
            found.add("wrong image count", f"{synset}: {count:,} images, the index has {end - start:,}")
    head = [f"{folders:,} class folders, expected {len(classes):,}"] if folders != len(classes) else []
    return head + found.lines(), {"images": files, "folders": folders, "expected_images": len(rows)}


class _Findings:
    """Problems by kind: the first ``limit`` of each kind named, the rest counted."""

    KINDS = ("wrong image count", "missing", "stray", "wrong size")

    def __init__(self, limit: int):
        self.limit = limit
        self.shown: dict[str, list[str]] = {kind: [] for kind in self.KINDS}
        self.counts = dict.fromkeys(self.KINDS, 0)

    def add(self, kind: str, item: str) -> None:
        self.counts[kind] += 1
        if len(self.shown[kind]) < self.limit:
            self.shown[kind].append(item)

    def lines(self) -> list[str]:
        return [
            f"{kind}: {', '.join(self.shown[kind])}"
            + (f" and {self.counts[kind] - self.limit:,} more" if self.counts[kind] > self.limit else "")
            for kind in self.KINDS
            if self.counts[kind]
        ]


# --- The stage and its check ---------------------------------------------------------------------


def make_train_tree(settings: Settings, source: ImageSource, log: Log = quiet) -> Made:
    """Stage ``train_tree``: every indexed training image into ``<data>/train/<wnid>/``.

    Needs ``train_images``. Held under the tree's lock: a second run at once would delete this
    one's temporary files.
    """
    return make_class_tree(settings, source, "train", build, log, "train_classes")


def train_tree_verdict(settings: Settings) -> Verdict:
    """Check ``matches_train_index``: the tree on disk against the training image index."""
    index = archives.read_index(settings.image_index("train"))
    wnids = list(synsets.read_synsets(settings.synsets_csv)["wnid"])
    found, facts = problems(versions.judged(settings, "train"), index, wnids)
    return Verdict(
        found,
        f"{facts['images']:,} images in {facts['folders']:,} class folders, as the index lists them",
        dict(facts),
    )
