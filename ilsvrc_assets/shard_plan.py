"""Which image goes into which shard, and which shards are already written.

The plan is a pure function of the image index, the synset table, the kept boxes and the shard
count: the whole split is sorted by file name, shuffled with a fixed seed and cut into
contiguous pieces (:func:`assign_to_shards`), so every run assigns every image to the same shard
whatever order the archive lists them in. Each entry of the plan is a :class:`ShardJob`, which a
record format (``ilsvrc_assets.formats``) writes into one shard file. Each written shard leaves a
small ledger entry (its plan's fingerprint and what was written); a later run skips a shard whose
file and fingerprint are unchanged, so an interrupted build continues where it stopped.

Nothing here imports TensorFlow or pandas at run time: the jobs travel to worker processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import random
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ilsvrc_assets import fileio, formats, release
from ilsvrc_assets.collector import gc_paused

if TYPE_CHECKING:
    import pandas as pd

    from ilsvrc_assets.shard_scan import ShardScan
    from ilsvrc_assets.sources import ImageReader

Box = tuple[float, float, float, float]  # xmin, ymin, xmax, ymax, normalised to [0, 1]
T = TypeVar("T")


@dataclass(frozen=True)
class RecordSource:
    """One image to write into a shard: where its bytes are and what the record says about it.

    Small and picklable, so a shard's worth travels cheaply to a worker process.
    """

    filename: str  # basename, e.g. "n01440764_10026.JPEG" or "ILSVRC2012_val_00000293.JPEG"
    synset: str  # WNID, e.g. "n01440764"
    label: int  # 1..1000, the model zoo's 1-based label
    text: str  # e.g. "tench, Tinca tinca"
    offset: int  # of the image's bytes inside the (uncompressed) archive file
    size: int
    boxes: tuple[Box, ...] = ()


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: its name, final path, what reads the images' bytes, and the records in order."""

    name: str
    path: Path
    reader: ImageReader  # reads the images' bytes (the official release: from the archive)
    records: tuple[RecordSource, ...]
    # Held while the shard is written, so two runs never write the same shard at once.
    lock: Path | None = None
    # Which images the writer decodes (``shard_scan.ALL``, ``SAMPLE`` or ``NONE``); whatever this
    # says, each record is parsed, each re-encoded image decoded and every other image compared
    # with the archive's bytes.
    decode: str = "all"


@dataclass(frozen=True)
class CompanionStats:
    """A file published with a shard (``formats.Companion``, e.g. its DALI index), as written."""

    kind: str  # e.g. "index"
    path: Path
    bytes: int
    md5: str


@dataclass(frozen=True)
class ShardStats:
    """What writing a shard produced."""

    name: str
    path: Path
    records: int
    bytes: int
    md5: str
    converted: tuple[str, ...]  # file names re-encoded to RGB JPEG (PNG, CMYK)
    companions: tuple[CompanionStats, ...] = ()  # in the order of the format's companions
    # What the checks of its records found while it was written (None: written before they were).
    verified: ShardScan | None = None


def filename_sort_key(filename: str) -> tuple[str, int, str]:
    """Sort key for image file names: the number after the last ``_`` compares numerically.

    ``n01440764_9.JPEG`` sorts before ``n01440764_10.JPEG`` (the training numbers are not
    zero-padded). Names without such a number sort by their text, before numbered ones of the
    same prefix.
    """
    stem = filename.rsplit(".", 1)[0] if "." in filename else filename
    prefix, sep, number = stem.rpartition("_")
    if sep and number.isdecimal():  # what int() reads (isdigit also takes "²", which it does not)
        return prefix, int(number), filename
    return stem, -1, filename


def _default_key(image: Any) -> tuple[str, int, str]:
    # Plain file names, or anything with a ``filename`` attribute (e.g. RecordSource).
    return filename_sort_key(image if isinstance(image, str) else image.filename)


def shuffled_order(
    images: Sequence[T],
    seed: int = release.SHUFFLE_SEED,
    key: Callable[[T], Hashable] | None = None,
) -> list[int]:
    """The positions of ``images`` in shard order: sorted by ``key`` (default
    :func:`filename_sort_key` of the file name, or of the ``filename`` attribute), then shuffled as
    a whole with ``random.Random(seed)``. Positions, not the images, are sorted and shuffled (the
    shuffle's swaps depend on the count only), so a whole split costs one list of ints.

    Two images with the same key would make the order depend on the input: ValueError.
    """
    sort_key = key or _default_key
    with gc_paused():
        keys = [sort_key(image) for image in images]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    for a, b in itertools.pairwise(order):
        if keys[a] == keys[b]:
            raise ValueError(
                f"two images have the same sort key {keys[a]!r}; the shard assignment would depend on input order"
            )
    random.Random(seed).shuffle(order)
    return order


# '<prefix>_<number>.<ext>', split as filename_sort_key splits it (ASCII digits, at most 18).
_USUAL_NAME = r"^(?P<prefix>.*)_(?P<number>[0-9]{1,18})\.[^.]*$"


def _sorted_positions(filenames: pd.Series) -> list[int] | None:
    """The positions of ``filenames`` in :func:`filename_sort_key` order, computed on whole columns
    (Arrow), when every name is the usual ``<prefix>_<number>.<ext>`` and none appears twice; None
    otherwise (the caller then sorts them one by one). The same order: text compares as Python
    compares it (Arrow sorts UTF-8 bytewise, which is code point order), numbers as numbers, the
    whole names last."""
    import pyarrow as pa
    import pyarrow.compute as pc

    # The system allocator hands what these columns took back when they are freed; Arrow's own pool
    # would keep it (about 400 MB at 1.28 million names) for the rest of the process.
    pool = pa.system_memory_pool()
    names = pa.array(filenames, memory_pool=pool)
    if isinstance(names, pa.ChunkedArray):  # pandas' Arrow-backed strings
        names = names.combine_chunks(memory_pool=pool)
    parts = pc.extract_regex(names, _USUAL_NAME, memory_pool=pool)
    if parts.null_count:
        return None
    columns = {
        "prefix": parts.field("prefix"),
        "number": pc.cast(parts.field("number"), pa.int64(), memory_pool=pool),
        "name": names,
    }
    keys = [(column, "ascending") for column in columns]
    order = pc.sort_indices(pa.table(columns), sort_keys=keys, memory_pool=pool)
    # A name twice would sit next to itself (the whole name is the last key).
    ordered = pc.take(names, order, memory_pool=pool)
    if len(ordered) > 1 and pc.any(pc.equal(ordered[1:], ordered[:-1], memory_pool=pool)).as_py():
        return None
    return order.to_numpy().tolist()


def shard_bounds(count: int, num_shards: int) -> list[int]:
    """Where each shard's piece of the shuffled order starts (and, last, where the last one ends):
    ``floor(i * count / num_shards)``, so sizes differ by at most one."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, not {num_shards}")
    return [i * count // num_shards for i in range(num_shards + 1)]


def assign_to_shards(
    images: Sequence[T],
    num_shards: int,
    seed: int = release.SHUFFLE_SEED,
    key: Callable[[T], Hashable] | None = None,
) -> list[list[T]]:
    """Split ``images`` into ``num_shards`` lists, deterministically and independently of input order.

    The images are sorted by ``key`` (default :func:`filename_sort_key` of the file name, or of
    the ``filename`` attribute), shuffled as a whole with ``random.Random(seed)``, and cut into
    contiguous pieces at ``floor(i * n / num_shards)``, so sizes differ by at most one (shards
    are empty when there are fewer images than shards). Two images with the same key would make
    the order depend on the input, so that raises ValueError.
    """
    bounds = shard_bounds(len(images), num_shards)
    ordered = [images[i] for i in shuffled_order(images, seed, key)]
    return [ordered[bounds[i] : bounds[i + 1]] for i in range(num_shards)]


class SplitPlan:
    """Which images go into which shard of a split, kept as positions into the index's columns;
    a shard's :class:`ShardJob` (its records) is made only when asked for (:meth:`job`), so a
    writer can hold one shard's records at a time, never the whole split's.

    Each shard's file is ``out_dir / record_format.file_name(name)`` (default: the default format's).
    """

    def __init__(
        self,
        split: str,
        index: pd.DataFrame,
        synset_table: pd.DataFrame,
        boxes_by_image: Mapping[str, Sequence[Box]] | pd.DataFrame,
        reader: ImageReader,
        out_dir: Path,
        num_shards: int,
        seed: int = release.SHUFFLE_SEED,
        record_format: formats.RecordFormat | None = None,
    ) -> None:
        import numpy as np
        import pandas as pd  # in the planning process only (the jobs travel to workers without it)

        self.record_format = record_format or formats.by_name(formats.DEFAULT)
        self.reader, self.out_dir = reader, out_dir
        self._label = {wnid: int(label) for wnid, label in zip(synset_table["wnid"], synset_table["label"])}
        self._text = dict(zip(synset_table["wnid"], synset_table["text"]))
        # The boxes: a mapping {image: boxes}, or the kept boxes as a table (``box_outputs.read_kept``),
        # kept as columns too (each image's boxes a range of rows, by its position in the index).
        if isinstance(boxes_by_image, pd.DataFrame):
            self._boxes, self._box_ranges = None, _box_ranges(boxes_by_image, index["filename"])
        else:
            self._boxes, self._box_ranges = boxes_by_image, None
        # Columns, not rows: the names as one list, the synsets as codes, the numbers as arrays.
        self._filenames = index["filename"].tolist()
        codes, synset_names = pd.factorize(index["synset"])
        self._synset_codes, self._synset_names = codes, list(synset_names)
        self._offsets = index["offset"].to_numpy(dtype="int64")
        self._sizes = index["size"].to_numpy(dtype="int64")
        self._bounds = shard_bounds(len(self._filenames), num_shards)
        self._order = _sorted_positions(index["filename"])
        if self._order is None:  # names outside the usual '<prefix>_<number>.<ext>': one by one
            self._order = shuffled_order(self._filenames, seed)
        else:
            random.Random(seed).shuffle(self._order)
        self._order = np.array(self._order, dtype=np.int64)  # 8 bytes an image, not a Python int
        self.split, self.num_shards = split, num_shards
        self.names = release.shard_names(split, num_shards)
        self._shard = {name: i for i, name in enumerate(self.names)}

    def check(self, names: Iterable[str]) -> None:
        """ValueError naming those of ``names`` that are not shards of this plan."""
        if unknown := set(names) - set(self._shard):
            raise ValueError(
                f"not shards of this plan ({self.num_shards} {self.split} shards): "
                f"{', '.join(sorted(unknown)[:5])}"
            )

    def _positions(self, name: str) -> list[int]:
        i = self._shard[name]
        return self._order[self._bounds[i] : self._bounds[i + 1]]

    def count(self, name: str) -> int:
        """How many images shard ``name`` holds."""
        i = self._shard[name]
        return self._bounds[i + 1] - self._bounds[i]

    def job(self, name: str) -> ShardJob:
        """Shard ``name``'s job: its file, its reader and its records in order."""
        filenames, codes, names = self._filenames, self._synset_codes, self._synset_names
        offsets, sizes = self._offsets, self._sizes
        label, text = self._label, self._text
        if self._box_ranges is not None:
            starts, ends, coords = self._box_ranges

            def boxes_of(at: int, filename: str) -> list | None:
                start, end = starts[at], ends[at]
                return coords[start:end].tolist() if end > start else None
        else:
            by_image = self._boxes

            def boxes_of(at: int, filename: str) -> list | None:
                return by_image.get(filename)

        records = []
        with gc_paused():  # a whole split's records may be made in a row
            for at in self._positions(name):
                filename, synset = filenames[at], names[codes[at]]
                boxes = boxes_of(at, filename)
                records.append(
                    RecordSource(
                        filename,
                        synset,
                        label[synset],
                        text[synset],
                        int(offsets[at]),
                        int(sizes[at]),
                        tuple(tuple(b) for b in boxes) if boxes else (),
                    )
                )
        path = self.out_dir / self.record_format.file_name(name)
        return ShardJob(name=name, path=path, reader=self.reader, records=tuple(records))


def _box_ranges(kept: pd.DataFrame, filenames: pd.Series) -> tuple[Any, Any, Any]:
    """The kept boxes as columns: (starts, ends, coords), where the boxes of the image at position
    ``i`` of the index are the rows ``coords[starts[i]:ends[i]]`` (xmin, ymin, xmax, ymax), in box
    order; boxes of images not in the index are left out. A few arrays, not a list per image."""
    import numpy as np
    import pandas as pd

    position = pd.Index(filenames).get_indexer(kept["image"])
    there = position >= 0
    position, box = position[there], kept["box"].to_numpy()[there]
    order = np.lexsort((box, position))
    position = position[order]
    coords = kept[["xmin", "ymin", "xmax", "ymax"]].to_numpy()[there][order]
    every = np.arange(len(filenames))
    return np.searchsorted(position, every, "left"), np.searchsorted(position, every, "right"), coords


def plan_split(*plan: Any, wanted: Iterable[str] | None = None, **options: Any) -> dict[str, ShardJob]:
    """The shard jobs of a split (only those named in ``wanted``, default all), by shard name, all
    made at once; ``plan`` and ``options`` are :class:`SplitPlan`'s (which makes them one at a time)."""
    split_plan = SplitPlan(*plan, **options)
    wanted = split_plan.names if wanted is None else list(wanted)
    split_plan.check(wanted)
    wanted_set = set(wanted)
    return {name: split_plan.job(name) for name in split_plan.names if name in wanted_set}


def fingerprint(job: ShardJob, archive_version: str) -> str:
    """A digest of everything that decides a shard's bytes: its records and the archive's version."""
    digest = hashlib.sha256()
    digest.update(f"{job.name}\n{archive_version}\n".encode())
    for r in job.records:
        digest.update(
            f"{r.filename}|{r.synset}|{r.label}|{r.text}|{r.offset}|{r.size}|{r.boxes!r}\n".encode()
        )
    return digest.hexdigest()


class ShardLedger:
    """What was written for each shard, one small JSON file per shard under ``folder``.

    Besides what the write produced, an entry keeps the file's modification time as recorded, so a
    shard rewritten since (even to the same size, as after a flipped byte) is not taken as unchanged:
    materialising its partition again, as the audit advises, writes it again.
    """

    def __init__(self, folder: Path):
        self.folder = folder

    def _entry_path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def get(self, name: str) -> dict | None:
        try:
            return json.loads(self._entry_path(name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def record(self, stats: ShardStats, fingerprint: str) -> None:
        entry = {
            "name": stats.name,
            "fingerprint": fingerprint,
            "records": stats.records,
            "bytes": stats.bytes,
            "md5": stats.md5,
            "converted": list(stats.converted),
            "mtime_ns": stats.path.stat().st_mtime_ns,
            "companions": [
                {
                    "kind": c.kind,
                    # Relative to the shard's version: the entry holds in the next version too.
                    "path": os.path.relpath(c.path, stats.path.parent.parent),
                    "bytes": c.bytes,
                    "md5": c.md5,
                    "mtime_ns": c.path.stat().st_mtime_ns,
                }
                for c in stats.companions
            ],
        }
        if stats.verified is not None:
            entry["verified"] = verified_entry(stats.verified)
        fileio.atomic_write_text(self._entry_path(stats.name), json.dumps(entry, indent=1))

    def reusable(self, job: ShardJob, fingerprint: str) -> ShardStats | None:
        """The stats of an earlier write of this exact shard, if its file is still as written: same
        fingerprint, and the file's size and modification time those recorded (entries written
        before times were recorded are judged by the size alone).

        Its ``companions`` are those recorded whose files are also still as written; the caller makes
        the others again from the shard (``formats.RecordFormat.companion_from_shard``)."""
        entry = self.get(job.name)
        if not entry or entry.get("fingerprint") != fingerprint:
            return None
        try:
            st = job.path.stat()
        except FileNotFoundError:
            return None
        if st.st_size != entry["bytes"] or entry.get("mtime_ns", st.st_mtime_ns) != st.st_mtime_ns:
            return None
        return ShardStats(
            name=job.name,
            path=job.path,
            records=entry["records"],
            bytes=entry["bytes"],
            md5=entry["md5"],
            converted=tuple(entry.get("converted", ())),
            companions=tuple(
                CompanionStats(c["kind"], path, c["bytes"], c["md5"])
                for c in entry.get("companions", ())
                # (an absolute path, in an entry written before versions, stays as it is)
                if _stamp(path := job.path.parent.parent / c["path"]) == (c["bytes"], c["mtime_ns"])
            ),
            verified=scan_of(entry["verified"]) if "verified" in entry else None,
        )

    def verified(self, name: str, path: Path) -> dict | None:
        """What the checks found when the shard ``name`` was written (:func:`verified_entry`), if the
        file at ``path`` is still as written (its size and modification time those recorded)."""
        entry = self.get(name)
        if not entry or "verified" not in entry or entry.get("mtime_ns") is None:
            return None
        if _stamp(path) != (entry["bytes"], entry["mtime_ns"]):
            return None
        return {**entry["verified"], "mtime_ns": entry["mtime_ns"]}


def verified_entry(scan: ShardScan) -> dict:
    """A :class:`~ilsvrc_assets.shard_scan.ShardScan` as JSON data (labels as strings, in label order)."""
    entry = dataclasses.asdict(scan)
    entry["labels"] = {str(k): v for k, v in sorted(scan.labels.items())}
    return entry


def scan_of(entry: dict) -> ShardScan:
    """The :class:`~ilsvrc_assets.shard_scan.ShardScan` of a :func:`verified_entry`."""
    from ilsvrc_assets.shard_scan import ShardScan  # which imports this module

    fields = {f.name for f in dataclasses.fields(ShardScan)}
    scan = ShardScan(**{k: v for k, v in entry.items() if k in fields})
    scan.labels = {int(k): v for k, v in entry.get("labels", {}).items()}
    return scan


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns
