"""The validation images sorted into one folder per synset: ``<data>/validation/<wnid>/<file>``.

Made in one forward pass over the validation archive (images read in offset order from the
index; with several threads, each takes a contiguous part), with no flat extraction first. Each
image is written under a temporary name and renamed into place, so re-running after an
interruption writes only what is missing, and images that no longer belong (an earlier run with
other labels) are removed.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ilsvrc_assets import archives, class_folders, fileio, previews, release, synsets, versions
from ilsvrc_assets.progress import Progress
from ilsvrc_assets.settings import Settings
from ilsvrc_assets.stage import Log, Made, Verdict, quiet

if TYPE_CHECKING:
    from ilsvrc_assets.sources import ImageReader, ImageSource


@dataclass(frozen=True)
class TreeStats:
    images: int  # in the tree after the build
    written: int  # newly written by this build
    skipped: int  # already in place from an earlier build
    removed: int  # files that did not belong and were deleted
    bytes: int  # total size of the images in the tree

    def metadata(self) -> dict[str, int]:
        """What a class-folder tree's asset shows about its build (the validation and training trees)."""
        return {
            "images": self.images,
            "written": self.written,
            "already_in_place": self.skipped,
            "removed_misplaced": self.removed,
            "bytes": self.bytes,
        }


def build(
    reader: ImageReader,
    index: pd.DataFrame,
    dest: Path,
    progress: Callable[[int, int], None] | None = None,
    threads: int = 2,
) -> TreeStats:
    """Write every indexed validation image to ``dest/<synset>/<filename>``.

    ``index`` has the columns of :data:`archives.VALIDATION_INDEX_COLUMNS`. An image already in
    place with the right size is kept (it can only be complete: files appear by rename); any
    other file under ``dest`` is removed. Refuses to start (:class:`fileio.DiskFullError`) when the
    filesystem lacks the space or inodes for the images still to write. ``threads`` write at
    once (file creation waits on the disk, not on Python). Not safe to run twice at once on one
    ``dest``: callers hold a lock (the asset does).
    """
    expected = {Path(s) / f for s, f in zip(index["synset"], index["filename"])}
    removed = _remove_unexpected(dest, expected)
    rows = index.sort_values("offset")  # one forward pass over the archive
    root = str(dest)
    in_place = [
        _in_place(f"{root}/{s}/{f}", int(n))
        for s, f, n in zip(rows["synset"], rows["filename"], rows["size"])
    ]
    missing = [int(n) for n, done in zip(rows["size"], in_place) if not done]
    folders = 0 if dest.is_dir() else 1 + rows["synset"].nunique()
    needed, files = fileio.space_needed(missing, dest)
    fileio.require_free_space(
        dest, needed, files + folders, f"the validation tree ({len(missing):,} images to write)"
    )
    total_bytes = int(rows["size"].sum())
    todo = [
        (filename, synset, int(offset), int(size))
        for filename, synset, offset, size, present in zip(
            rows["filename"], rows["synset"], rows["offset"], rows["size"], in_place
        )
        if not present
    ]
    for synset in sorted({synset for _, synset, _, _ in todo}):
        os.makedirs(f"{root}/{synset}", exist_ok=True)
    skipped = len(rows) - len(todo)
    written = _write_images(
        reader, root, todo, threads, lambda n: progress and progress(skipped + n, len(rows))
    )
    if progress:
        progress(len(rows), len(rows))
    return TreeStats(images=len(rows), written=written, skipped=skipped, removed=removed, bytes=total_bytes)


def _write_images(
    reader: ImageReader,
    root: str,
    todo: Sequence[tuple[str, str, int, int]],
    threads: int,
    progress: Callable[[int], object],
) -> int:
    """Write ``todo`` (filename, synset, offset, size; in offset order), each thread a contiguous run
    of the archive (:func:`class_folders.write_members`)."""
    if not todo:
        return 0
    step = -(-len(todo) // class_folders.threads_for(len(todo), threads))

    def members(part: Sequence[tuple[str, str, int, int]]) -> Iterator[class_folders.Member]:
        for filename, synset, offset, size in part:
            yield f"{root}/{synset}", filename, offset, size, f"{reader.where} member {filename}"

    chunks = [members(todo[i : i + step]) for i in range(0, len(todo), step)]
    return class_folders.write_members(reader, root, chunks, progress)


def _in_place(target: str, size: int) -> bool:
    """Whether an earlier build already wrote this image (files appear by rename, so whole)."""
    try:
        return os.stat(target).st_size == size
    except FileNotFoundError:
        return False


def _remove_unexpected(dest: Path, expected: set[Path]) -> int:
    """Delete files under ``dest`` that are not expected there (and left-over temp files)."""
    removed = 0
    if not dest.is_dir():
        return 0
    for root, _dirs, files in os.walk(dest):
        for name in files:
            path = Path(root) / name
            if path.relative_to(dest) not in expected:
                path.unlink()
                removed += 1
    for entry in dest.iterdir():
        if entry.is_dir() and not any(entry.iterdir()):
            entry.rmdir()
    return removed


def scan(dest: Path) -> dict[str, list[str]]:
    """What the tree holds: synset folder -> sorted file names (temp files ignored)."""
    tree: dict[str, list[str]] = {}
    if not dest.is_dir():
        return tree
    for folder in sorted(dest.iterdir()):
        if folder.is_dir():
            tree[folder.name] = sorted(f.name for f in folder.iterdir() if not fileio.is_temp_path(f))
        elif not fileio.is_temp_path(folder) and folder.name not in versions.MARKER_FILES:
            tree.setdefault("", []).append(folder.name)
    return tree


def problems(
    tree: Mapping[str, Sequence[str]],
    labels: Sequence[str] | None = None,
    limit: int = 10,
) -> list[str]:
    """How a scanned tree differs from the validation label file ([] when it matches exactly).

    ``labels[i - 1]`` is the synset of image i (default: the shipped label file). Checks that
    every synset has exactly 50 images, 50,000 in all, and every image is in its own folder.
    """
    labels = release.validation_synsets() if labels is None else labels
    expected = {(labels[i - 1], release.validation_filename(i)) for i in range(1, len(labels) + 1)}
    actual = {(synset, name) for synset, names in tree.items() for name in names}
    found: list[str] = []
    total = len(actual)
    if total != release.NUM_VALIDATION_IMAGES:
        found.append(f"{total} images in the tree, expected {release.NUM_VALIDATION_IMAGES}")
    counts = Counter(synset for synset, _ in actual)
    wrong_counts = sorted(
        (s, counts.get(s, 0))
        for s in release.challenge_synsets()
        if counts.get(s, 0) != release.VALIDATION_IMAGES_PER_SYNSET
    )
    for synset, count in wrong_counts[:limit]:
        found.append(f"{synset}: {count} images, expected {release.VALIDATION_IMAGES_PER_SYNSET}")
    if len(wrong_counts) > limit:
        found.append(f"... and {len(wrong_counts) - limit} more synsets with the wrong count")
    missing = sorted(expected - actual, key=lambda p: p[1])
    extra = sorted(actual - expected, key=lambda p: p[1])
    for synset, name in missing[:limit]:
        found.append(f"missing: {synset}/{name}")
    for synset, name in extra[:limit]:
        found.append(f"does not belong: {synset}/{name}" if synset else f"stray file: {name}")
    if len(missing) + len(extra) > 2 * limit:
        found.append(f"({len(missing)} missing and {len(extra)} misplaced in all)")
    return found


# --- The stage and its check ---------------------------------------------------------------------


def make_validation_tree(settings: Settings, source: ImageSource, log: Log = quiet) -> Made:
    """Stage ``validation_tree``: every indexed validation image into ``<data>/validation/<wnid>/``.

    Needs ``validation_images``. Held under the tree's lock: a second run at once would delete
    this one's temporary files.
    """
    return make_class_tree(settings, source, "validation", build, log)


def make_class_tree(
    settings: Settings,
    source: ImageSource,
    split: str,
    build_tree: Callable[..., TreeStats],
    log: Log = quiet,
    preview_name: str | None = None,
) -> Made:
    """The stage of a class-folder tree of ``split`` (``<split>_tree``: this module's, and
    ``train_tree``'s): ``build_tree`` writes the split's indexed images into the unpublished version
    of ``<data>/<split>/`` (:func:`versions.working`) under the stage's lock, with progress; then the
    tree's previews and metadata. Readers see it once ``published_<split>_tree`` has published it."""
    stage = f"{split}_tree"
    index = archives.read_index(settings.image_index(split))
    progress = Progress(f"{split} tree", len(index), "images", log)
    with (
        fileio.exclusive(settings.lock_path(stage), f"{stage} in {settings.data_dir}"),
        versions.writing(settings, split, log) as dest,
    ):
        stats = build_tree(
            source.image_reader(split, log),
            index,
            dest,
            lambda done, _total: progress.update(done),
            threads=settings.workers,
        )
    synset_table = synsets.read_synsets(settings.synsets_csv)
    shown = previews.for_validation_tree(
        dest, synset_table, **({"name": preview_name} if preview_name else {})
    )
    previews.write_all(shown, previews.folder_for(settings.data_dir, stage))
    # Shown as where readers find it once published.
    return Made(versions.where_published(settings, dest), stats.metadata(), previews=shown)


def validation_tree_verdict(settings: Settings) -> Verdict:
    """Check ``matches_validation_label_file``: the tree on disk against the shipped label file."""
    scanned = scan(versions.judged(settings, "validation"))
    return Verdict(
        problems(scanned),
        "50,000 images in 1,000 folders, as the label file says",
        {"images": sum(len(v) for v in scanned.values()), "folders": len(scanned)},
    )
