"""The dataset manifest: every shard summarised in one JSON file, for each record format.

``<data>/tfrecords/manifest.json`` (the TFRecords, read back with TensorFlow; likewise
``<data>/webdataset/manifest.json`` for the WebDataset tars, beside the ``_info.json`` made from it)
lists, per split, every expected shard with its record count, size, MD5, label counts, what reading
it back found (records that do not parse with the model zoo's feature spec, images that do not decode
as JPEG) and, for the TFRecords, the MD5 its DALI index must have (that of the index of the records
read, ``index_md5``). The asset checks on the manifest judge those findings against the image
indexes, the index files and the release facts.

The summary of a shard is what the checks of its records found while it was written (the shard
ledger keeps it, ``shard_plan.ShardLedger.verified``) while the file is as written (its size and
modification time those recorded); no shard is read again for it. A shard written before the
writers checked their records, or changed since, is read back; so is a shard whose size and
modification time are not those of the previous manifest's entry.

:func:`audit` judges the shards as they are on disk now, whatever an earlier run wrote into
``manifest.json``: every shard is hashed and compared with the size and MD5 recorded when it was
written, and a shard whose MD5 is not the one ``manifest.json`` read is read back again, so the
record checks judge its current bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ilsvrc_assets import archives, fileio, formats, release, shard_plan, storage, versions
from ilsvrc_assets.formats import tfrecord
from ilsvrc_assets.progress import reporter
from ilsvrc_assets.settings import Settings
from ilsvrc_assets.shard_scan import ALL, SAMPLE
from ilsvrc_assets.stage import Log, Made, Verdict, quiet

if TYPE_CHECKING:
    from ilsvrc_assets.formats import RecordFormat
    from ilsvrc_assets.record_workers import RecordWorkers

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
    workers: RecordWorkers,
    previous: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    record_format: RecordFormat | None = None,
    verified: Callable[[str, Path], dict | None] | None = None,
    decode: str = ALL,
) -> dict:
    """Summarise every shard: what its writer's checks found (``verified(name, path)``: None when
    the file is not as written), else the unchanged entry of ``previous``, else read back with the
    caller's record ``workers``. The shards are in ``record_format`` (default: TFRecord)."""
    record_format = _format(record_format)
    old = _entries_by_name(previous)

    def reusable(name: str, stamp: tuple[int, int]) -> dict | None:
        if verified is not None and (found := verified(name, folder / record_format.file_name(name))):
            return {**found, "name": name, "missing": False, "checked": "while written"}
        entry = old.get(name)
        same = entry and "index_md5" in entry and (entry.get("bytes"), entry.get("mtime_ns")) == stamp
        return entry if same else None

    entries, _ = _read_back(folder, shard_names, workers, reusable, progress, record_format, decode)
    return _summary(shard_names, entries, expected_images, record_format)


def _format(record_format: RecordFormat | None) -> RecordFormat:
    return record_format or formats.by_name(formats.DEFAULT)


def _entries_by_name(manifest: dict | None) -> dict[str, dict]:
    return {
        s["name"]: s for split in (manifest or {}).get("splits", {}).values() for s in split.get("shards", [])
    }


def _read_back(
    folder: Path,
    shard_names: Mapping[str, Sequence[str]],
    workers: RecordWorkers,
    reusable: Callable[[str, tuple[int, int]], dict | None],
    progress: Callable[[int, int], None] | None,
    record_format: RecordFormat,
    decode: str,
) -> tuple[dict[str, dict], list[str]]:
    """An entry per shard: missing, reused (``reusable(name, (size, mtime_ns))``) or read back now,
    decoding the images the decode policy ``decode`` names.

    Returns the entries by shard name and the names of the shards read back.
    """
    from ilsvrc_assets.shard_scan import scan_shards

    entries: dict[str, dict] = {}
    to_scan: dict[str, Path] = {}  # file name -> shard name
    for names in shard_names.values():
        for name in names:
            path = folder / record_format.file_name(name)
            stamp = _stamp(path)
            if stamp is None:
                entries[name] = {"name": name, "missing": True}
            elif (entry := reusable(name, stamp)) is not None:
                entries[name] = entry
            else:
                to_scan[name] = path
    shard_of = {path.name: name for name, path in to_scan.items()}
    total = len(to_scan)
    scans = scan_shards(list(to_scan.values()), workers=workers, decode=decode, record_format=record_format)
    for done, scan in enumerate(scans, start=1):
        entry = asdict(scan)
        entry["name"] = shard_of[scan.name]  # the shard (partition) name; the file's is scan.name
        entry["labels"] = {str(k): v for k, v in sorted(scan.labels.items())}
        stamp = _stamp(folder / scan.name)
        entry["mtime_ns"] = stamp[1] if stamp else None
        entry["missing"] = False
        entry["checked"] = "read back"
        entries[entry["name"]] = entry
        if progress:
            progress(done, total)
    return entries, list(to_scan)


def _summary(
    shard_names: Mapping[str, Sequence[str]],
    entries: Mapping[str, dict],
    expected_images: Mapping[str, int],
    record_format: RecordFormat | None = None,
) -> dict:
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
    keys = _format(record_format).record_keys
    return {"format": FORMAT, "feature_keys": list(keys), "splits": splits}


# --- The audit: the shards as they are now, against what was recorded when they were written ----


@dataclass(frozen=True)
class Written:
    """What was recorded for a shard when it was written (or found unchanged) by a materialisation."""

    bytes: int
    md5: str


@dataclass
class Audit:
    """The shards as they are on disk now."""

    manifest: dict  # as :func:`build` makes it, for the shards' current bytes
    shard_problems: list[str]  # shards missing, never recorded, or not as written
    read_back: list[str] = field(default_factory=list)  # shards whose current bytes were read back
    hashed: int = 0  # shards hashed


def audit(
    folder: Path,
    shard_names: Mapping[str, Sequence[str]],
    expected_images: Mapping[str, int],
    written: Mapping[str, Written],
    workers: RecordWorkers,
    previous: dict | None = None,
    read_back: bool = True,
    progress: Callable[[int, int], None] | None = None,
    record_format: RecordFormat | None = None,
    decode: str = ALL,
) -> Audit:
    """Judge every shard on disk against ``written`` and summarise the shards as they are now.

    With ``read_back`` (the audit), every shard present is read back with the caller's record
    ``workers`` (hashed, every record parsed, the images the decode policy ``decode`` names decoded).
    Without (right after :func:`build`, in the same run), the entries of ``previous`` are taken for
    the shards whose size and modification time they recorded; any other shard present is hashed,
    and read back if its MD5 is not the one ``previous`` recorded. A shard is a problem when it is
    missing, when nothing was recorded for it, or when its size or MD5 differs from ``written``.
    The shards are in ``record_format`` (default: TFRecord).
    """
    record_format = _format(record_format)
    old = {} if read_back else _entries_by_name(previous)
    path_of = {
        name: folder / record_format.file_name(name) for names in shard_names.values() for name in names
    }
    present = [(name, path) for name, path in path_of.items() if path.is_file()]
    md5s: dict[str, str] = {}
    to_hash = []
    for name, path in present:
        entry = old.get(name)
        if entry and (entry.get("bytes"), entry.get("mtime_ns")) == _stamp(path):
            md5s[name] = entry["md5"]
        elif not read_back:  # read back, each shard is hashed as it is read
            to_hash.append((name, path))
    # As many threads as record workers (the cores the deployment gives): hashlib releases the GIL.
    with ThreadPoolExecutor(max_workers=workers.processes) as pool:
        for (name, _), digest in zip(to_hash, pool.map(lambda item: _md5_if_present(item[1]), to_hash)):
            if digest is not None:
                md5s[name] = digest

    def reusable(name: str, stamp: tuple[int, int]) -> dict | None:
        entry = old.get(name)
        if (
            entry
            and entry.get("md5") == md5s.get(name)
            and entry.get("bytes") == stamp[0]
            and "index_md5" in entry
        ):
            return entry
        return None

    entries, reread = _read_back(folder, shard_names, workers, reusable, progress, record_format, decode)
    for name in reread:
        if not entries[name].get("missing"):
            md5s[name] = entries[name]["md5"]

    problems = []
    for split, names in shard_names.items():
        for name in names:
            path = path_of[name]
            file = path.name
            redo = f"write it again: materialise {split}_{record_format.asset_suffix}, partition {name}"
            stamp = _stamp(path)
            record = written.get(name)
            if stamp is None:
                problems.append(f"{file}: missing from {folder}; {redo}")
            elif name not in md5s:
                problems.append(f"{file}: vanished from {folder} while being checked; {redo}")
            elif record is None:
                problems.append(f"{file}: no record of its size and MD5 when written; {redo}")
            elif stamp[0] != record.bytes:
                problems.append(
                    f"{file}: {stamp[0]:,} bytes on disk, {record.bytes:,} when written "
                    f"(truncated or replaced since); {redo}"
                )
            elif md5s[name] != record.md5:
                problems.append(
                    f"{file}: MD5 {md5s[name]} on disk, {record.md5} when written (altered since); {redo}"
                )
    return Audit(
        manifest=_summary(shard_names, entries, expected_images, record_format),
        shard_problems=_limited(problems, 10),
        read_back=reread,
        hashed=len(reread) if read_back else len(to_hash),
    )


def _md5_if_present(path: Path) -> str | None:
    try:
        return fileio.md5_file(path)
    except FileNotFoundError:
        return None


def write(manifest: dict, path: Path) -> None:
    storage.write_text(path, json.dumps(manifest, indent=1))


def read(path: Path) -> dict | None:
    try:
        manifest = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return manifest if manifest.get("format") == FORMAT else None


# --- What the checks judge -------------------------------------------------------------------


def _limited(problems: list[str], limit: int) -> list[str]:
    return problems[:limit] + ([f"... and {len(problems) - limit} more"] if len(problems) > limit else [])


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


def index_problems(manifest: dict, folder: Path, limit: int = 10) -> list[str]:
    """Shards read back whose DALI index (``formats.tfrecord.INDEX``, beside ``folder``) is missing or
    does not list exactly their records (offsets and lengths of the framing read back)."""
    problems = []
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            if shard.get("missing"):
                continue  # every_shard_present says so
            name = shard["name"]
            index = tfrecord.INDEX.path(folder / name)
            redo = f"write it again: materialise {split}_shards, partition {name}"
            try:
                data = index.read_bytes()
            except FileNotFoundError:
                problems.append(f"{name}: its index {index} is missing; {redo}")
                continue
            if hashlib.md5(data).hexdigest() != shard.get("index_md5"):
                lines = data.count(b"\n")
                problems.append(
                    f"{name}: its index {index} does not list the shard's records ({lines:,} "
                    f"lines for {shard.get('records', 0):,} records, or other offsets or lengths); {redo}"
                )
    return _limited(problems, limit)


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


# --- The stage and its checks --------------------------------------------------------------------

CHECKS = {
    "every_shard_present": "Every shard of both splits is on disk with the size and MD5 recorded when its "
    "partition was materialised (hashed again whenever the checks run on their own).",
    "record_totals": "Record totals equal the images in the archives (and, for the official release, "
    "1,281,167 training and 50,000 validation records).",
    "every_label_in_each_split": "Every label 1..1000 has records in each split.",
    **formats.by_name(formats.DEFAULT).check_descriptions,  # records_parse, images_decode
    "every_index_matches_its_shard": "Every shard's NVIDIA DALI index (<data>/tfrecords-index/<shard>.idx) "
    "is present and lists exactly the shard's records: the offset and length of each, as read back "
    "(what DALI's tfrecord2idx writes).",
}
"""The checks on the whole dataset (the TFRecords), by name, with what each proves."""


INDEX_CHECK = "every_index_matches_its_shard"
"""The check of the DALI index files, made only for the formats that publish them (TFRecord)."""


def checks_for(record_format: RecordFormat) -> dict[str, str]:
    """:data:`CHECKS` for the shards of ``record_format``: the same names, its own words where they differ,
    without :data:`INDEX_CHECK` unless the format publishes the DALI index (``tfrecord.INDEX``)."""
    checks = {**CHECKS, **record_format.check_descriptions}
    if tfrecord.INDEX not in record_format.companions:
        del checks[INDEX_CHECK]
    return checks


MANIFEST = "manifest.json"
"""In the shards' folder: ``<data>/tfrecords/manifest.json`` (``settings.manifest_json``)."""


def _shard_names(settings: Settings, record_format: RecordFormat) -> dict[str, list[str]]:
    return {split: settings.shard_names(split, record_format.name) for split in release.SPLITS}


def _expected_images(settings: Settings) -> dict[str, int]:
    return {split: len(archives.read_index(settings.image_index(split))) for split in release.SPLITS}


def make_manifest(
    settings: Settings,
    workers: RecordWorkers,
    log: Log = quiet,
    record_format: RecordFormat | None = None,
    decode: str = ALL,
) -> Made:
    """Stages ``dataset_manifest`` and ``webdataset_manifest``: every shard of ``record_format``
    (default: TFRecord) summarised into ``<data>/<its folder>/manifest.json``, and the files its
    readers want beside the shards (``RecordFormat.dataset_files``, e.g. the WebDataset's
    ``_info.json``).

    A shard's summary is what its writer's checks found (the shard ledger), while the file is as
    written; only a shard written before the writers checked, or changed since, is read back
    (decoding the images the decode policy ``decode`` names).
    """
    record_format = _format(record_format)
    ledger = shard_plan.ShardLedger(settings.state_dir / record_format.asset_suffix)
    # The shards not yet published (not publishable while this writes beside them).
    with versions.writing(settings, record_format.folder, log) as folder:
        path = folder / MANIFEST
        result = build(
            folder,
            _shard_names(settings, record_format),
            _expected_images(settings),
            workers=workers,
            previous=read(path),
            progress=reporter("manifest: read back", "shards", log),
            record_format=record_format,
            verified=ledger.verified,
            decode=decode,
        )
        write(result, path)
        for name, text in record_format.dataset_files(result).items():
            storage.write_text(path.parent / name, text)
    splits = result["splits"]
    return Made(
        path,
        {
            **{f"{split}_records": info["records"] for split, info in splits.items()},
            **{f"{split}_shards": info["num_shards"] for split, info in splits.items()},
            "bytes": sum(info["bytes"] for info in splits.values()),
        },
    )


def dataset_verdicts(
    settings: Settings,
    workers: RecordWorkers,
    written: Mapping[str, Written],
    official: Mapping[str, bool],
    selected: Collection[str] = tuple(CHECKS),
    read_back: bool = True,
    log: Log = quiet,
    record_format: RecordFormat | None = None,
) -> dict[str, Verdict]:
    """The checks in ``selected`` (names of :func:`checks_for` the format), judged on the shards of
    ``record_format`` (default: TFRecord) as they are on disk now: the unpublished version while one
    is being written, else the published one (:func:`versions.judged`).

    ``written``: each shard's size and MD5 when it was written; ``official``: per split, whether
    its archive is the official one; ``read_back``: False right after :func:`make_manifest` (in the
    build), whose summaries are then fresh: the shards' presence and sizes are judged against what
    their writers recorded, nothing is read. True (the audit): every shard is read back, hashed,
    every record parsed, and the fixed sample of images decoded (every image if the archives are not
    all the official ones, or ``settings.audit_decode_all``).
    """
    record_format = _format(record_format)
    names = _shard_names(settings, record_format)
    folder = versions.judged(settings, record_format.folder)
    decode = SAMPLE if all(official.get(split) for split in names) and not settings.audit_decode_all else ALL
    found = audit(
        folder,
        names,
        _expected_images(settings),
        written,
        workers=workers,
        previous=read(folder / MANIFEST),
        read_back=read_back,
        progress=reporter("audit: read back", "shards", log),
        record_format=record_format,
        decode=decode,
    )
    if found.read_back and not read_back:
        log(
            f"{len(found.read_back)} shards differ from what manifest.json read and were read back "
            f"again: {', '.join(found.read_back[:10])}"
        )
    current = found.manifest
    total = sum(map(len, names.values()))
    totals = {split: info["records"] for split, info in current["splits"].items()}
    verdicts = {
        "every_shard_present": lambda: Verdict(
            found.shard_problems,
            f"all {total} shards present, as written",
            {"shards": total, "hashed": found.hashed, "read_back": len(found.read_back)},
        ),
        "record_totals": lambda: Verdict(
            total_problems(current, official),
            ", ".join(f"{s}: {n:,} records" for s, n in totals.items()),
            dict(totals),
        ),
        "every_label_in_each_split": lambda: Verdict(
            label_problems(current), "labels 1..1000 present in both splits"
        ),
        "records_parse": lambda: Verdict(record_problems(current, "parse"), "every record parses"),
        "images_decode": lambda: Verdict(record_problems(current, "decode"), "every image decodes as JPEG"),
        "every_index_matches_its_shard": lambda: Verdict(
            index_problems(current, folder),
            f"all {total} DALI indexes list their shard's records",
            {"indexes": total},
        ),
    }
    return {name: verdicts[name]() for name in checks_for(record_format) if name in selected}
