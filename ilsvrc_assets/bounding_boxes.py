"""The bounding-box archives as one table, plus the reference CSV the TF inception scripts make.

Both archives hold PASCAL VOC XML files (``<wnid>/<wnid>_<n>.xml`` for training,
``val/ILSVRC2012_val_<8 digits>.xml`` for validation). Every box of every file becomes one row of
the table (:data:`COLUMNS`), with its pixel coordinates as written and its coordinates normalised
by the rules of TensorFlow inception's ``process_bounding_boxes.py``; boxes that script drops stay
in the table with ``kept`` False and a ``drop_reason``.

The stage in modules, each one concern:

* this module reads the two archives (streamed, never extracted, by
  :mod:`ilsvrc_assets.tar_reader`) and assembles the table;
* :mod:`ilsvrc_assets.box_xml` parses one annotation, hardened against hostile XML;
* :mod:`ilsvrc_assets.box_rules` applies the reference rules (and says where they deviate);
* :mod:`ilsvrc_assets.box_workers` parses in helper processes while the archive is read;
* :mod:`ilsvrc_assets.box_outputs` writes and reads the table and the CSVs and checks it.
"""

from __future__ import annotations

import posixpath
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ilsvrc_assets import archives, previews, release, tar_reader
from ilsvrc_assets import synsets as synsets_module
from ilsvrc_assets.box_outputs import (
    boxes_by_image,
    find_problems,
    read_kept,
    read_table,
    reference_csv,
    write_outputs,
)
from ilsvrc_assets.box_rules import (
    COLUMNS,
    DROP_BAD_FRAME,
    DROP_OTHER_SYNSET,
    DROP_ZERO_AREA,
    table_of_files,
    typed,
)
from ilsvrc_assets.box_workers import Helpers, Parsed, parse_batch
from ilsvrc_assets.box_xml import MAX_XML_BYTES, Annotation, BoundingBoxError, parse_annotation
from ilsvrc_assets.collector import gc_paused
from ilsvrc_assets.settings import ENV_BOXES_DIR, Settings
from ilsvrc_assets.stage import Log, Made, Verdict, quiet

if TYPE_CHECKING:
    from ilsvrc_assets.sources import ImageSource

__all__ = [
    "COLUMNS",
    "DROP_BAD_FRAME",
    "DROP_OTHER_SYNSET",
    "DROP_ZERO_AREA",
    "MAX_XML_BYTES",
    "Annotation",
    "BoundingBoxError",
    "boxes_by_image",
    "read_kept",
    "build_table",
    "find_problems",
    "parse_annotation",
    "read_table",
    "read_train_boxes",
    "read_validation_boxes",
    "reference_csv",
    "write_outputs",
]


# --- The archives ------------------------------------------------------------------------------


def tar_box_files(archive: Path) -> Iterator[tuple[str, str, bytes]]:
    """(member name without './', where-string, bytes) of every file member, streamed in archive order.

    Directories are skipped; links and special files, names outside the archive, oversized or
    duplicate members and a damaged or truncated stream raise :class:`BoundingBoxError` naming
    the archive (and member).
    """
    seen: set[str] = set()
    try:
        with tar_reader.open_gzip_tar(archive) as stream:
            for member, data in tar_reader.stream_members(stream, archive.name, max_size=MAX_XML_BYTES):
                name = member.name
                where = f"{archive.name} member {name}"
                if name in seen:
                    raise BoundingBoxError(f"{where}: appears twice in the archive")
                seen.add(name)
                yield name, where, data  # type: ignore[misc]
    except tar_reader.TarError as e:
        raise BoundingBoxError(str(e)) from None


class _HelperFailed(Exception):
    """Carries a helper's BoundingBoxError past the handler for errors found in this process."""

    def __init__(self, error: BoundingBoxError) -> None:
        super().__init__(error)
        self.error = error


_BATCH = 2000  # members per task for a helper: pickling overhead small, memory in flight small
_FRAME_FILES = 50_000


@gc_paused()
def _read(
    members: Iterable[tuple[str, str, bytes]],
    split: str,
    locate: Callable[[str, str], tuple[str, str]],
    synsets: Collection[str],
    helpers: Helpers,
) -> pd.DataFrame:
    """The table of one split's box files (``members``: (name, where, XML bytes), e.g. of
    :func:`tar_box_files`); ``locate(name, where)`` gives (image, synset) or raises.

    Where the files have several problems, the first in archive order is raised, whichever
    process found it.
    """
    located: list[tuple[str, str]] = []  # (image, synset) per file not yet in a frame, in archive order
    parts: list[Parsed | None] = []  # parsed batches, in archive order ([] while with a helper)
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
        frames.append(table_of_files(split, files, synsets))
        located = located[count:]
        for i in range(framed, framed + len(ready)):
            parts[i] = None
        framed += len(ready)

    try:
        try:
            for name, where, data in members:
                located.append(locate(name, where))
                batch.append((where, data))
                if len(batch) == _BATCH:
                    settle(wait=False)
                    busy = len(pending) >= helpers.max_pending
                    future = None if busy else helpers.submit(batch)
                    if future is None:
                        parts.append(parse_batch(batch))
                    else:
                        pending.append((len(parts), future, batch))
                        parts.append([])
                    batch = []
                    to_frames(last=False)
            parts.append(parse_batch(batch))
            settle(wait=True)
        except BoundingBoxError:
            # Found in this process: the batches still with helpers and the members read
            # before it in this batch come first in the archive.
            settle(wait=True)
            parse_batch(batch)
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
    with Helpers(workers) as helpers:
        return _read_train(tar_box_files(archive), synsets, helpers)


def _read_train(
    members: Iterable[tuple[str, str, bytes]], synsets: Collection[str], helpers: Helpers
) -> pd.DataFrame:
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

    return _read(members, "train", locate, known, helpers)


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
    with Helpers(workers) as helpers:
        return _read_validation(tar_box_files(archive), validation_synsets, helpers)


def _read_validation(
    members: Iterable[tuple[str, str, bytes]], validation_synsets: Sequence[str], helpers: Helpers
) -> pd.DataFrame:
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

    return _read(members, "validation", locate, known, helpers)


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
    return table_of_box_files(
        lambda split: tar_box_files(train_archive if split == "train" else validation_archive),
        synsets,
        validation_synsets,
        workers=workers,
    )


def table_of_box_files(
    files: Callable[[str], Iterable[tuple[str, str, bytes]]],
    synsets: Collection[str],
    validation_synsets: Sequence[str],
    *,
    workers: int | None = None,
) -> pd.DataFrame:
    """As :func:`build_table`, from each split's box files (``files(split)``, from any container:
    :meth:`ilsvrc_assets.sources.BoxFiles.files`), named as in the official archives."""
    with Helpers(workers) as helpers:
        train = _read_train(files("train"), synsets, helpers)
        validation = _read_validation(files("validation"), validation_synsets, helpers)
    # Each part is sorted by (image, box) and "train" < "validation", so concatenating keeps the order.
    return typed(pd.concat([train, validation], ignore_index=True))


def empty_table() -> pd.DataFrame:
    """The box table of a copy without boxes: no rows, the columns and types of any other."""
    return typed(pd.DataFrame({column: [] for column in COLUMNS}))


NO_BOXES = "no boxes in this source"


# --- The stage and its check ---------------------------------------------------------------------


def make_bounding_boxes(
    settings: Settings, source: ImageSource, log: Log = quiet, outputs: BoxOutputs | None = None
) -> Made:
    """Stage ``bounding_boxes``: the source's box files (both box archives, for the official
    release) into ``<data>/bounding_boxes.parquet`` and the reference CSVs (needs ``synsets`` and
    ``validation_labels``). A source without boxes gives an empty table (its check says so).

    ``outputs`` puts the three files elsewhere (the benchmark's box table at scale).
    """
    out = outputs or BoxOutputs.of(settings)
    box_files = source.box_files(log)
    if box_files is None:
        log(f"{NO_BOXES} ({source.describe()}): the box table is empty, the records carry no boxes")
        table = empty_table()
    else:
        table = table_of_box_files(
            box_files.files,
            set(synsets_module.read_synsets(settings.synsets_csv)["wnid"]),
            synsets_module.read_validation_labels(settings.validation_labels_csv),
            workers=settings.workers,
        )
    write_outputs(table, out.parquet, out.train_csv, out.validation_csv)
    shown = previews.for_bounding_boxes(
        table,
        archives.read_index(settings.image_index("train")),
        source.image_reader("train", log),
        archives.read_index(settings.image_index("validation")),
        source.image_reader("validation", log),
    )
    previews.write_all(shown, previews.folder_for(out.parquet.parent, "bounding_boxes"))
    kept = table[table["kept"]]
    dropped = table[~table["kept"]]
    return Made(
        out.parquet,
        {
            "reference_csv": out.train_csv,
            **({} if box_files is not None else {"box_source": NO_BOXES}),
            "boxes": len(table),
            "kept_train_boxes": int((kept["split"] == "train").sum()),
            "kept_validation_boxes": int((kept["split"] == "validation").sum()),
            "annotated_train_images": int(kept.loc[kept["split"] == "train", "image"].nunique()),
            "dropped": {str(k): int(v) for k, v in dropped["drop_reason"].value_counts().items()},
        },
        preview=table,
        previews=shown,
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
            settings.bounding_boxes_parquet,
            settings.bounding_boxes_csv,
            settings.validation_bounding_boxes_csv,
        )


def bounding_boxes_verdict(settings: Settings, has_boxes: bool = True) -> Verdict:
    """Check ``boxes_are_valid``: every kept box valid and on a known image of its synset, and each
    split has kept boxes at all (needs ``train_images``).

    For a source without boxes (``has_boxes`` False) an empty table is what is expected: the
    verdict is a visible warning saying so, not a pass (and not an error: nothing is wrong).
    """
    table = read_table(settings.bounding_boxes_parquet)
    if not has_boxes and table.empty:
        return Verdict(
            [
                (
                    f"{NO_BOXES}: the box table is empty and the records carry no boxes (set "
                    f"{ENV_BOXES_DIR} to a folder holding the official box archives to add them)"
                )
            ],
            "",
            {"kept_boxes": 0},
            severity="WARN",
        )
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
