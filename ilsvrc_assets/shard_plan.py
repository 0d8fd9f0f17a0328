"""Which image goes into which TFRecord shard, and which shards are already written.

The plan is a pure function of the image index, the synset table, the kept boxes and the shard
count: the whole split is sorted by file name, shuffled with a fixed seed and cut into
contiguous pieces (see :func:`ilsvrc_assets.shards.assign_to_shards`), so every run assigns every
image to the same shard. Each written shard leaves a small ledger entry (its plan's fingerprint
and what was written); a later run skips a shard whose file and fingerprint are unchanged, so an
interrupted build continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from ilsvrc_assets import fileio, release
from ilsvrc_assets.records import RecordSource
from ilsvrc_assets.shards import ShardJob, ShardStats, assign_to_shards

Box = tuple[float, float, float, float]


def plan_split(
    split: str,
    index: pd.DataFrame,
    synset_table: pd.DataFrame,
    boxes_by_image: Mapping[str, Sequence[Box]],
    archive: Path,
    out_dir: Path,
    num_shards: int,
    wanted: Iterable[str] | None = None,
    seed: int = release.SHUFFLE_SEED,
) -> dict[str, ShardJob]:
    """The shard jobs of a split (only those named in ``wanted``, default all), by shard name."""
    labels = dict(zip(synset_table["wnid"], synset_table["label"]))
    texts = dict(zip(synset_table["wnid"], synset_table["text"]))
    rows = {
        f: (s, int(o), int(n))
        for f, s, o, n in zip(index["filename"], index["synset"], index["offset"], index["size"])
    }
    assignment = assign_to_shards(list(rows), num_shards, seed=seed)
    names = release.shard_names(split, num_shards)
    wanted_set = set(names if wanted is None else wanted)
    if unknown := wanted_set - set(names):
        raise ValueError(
            f"not shards of this plan ({num_shards} {split} shards): {', '.join(sorted(unknown)[:5])}"
        )
    jobs = {}
    for name, filenames in zip(names, assignment):
        if name not in wanted_set:
            continue
        records = []
        for filename in filenames:
            synset, offset, size = rows[filename]
            records.append(
                RecordSource(
                    filename=filename,
                    synset=synset,
                    label=int(labels[synset]),
                    text=texts[synset],
                    offset=offset,
                    size=size,
                    boxes=tuple(tuple(b) for b in boxes_by_image.get(filename, ())),
                )
            )
        jobs[name] = ShardJob(name=name, path=out_dir / name, archive=archive, records=tuple(records))
    return jobs


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
    """What was written for each shard, one small JSON file per shard under ``folder``."""

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
        }
        fileio.atomic_write_text(self._entry_path(stats.name), json.dumps(entry, indent=1))

    def reusable(self, job: ShardJob, fingerprint: str) -> ShardStats | None:
        """The stats of an earlier write of this exact shard, if its file is still as written."""
        entry = self.get(job.name)
        if not entry or entry.get("fingerprint") != fingerprint:
            return None
        try:
            if job.path.stat().st_size != entry["bytes"]:
                return None
        except FileNotFoundError:
            return None
        return ShardStats(
            name=job.name,
            path=job.path,
            records=entry["records"],
            bytes=entry["bytes"],
            md5=entry["md5"],
            converted=tuple(entry.get("converted", ())),
        )
