"""The dataset manifest: every shard read back with TensorFlow, summarised in one JSON file.

``<data>/tfrecords/manifest.json`` lists, per split, every expected shard with its record count,
size, MD5, label counts and what reading it back found (records that do not parse with the model
zoo's feature spec, images that do not decode as JPEG). The asset checks on the manifest judge
those findings against the image indexes and the release facts.

Reading a shard back is the expensive part; a shard whose size and modification time are those
recorded in the previous manifest is not read again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from ilsvrc_assets import fileio, release

FORMAT = "ilsvrc_assets manifest v1"


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


def build(
    folder: Path,
    shard_names: Mapping[str, Sequence[str]],
    expected_images: Mapping[str, int],
    workers: int,
    previous: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Read back every shard (reusing unchanged entries of ``previous``) and summarise them."""
    from ilsvrc_assets.records import scan_shards

    old = {
        s["name"]: s for split in (previous or {}).get("splits", {}).values() for s in split.get("shards", [])
    }
    entries: dict[str, dict] = {}
    to_scan: list[Path] = []
    for names in shard_names.values():
        for name in names:
            path = folder / name
            stamp = _stamp(path)
            if stamp is None:
                entries[name] = {"name": name, "missing": True}
            elif name in old and (old[name].get("bytes"), old[name].get("mtime_ns")) == stamp:
                entries[name] = old[name]
            else:
                to_scan.append(path)
    total = len(to_scan)
    for done, scan in enumerate(scan_shards(to_scan, workers=workers), start=1):
        entry = asdict(scan)
        entry["labels"] = {str(k): v for k, v in sorted(scan.labels.items())}
        stamp = _stamp(folder / scan.name)
        entry["mtime_ns"] = stamp[1] if stamp else None
        entry["missing"] = False
        entries[scan.name] = entry
        if progress:
            progress(done, total)
    splits = {}
    for split, names in shard_names.items():
        shards = [entries[n] for n in names]
        labels: dict[str, int] = {}
        for s in shards:
            for label, count in s.get("labels", {}).items():
                labels[label] = labels.get(label, 0) + count
        splits[split] = {
            "num_shards": len(names),
            "records": sum(s.get("records", 0) for s in shards),
            "bytes": sum(s.get("bytes", 0) for s in shards),
            "expected_images": expected_images[split],
            "labels": dict(sorted(labels.items(), key=lambda kv: int(kv[0]))),
            "shards": shards,
        }
    return {"format": FORMAT, "feature_keys": list(release.FEATURE_KEYS), "splits": splits}


def write(manifest: dict, path: Path) -> None:
    fileio.atomic_write_text(path, json.dumps(manifest, indent=1))


def read(path: Path) -> dict | None:
    try:
        manifest = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return manifest if manifest.get("format") == FORMAT else None


# --- What the checks judge -------------------------------------------------------------------


def _limited(problems: list[str], limit: int) -> list[str]:
    return problems[:limit] + ([f"... and {len(problems) - limit} more"] if len(problems) > limit else [])


def missing_shards(
    manifest: dict, folder: Path, shard_names: Mapping[str, Sequence[str]], limit: int = 10
) -> list[str]:
    """Shards absent from the folder, or changed on disk since the manifest read them."""
    problems = []
    listed = {s["name"]: s for split in manifest["splits"].values() for s in split["shards"]}
    for names in shard_names.values():
        for name in names:
            stamp = _stamp(folder / name)
            entry = listed.get(name)
            if stamp is None:
                problems.append(f"{name}: missing from {folder}")
            elif entry is None or entry.get("missing"):
                problems.append(f"{name}: not in the manifest; materialise dataset_manifest again")
            elif entry.get("bytes") != stamp[0]:
                problems.append(
                    f"{name}: {stamp[0]} bytes on disk, {entry.get('bytes')} when the manifest read it"
                )
    return _limited(problems, limit)


def total_problems(manifest: dict, official: Mapping[str, bool]) -> list[str]:
    """Record totals that differ from the images in the archives (and the official counts)."""
    official_counts = {"train": release.NUM_TRAIN_IMAGES, "validation": release.NUM_VALIDATION_IMAGES}
    problems = []
    for split, info in manifest["splits"].items():
        if info["records"] != info["expected_images"]:
            problems.append(
                f"{split}: {info['records']:,} records, but the archive holds {info['expected_images']:,} images"
            )
        if official.get(split) and info["records"] != official_counts[split]:
            problems.append(
                f"{split}: {info['records']:,} records, the official release has {official_counts[split]:,}"
            )
    return problems


def label_problems(manifest: dict) -> list[str]:
    """Labels of 1..1000 that are absent from a split."""
    problems = []
    for split, info in manifest["splits"].items():
        present = {int(k) for k, v in info["labels"].items() if v}
        missing = sorted(set(range(1, release.NUM_SYNSETS + 1)) - present)
        extra = sorted(present - set(range(1, release.NUM_SYNSETS + 1)))
        if missing:
            problems.append(f"{split}: {len(missing)} labels have no record, e.g. {missing[:10]}")
        if extra:
            problems.append(f"{split}: labels outside 1..1000: {extra[:10]}")
    return problems


def record_problems(manifest: dict, kind: str, limit: int = 10) -> list[str]:
    """Records that failed to parse (kind "parse") or to decode as JPEG (kind "decode")."""
    key = f"{kind}_errors"
    problems = []
    for info in manifest["splits"].values():
        for shard in info["shards"]:
            if shard.get(key):
                detail = "; ".join(shard.get("problems", [])[:3])
                problems.append(f"{shard['name']}: {shard[key]} records failed to {kind} ({detail})")
    return _limited(problems, limit)
