"""How fast is each stage, next to simply copying the archives? ``python -m ilsvrc_assets.benchmark``

    python -m ilsvrc_assets.benchmark                       realistic training images (~90 KB), 4 per synset
    python -m ilsvrc_assets.benchmark --tiny --train-per-synset 1 --train-shards 4 --validation-shards 2 \
        --boxes-at-scale 3000 --second-scale 2 --no-main-command   (what CI runs: a smoke test)
    python -m ilsvrc_assets.benchmark --full-count --out /tmp/bench-full
        the release's real counts with tiny images (``sample.full_count_spec``: 1,281,167 training
        images, about 2 GB; written once, reused from --out), then half of each synset's images

Writes a stand-in release (``sample.write_release``) into ``<out>/release``, then runs, each in a
fresh process of its own:

- ``copy archives``: a plain copy of the five archives' bytes (the baseline: what the page cache
  and the disk allow), and ``copy archives + fsync``: the same, flushed to the disk;
- each stage alone through the plain library functions (outputs under ``<out>/library``),
  including ``tar x`` of the validation archive (the tree's baseline), the shard stage again
  with one worker (how it scales with cores) and what the writers do for the DALI index files
  (each shard's index from its record lengths, published beside it);
- ``write webdataset``: the WebDataset tars of both splits through the same stage function, with
  the TFRecords' shard counts (the same work in the other format: its cost next to ``write shards``);
- ``bounding boxes at scale``: the box table from a training box archive with as many XML files
  as the release's (544,546; ``sample.write_train_boxes_at_scale``, kept in ``<out>/boxes-at-scale``);
- ``dagster build``: the whole graph, ``ilsvrc-assets build`` with ``ILSVRC_SOURCE=local`` (outputs
  and Dagster history under ``<out>/dagster``);
- ``main command, sample``: ``ilsvrc-assets build`` as a new user runs it, on the default sample,
  generation included, with the default settings;
- ``TFDS imagenet2012 builder``: the peer, TensorFlow Datasets' builder on the same two image
  archives (its own TFRecords only), when ``tensorflow_datasets`` is installed (the ``bench``
  extra); like the Dagster rows, timed as a whole command;

and prints, per stage: seconds, images/s, MB/s of the input it had to read, the peak RSS of the
stage's largest process (the stage's process or one of its workers; from ``wait4``) and the ratio
of its time to the copy's; then the ratios the targets are stated in. Then it runs the stages
again at a second scale (twice the training images; with ``--full-count``, half of them) and prints
each stage's peak RSS at both. ``--full-count`` leaves out the rows that make no sense there (the
box archive at scale, which that release has already; the one-worker shard row; the main command
on the default sample) and prints the targets of the real counts: the whole graph against TFDS,
every process under 1 GiB, the training index under 8 s.
A library stage's seconds are measured inside its process around the stage function (no
interpreter start or imports); the Dagster rows are whole commands. The archives were just
written, so they are usually in the page cache: the numbers show CPU cost more than disk speed.
Exits 1 if a stage fails (its log is under ``<out>/logs``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ilsvrc_assets import fileio, release, sample, versions
from ilsvrc_assets import settings as settings_module
from ilsvrc_assets.settings import Settings
from ilsvrc_assets.sources import LocalSource

if TYPE_CHECKING:
    from ilsvrc_assets.formats import RecordFormat

PHOTO_SIZE = (375, 500)  # min/max side of the realistic training images (the release's are ~500 x 375)

# --- The stages: plain library calls, each run alone in a child process -------------------------


def run_copy(settings: Settings, release_dir: Path, fsync: bool = False) -> None:
    """A plain copy of the five archives; with ``fsync``, each flushed to the disk."""
    copy_dir = settings.data_dir / ("copy-fsync" if fsync else "copy")
    copy_dir.mkdir(parents=True, exist_ok=True)
    for archive in release.ARCHIVES:
        with open(release_dir / archive.name, "rb") as source, open(copy_dir / archive.name, "wb") as target:
            shutil.copyfileobj(source, target, 8 << 20)
            if fsync:
                target.flush()
                os.fsync(target.fileno())


def run_copy_fsync(settings: Settings, release_dir: Path) -> None:
    """The copy again, flushed to the disk: what the disk itself sustains."""
    run_copy(settings, release_dir, fsync=True)


def run_devkit(settings: Settings, release_dir: Path) -> None:
    from ilsvrc_assets import synsets

    synsets.make_synsets(settings, LocalSource(release_dir))
    synsets.make_validation_labels(settings, LocalSource(release_dir))


def run_train_index(settings: Settings, release_dir: Path) -> None:
    from ilsvrc_assets import image_index

    image_index.make_train_images(settings, LocalSource(release_dir))


def run_validation_index(settings: Settings, release_dir: Path) -> None:
    from ilsvrc_assets import image_index

    image_index.make_validation_images(settings, LocalSource(release_dir))


def run_validation_tree(settings: Settings, release_dir: Path) -> None:
    from ilsvrc_assets import validation_tree

    validation_tree.make_validation_tree(settings, LocalSource(release_dir))


def run_bounding_boxes(settings: Settings, release_dir: Path) -> None:
    from ilsvrc_assets import bounding_boxes

    bounding_boxes.make_bounding_boxes(settings, LocalSource(release_dir))


def boxes_at_scale_archive(release_dir: Path) -> Path:
    return release_dir.parent / "boxes-at-scale" / release.BBOX_TRAIN.name


class BoxesAtScale(LocalSource):
    """The stand-in release with the training box archive at the release's scale in its place."""

    def box_archives(self, log: Callable[[str], None]) -> tuple[Path, Path]:
        return boxes_at_scale_archive(self.root), super().box_archives(log)[1]


def run_bounding_boxes_at_scale(settings: Settings, release_dir: Path) -> None:
    """The bounding-box table again, from a training box archive at the release's scale."""
    from ilsvrc_assets import bounding_boxes

    out = settings.data_dir / "boxes-at-scale"
    bounding_boxes.make_bounding_boxes(
        settings,
        BoxesAtScale(release_dir),
        outputs=bounding_boxes.BoxOutputs(
            out / "bounding_boxes.parquet", out / "train.csv", out / "validation.csv"
        ),
    )


def run_tar_x(settings: Settings, release_dir: Path) -> None:
    """The baseline of the validation tree: GNU tar extracting the validation archive, flat."""
    target = settings.data_dir / "tar-x"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    subprocess.run(["tar", "xf", str(release_dir / release.IMG_VAL.name), "-C", str(target)], check=True)


def run_shards_one_worker(settings: Settings, release_dir: Path) -> float:
    """The shard stage again with one worker, into a folder of its own: how it scales with cores.

    The stage's inputs (synsets, indexes, box table) are those of the stages before, linked in.
    """
    from dataclasses import replace

    alone = replace(settings, data_dir=settings.data_dir / "one-worker", workers=1)
    for path in (
        settings.synsets_csv,
        settings.bounding_boxes_parquet,
        *map(settings.image_index, release.SPLITS),
    ):
        link = alone.data_dir / path.relative_to(settings.data_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(path)
    return run_shards(alone, release_dir)


def run_webdataset(settings: Settings, release_dir: Path) -> float:
    """Both splits' WebDataset tars, as :func:`run_shards` writes the TFRecords (with the TFRecords'
    shard counts, so that the two rows time the same images into as many files)."""
    from dataclasses import replace

    from ilsvrc_assets import formats

    same_counts = replace(settings, webdataset_shards=dict(settings.num_shards))
    return run_shards(same_counts, release_dir, formats.by_name("webdataset"))


def run_shards(settings: Settings, release_dir: Path, record_format: RecordFormat | None = None) -> float:
    """Both splits' shards (in ``record_format``, default TFRecord) through the stage function, with
    the workers started first; returns the seconds of the stage (planning included), not of starting
    the workers (each loads TensorFlow, about 2 s; the Dagster rows include it)."""
    from ilsvrc_assets import shards
    from ilsvrc_assets.record_workers import RecordWorkers

    started = time.perf_counter()
    # Left before returning: the workers are reaped, so their peak RSS counts among this process's children.
    with RecordWorkers(settings.workers) as workers:
        workers.ready()
        ready = time.perf_counter()
        for split in release.SPLITS:
            shards.write_split_shards(
                settings, split, LocalSource(release_dir), workers, record_format=record_format
            )
        written = time.perf_counter()
    print(
        f"{settings.workers} workers started in {ready - started:.2f} s, shards written in {written - ready:.2f} s"
    )
    return written - ready


def run_index_files(settings: Settings, release_dir: Path) -> float:
    """What the DALI index files add to the shard stage: for every shard, what its writer does for
    the index once the records are written (the index text from the record lengths it kept, and the
    small file published beside the shard); returns the seconds of it, in one process.

    The lengths are read from the shards' framing first, untimed: a writer has them already (one
    list append per record, the only cost left out). A reused shard whose index is missing pays one
    read of its framing headers more (``RecordFormat.companion_from_shard``).
    """
    from ilsvrc_assets.formats.tfrecord import INDEX, index_text, read_payload_lengths
    from ilsvrc_assets.shards import publish_companion

    written = versions.judged(settings, "tfrecords")  # the version the shard row wrote
    paths = [written / n for split in release.SPLITS for n in settings.shard_names(split)]
    lengths = [read_payload_lengths(path) for path in paths]
    started = time.perf_counter()
    for path, payloads in zip(paths, lengths, strict=True):
        publish_companion(INDEX, path, index_text(payloads))
    return time.perf_counter() - started


def run_manifest(settings: Settings, release_dir: Path) -> float:
    """The manifest, made from what the shards' writers found (no shard read back); like the shard
    rows, timed with the workers started."""
    from ilsvrc_assets import manifest
    from ilsvrc_assets.record_workers import RecordWorkers

    with RecordWorkers(settings.workers) as workers:  # reaped on leaving, as in run_shards
        workers.ready()
        started = time.perf_counter()
        manifest.make_manifest(settings, workers)
        return time.perf_counter() - started


def run_audit(settings: Settings, release_dir: Path) -> float:
    """The audit's read-back: every shard read back, hashed, every record parsed (the stand-in's
    archives are not the official ones, so every image decoded), judged against the ledger."""
    from ilsvrc_assets import manifest, shard_plan
    from ilsvrc_assets.record_workers import RecordWorkers

    ledger = shard_plan.ShardLedger(settings.state_dir / "shards")
    written = {
        name: manifest.Written(entry["bytes"], entry["md5"])
        for split in release.SPLITS
        for name in settings.shard_names(split)
        if (entry := ledger.get(name)) is not None
    }
    with RecordWorkers(settings.workers) as workers:
        workers.ready()
        started = time.perf_counter()
        verdicts = manifest.dataset_verdicts(settings, workers, written, official={}, read_back=True)
        seconds = time.perf_counter() - started
    if failed := [name for name, verdict in verdicts.items() if not verdict.passed]:
        raise RuntimeError(f"the audit failed {failed}: {verdicts[failed[0]].problems[:3]}")
    return seconds


def run_previews(settings: Settings, release_dir: Path) -> float:
    """Every asset's previews (issue 15) again from the library stages' outputs: what the pictures
    add to a build (the stage rows above include them too); returns the seconds of drawing them."""
    from ilsvrc_assets import archives, bounding_boxes, previews, shard_previews, synsets

    source = LocalSource(release_dir)
    synset_table = synsets.read_synsets(settings.synsets_csv)
    index = {split: archives.read_index(settings.image_index(split)) for split in release.SPLITS}
    reader = {split: source.image_reader(split, print) for split in release.SPLITS}
    table = bounding_boxes.read_table(settings.bounding_boxes_parquet)
    started = time.perf_counter()
    for split in release.SPLITS:
        previews.for_image_index(index[split], split, synset_table)
        names = settings.shard_names(split)
        first = versions.judged(settings, "tfrecords") / names[0]
        counts = {name: 0 for name in names}  # the plot's input; its bars' heights do not change its cost
        converted = sorted(release.png_train_files() | release.cmyk_train_files()) if split == "train" else []
        filenames = index[split]["filename"]
        in_index = set(filenames[filenames.isin(converted)])  # one pass, not a set of the index per name
        present = [name for name in converted if name in in_index]
        shard_previews.for_shards(split, counts, first, present, index[split], reader[split])
    previews.for_bounding_boxes(
        table, index["train"], reader["train"], index["validation"], reader["validation"]
    )
    previews.for_validation_tree(versions.judged(settings, "validation"), synset_table)
    return time.perf_counter() - started


def run_publish(settings: Settings, release_dir: Path) -> float:
    """What publishing adds (issue 14): the validation tree and the TFRecords made what readers see,
    each with its listing (the shards' MD5s from the manifest, every other file hashed: on a first
    publication, the whole validation tree); returns the seconds of both."""
    started = time.perf_counter()
    for output in ("validation_tree", "tfrecords"):
        versions.make_published(settings, output)
    return time.perf_counter() - started


def tfds_installed() -> bool:
    """Whether TensorFlow Datasets can be imported here (the ``bench`` extra): the TFDS row's condition."""
    import importlib.util

    return importlib.util.find_spec("tensorflow_datasets") is not None


def run_tfds(settings: Settings, release_dir: Path) -> None:
    """The peer: TensorFlow Datasets' ``imagenet2012`` builder on the same two image archives.

    It reads ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar`` from its manual folder
    (symbolic links here; a missing test archive only drops the test split, with a warning), takes
    the validation labels from a list it ships and writes its own TFRecords: no tree, no boxes, no
    checks. Offline: TFDS 4.9 fetches nothing from its bucket unless asked, and manual files have no
    checksums to look up. Its data and download folders are new for each run, so it never reuses
    an earlier preparation.
    """
    import tensorflow_datasets as tfds

    root = settings.data_dir / "tfds"
    shutil.rmtree(root, ignore_errors=True)
    manual = root / "manual"
    manual.mkdir(parents=True)
    for archive in (release.IMG_TRAIN, release.IMG_VAL):
        (manual / archive.name).symlink_to(release_dir / archive.name)
    builder = tfds.builder("imagenet2012", data_dir=str(root / "data"))
    builder.download_and_prepare(
        download_dir=str(root / "downloads"),
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)),
    )
    splits = builder.info.splits
    print(f"TFDS wrote {splits['train'].num_examples:,} + {splits['validation'].num_examples:,} examples")


# --- What each stage reads, for images/s and MB/s -------------------------------------------------


@dataclass(frozen=True)
class Work:
    images: int
    bytes: int


def archive_bytes(release_dir: Path, *archives: release.Archive) -> int:
    return sum((release_dir / a.name).stat().st_size for a in archives)


def counts(release_dir: Path) -> dict[str, int]:
    return sample.describe(release_dir)["counts"]


def all_archives(release_dir: Path, data_dir: Path) -> Work:
    c = counts(release_dir)
    return Work(c["train_images"] + c["validation_images"], archive_bytes(release_dir, *release.ARCHIVES))


def shard_input(release_dir: Path, data_dir: Path) -> Work:
    c = counts(release_dir)
    return Work(
        c["train_images"] + c["validation_images"],
        archive_bytes(release_dir, release.IMG_TRAIN, release.IMG_VAL),
    )


def shard_files(release_dir: Path, data_dir: Path) -> Work:
    c = counts(release_dir)
    library = dataclasses.replace(settings_module.load({}), data_dir=data_dir / "library")
    tfrecords = versions.judged(library, "tfrecords")  # published, or still the version written
    size = sum(p.stat().st_size for p in tfrecords.iterdir() if p.name.startswith(release.SPLITS))
    return Work(c["train_images"] + c["validation_images"], size)


def boxes_at_scale_input(release_dir: Path, data_dir: Path) -> Work:
    archive = boxes_at_scale_archive(release_dir)
    files = json.loads((archive.parent / "FILES.json").read_text())["files"]
    return Work(
        files + counts(release_dir)["validation_images"],
        archive.stat().st_size + archive_bytes(release_dir, release.BBOX_VAL),
    )


def sample_archives(release_dir: Path, data_dir: Path) -> Work:
    """What the main command read: the default sample it generated."""
    sample_dir = data_dir / "main-command" / "data" / "sample"
    c = counts(sample_dir)
    return Work(c["train_images"] + c["validation_images"], archive_bytes(sample_dir, *release.ARCHIVES))


@dataclass(frozen=True)
class Stage:
    name: str
    # None: a command of its own (Dagster). Returns None, or the seconds of its work proper.
    run: Callable[[Settings, Path], float | None] | None
    reads: Callable[[Path, Path], Work]  # (release dir, benchmark dir) -> what the stage had to read
    # Timed as a whole command (interpreter start and imports included), as the Dagster rows are.
    whole_command: bool = False


BOXES_AT_SCALE = "bounding boxes at scale"
DAGSTER_BUILD = "dagster build (whole graph)"
PREVIEWS = "previews (pictures)"
INDEX_FILES = "DALI index files"
PUBLISH = "publish (tree, shards)"
WRITE_SHARDS_ONE_WORKER = "write shards (1 worker)"
WRITE_WEBDATASET = "write webdataset"
MAIN_COMMAND = "main command, sample"
TFDS = "TFDS imagenet2012 builder"
OPTIONAL = (BOXES_AT_SCALE, MAIN_COMMAND, TFDS)  # run when asked for (the realistic run asks), at one scale
PEERS = ("copy archives", "copy archives + fsync", "tar x (validation archive)", TFDS)  # not ours

STAGES = (
    Stage("copy archives", run_copy, all_archives),
    Stage("copy archives + fsync", run_copy_fsync, all_archives),
    Stage("devkit (synsets, labels)", run_devkit, lambda r, d: Work(0, archive_bytes(r, release.DEVKIT))),
    Stage(
        "train index",
        run_train_index,
        lambda r, d: Work(counts(r)["train_images"], archive_bytes(r, release.IMG_TRAIN)),
    ),
    Stage(
        "validation index",
        run_validation_index,
        lambda r, d: Work(counts(r)["validation_images"], archive_bytes(r, release.IMG_VAL)),
    ),
    Stage(
        "tar x (validation archive)",
        run_tar_x,
        lambda r, d: Work(counts(r)["validation_images"], archive_bytes(r, release.IMG_VAL)),
    ),
    Stage(
        "validation tree",
        run_validation_tree,
        lambda r, d: Work(counts(r)["validation_images"], archive_bytes(r, release.IMG_VAL)),
    ),
    Stage(  # images: those with a box file (every validation image has one)
        "bounding boxes",
        run_bounding_boxes,
        lambda r, d: Work(
            counts(r)["train_bbox_files"] + counts(r)["validation_images"],
            archive_bytes(r, release.BBOX_TRAIN, release.BBOX_VAL),
        ),
    ),
    Stage(BOXES_AT_SCALE, run_bounding_boxes_at_scale, boxes_at_scale_input),
    Stage("write shards", run_shards, shard_input),
    Stage(WRITE_SHARDS_ONE_WORKER, run_shards_one_worker, shard_input),
    Stage(INDEX_FILES, run_index_files, lambda r, d: Work(shard_input(r, d).images, 0)),
    Stage(WRITE_WEBDATASET, run_webdataset, shard_input),
    Stage("manifest (no read-back)", run_manifest, shard_files),
    Stage("audit read-back", run_audit, shard_files),
    Stage(PREVIEWS, run_previews, lambda r, d: Work(0, 0)),
    Stage(PUBLISH, run_publish, lambda r, d: Work(counts(r)["validation_images"], 0)),
    Stage(DAGSTER_BUILD, None, all_archives),
    Stage(MAIN_COMMAND, None, sample_archives),
    Stage(TFDS, run_tfds, shard_input, whole_command=True),  # last: a peer's failure stops nothing of ours
)
BY_NAME = {stage.name: stage for stage in STAGES}


# --- Running a stage in a child process -----------------------------------------------------------


def child_main(stage_name: str, release_dir: Path, result_file: Path) -> int:
    """In the child: run one library stage against the settings in the environment.

    Writes its seconds (the stage function's, or the part of it the function says is its work)
    and its peak RSS: the larger of this process's own (``VmHWM``, counted from its ``exec``, so
    not the benchmark process it was started from) and its largest worker's.
    """
    settings = settings_module.load()
    started = time.perf_counter()
    timed = BY_NAME[stage_name].run(settings, release_dir)
    seconds = time.perf_counter() - started if timed is None else timed
    # The stages' record workers were stopped and reaped as they returned: their peak RSS counts
    # among this process's children.
    own = _vm_hwm_kb()
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * (
        1 if sys.platform == "darwin" else 1024
    )
    own_bytes = own * 1024 if own is not None else 0
    peak = max(own_bytes, workers)
    # Both, for the log: which of the stage's processes was the largest.
    result_file.write_text(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": peak / 1e6,
                "stage_process_peak_rss_mb": own_bytes / 1e6,
                "largest_child_peak_rss_mb": workers / 1e6,
            }
        )
    )
    return 0


def _vm_hwm_kb() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


@dataclass
class Result:
    stage: Stage
    ok: bool
    seconds: float
    peak_rss_mb: float
    work: Work | None


def run_child(command: list[str], env: dict[str, str], log: Path) -> tuple[int, float, float]:
    """Run ``command``; return (exit code, wall seconds, peak RSS in MB of its largest process).

    ``wait4`` gives the rusage of this child alone, including the workers it waited for: Linux
    reports ru_maxrss in KB (macOS in bytes).
    """
    started = time.perf_counter()
    with open(log, "wb") as out:
        child = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    scale = 1 if sys.platform == "darwin" else 1024
    return child.returncode, seconds, usage.ru_maxrss * scale / 1e6


def run_stage(stage: Stage, out: Path, release_dir: Path, env: dict[str, str]) -> Result:
    slug = "".join(c if c.isalnum() else "_" for c in stage.name).strip("_")
    log = out / "logs" / f"{slug}.log"
    if stage.name == DAGSTER_BUILD:  # the whole graph through Dagster
        env = dict(
            env,
            ILSVRC_SOURCE="local",
            ILSVRC_LOCAL_DIR=str(release_dir),
            ILSVRC_DATA_DIR=str(out / "dagster" / "data"),
            DAGSTER_HOME=str(out / "dagster" / "home"),
        )
        command = [sys.executable, "-m", "ilsvrc_assets.cli", "build"]
        code, seconds, rss = run_child(command, env, log)
    elif stage.name == MAIN_COMMAND:  # the README's first command after install: the default sample
        main = out / "main-command"
        shutil.rmtree(main, ignore_errors=True)
        env = {k: v for k, v in env.items() if not k.startswith(("ILSVRC_", "DAGSTER_"))}
        env = dict(env, ILSVRC_DATA_DIR=str(main / "data"), DAGSTER_HOME=str(main / "home"))
        command = [sys.executable, "-m", "ilsvrc_assets.cli", "build"]
        code, seconds, rss = run_child(command, env, log)
    else:
        result_file = log.with_suffix(".json")
        command = [sys.executable, "-m", "ilsvrc_assets.benchmark", "--stage", stage.name]
        command += ["--release", str(release_dir), "--result", str(result_file)]
        code, wall, rss = run_child(command, dict(env, ILSVRC_DATA_DIR=str(out / "library")), log)
        measured = json.loads(result_file.read_text()) if code == 0 else {}
        seconds = wall if stage.whole_command else measured.get("seconds", float("nan"))
        rss = measured.get("peak_rss_mb", rss)
    work = stage.reads(release_dir, out) if code == 0 else None
    if code != 0:
        print(f"benchmark: {stage.name} FAILED (exit {code}); see {log}", file=sys.stderr)
        print("".join(log.read_text(errors="replace").splitlines(keepends=True)[-20:]), file=sys.stderr)
    return Result(stage, code == 0, seconds, rss, work)


# --- The table ------------------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    copy = next((r.seconds for r in results if r.stage.run is run_copy and r.ok), None)
    header = f"{'stage':<28} {'seconds':>9} {'images/s':>10} {'MB/s':>9} {'peak RSS MB':>12} {'x copy':>8}"
    lines = [header, "-" * len(header)]
    for r in results:
        if not r.ok:
            lines.append(f"{r.stage.name:<28} {'FAILED':>9}")
            continue
        rate = f"{r.work.images / r.seconds:,.0f}" if r.work.images else "-"
        mb_s = r.work.bytes / 1e6 / r.seconds
        ratio = f"{r.seconds / copy:.1f}" if copy else "-"
        lines.append(
            f"{r.stage.name:<28} {r.seconds:>9.2f} {rate:>10} {mb_s:>9,.1f} {r.peak_rss_mb:>12,.0f} {ratio:>8}"
        )
    return "\n".join(lines)


def comparisons(results: list[Result], workers: int) -> str:
    """The ratios the performance targets are stated in (README, "Performance")."""
    seconds = {r.stage.name: r.seconds for r in results if r.ok}

    def ratio(a: str, b: str, what: str) -> str:
        if a in seconds and b in seconds and seconds[b] > 0:
            return f"  {what}: {seconds[a] / seconds[b]:.2f}x"
        return f"  {what}: -"

    return "\n".join(
        [
            "",
            "ratios:",
            ratio("write shards", "copy archives", "write shards / copy archives"),
            ratio("write shards", "copy archives + fsync", "write shards / copy archives + fsync"),
            ratio("validation tree", "tar x (validation archive)", "validation tree / tar x"),
            ratio(
                "write shards (1 worker)",
                "write shards",
                f"shard throughput, {workers} workers / 1 worker",
            ),
            ratio(WRITE_WEBDATASET, "write shards", "write webdataset / write shards (TFRecord)"),
            ratio(DAGSTER_BUILD, "copy archives", "whole graph / copy archives"),
            ratio(PREVIEWS, DAGSTER_BUILD, "previews / whole graph"),
            ratio(DAGSTER_BUILD, TFDS, "whole graph / TFDS"),
            index_share(seconds),
        ]
    )


def index_share(seconds: dict[str, float]) -> str:
    """What the DALI index files add to the shard stage (see :func:`run_index_files`): their work,
    timed in one process, against the shard stage in one process (``write shards (1 worker)``), and
    against the stage with every worker (where that work is shared by the workers: at most)."""
    if (
        INDEX_FILES not in seconds
        or not seconds.get(WRITE_SHARDS_ONE_WORKER)
        or not seconds.get("write shards")
    ):
        return "  index files / write shards: -"
    share = seconds[INDEX_FILES] / seconds[WRITE_SHARDS_ONE_WORKER]
    bound = seconds[INDEX_FILES] / seconds["write shards"]
    return (
        f"  index files / write shards: {share:.3f}x ({share:.1%} of the 1-worker stage, {bound:.1%} of the"
        " stage with every worker at most; target under 2%)"
    )


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def cpu_scaling(workers: int, work: int = 40_000_000) -> float:
    """How much faster ``workers`` processes do pure computation than one, on this machine now.

    The ceiling for the shard stage's own ratio: virtual cores often give less than their count.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    seconds = []
    for n in (1, workers):
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_spin, [1000] * n))  # the processes are up before the clock starts
            started = time.perf_counter()
            list(pool.map(_spin, [work // (2 * workers)] * (2 * workers)))
            seconds.append(time.perf_counter() - started)
    return seconds[0] / seconds[1]


def memory_at_two_scales(first: list[Result], second: list[Result], labels: tuple[str, str]) -> str:
    """Peak RSS of each stage at both scales (named by ``labels``), side by side."""
    at_second = {r.stage.name: r for r in second}
    header = f"{'peak RSS MB':<28} {labels[0]:>12} {labels[1]:>12} {'ratio':>7}"
    lines = [header, "-" * len(header)]
    for r in first:
        other = at_second.get(r.stage.name)
        if other is None or not (r.ok and other.ok):
            continue
        lines.append(
            f"{r.stage.name:<28} {r.peak_rss_mb:>12,.0f} {other.peak_rss_mb:>12,.0f} "
            f"{other.peak_rss_mb / r.peak_rss_mb:>7.2f}"
        )
    return "\n".join(lines)


GIB_MB = 2**30 / 1e6  # 1 GiB in the table's MB (1,074)


def _ours(results: list[Result]) -> list[Result]:
    """The rows of this project's own stages that ran (not the copies, tar x or TFDS)."""
    return [r for r in results if r.ok and r.stage.name not in PEERS]


def largest_process(results: list[Result]) -> str:
    """The largest process among this project's stages, against 1 GiB."""
    ours = _ours(results)
    if not ours:
        return "  largest process: -"
    largest = max(ours, key=lambda r: r.peak_rss_mb)
    over = [f"{r.stage.name} {r.peak_rss_mb:,.0f} MB" for r in ours if r.peak_rss_mb >= GIB_MB]
    verdict = "met" if not over else f"not met: {'; '.join(over)}"
    return (
        f"  largest process: {largest.peak_rss_mb:,.0f} MB ({largest.stage.name}); "
        f"target every process under 1 GiB ({GIB_MB:,.0f} MB): {verdict}"
    )


def full_count_targets(results: list[Result]) -> str:
    """The targets of the real counts (issue 13) that one run judges: the whole graph against TFDS,
    every process under 1 GiB, the training index under 8 s."""
    ok = {r.stage.name: r for r in results if r.ok}
    lines = ["", "targets at full count:"]
    graph, peer = ok.get(DAGSTER_BUILD), ok.get(TFDS)
    if graph and peer:
        ratio = graph.seconds / peer.seconds
        lines.append(
            f"  whole graph / TFDS: {ratio:.2f}x ({graph.seconds:.1f} s against {peer.seconds:.1f} s); "
            f"target at most 0.5x: {'met' if ratio <= 0.5 else 'not met'}"
        )
    else:
        lines.append("  whole graph / TFDS: - (a row did not run)")
    lines.append(largest_process(results))
    index = ok.get("train index")
    if index and index.work:
        lines.append(
            f"  training index of {index.work.images:,} members: {index.seconds:.2f} s "
            f"({index.work.images / index.seconds:,.0f} members/s); "
            f"target under 8 s: {'met' if index.seconds < 8 else 'not met'}"
        )
    else:
        lines.append("  training index: - (the row did not run)")
    return "\n".join(lines)


def peak_at_both_scales(first: list[Result], second: list[Result], labels: tuple[str, str]) -> str:
    """The largest process of this project's stages at each scale: the target is the same peak."""
    peaks = [max((r.peak_rss_mb for r in _ours(results)), default=0.0) for results in (first, second)]
    if not all(peaks):
        return "  largest process at both scales: -"
    return (
        f"  largest process: {peaks[0]:,.0f} MB at {labels[0]}, {peaks[1]:,.0f} MB at {labels[1]} "
        f"({peaks[1] / peaks[0]:.2f}x; target the same)"
    )


@dataclass(frozen=True)
class Scale:
    """One stand-in release the stages run on: its name in the tables, its spec and its folder
    (``release/`` and every stage's outputs and logs under it)."""

    label: str
    spec: sample.SampleSpec
    folder: Path


def scales(args: argparse.Namespace, out: Path) -> list[Scale]:
    """The release of the first run, and the second scale's (to compare peak memory), if any."""
    if args.full_count:
        return [
            Scale("full counts", sample.full_count_spec(), out),
            Scale("half counts", sample.full_count_spec(0.5), out / "half"),
        ]

    def per_synset(n: int) -> sample.SampleSpec:
        return sample.SampleSpec(
            train_images_per_synset=(n, n), photo_train_size=PHOTO_SIZE if args.realistic else None
        )

    first = Scale(f"{args.train_per_synset}/synset", per_synset(args.train_per_synset), out)
    if not args.second_scale:
        return [first]
    second = Scale(
        f"{args.second_scale}/synset", per_synset(args.second_scale), out / f"scale-{args.second_scale}"
    )
    return [first, second]


# Rows that make no sense at the real counts, and why.
FULL_COUNT_SKIPS = {
    BOXES_AT_SCALE: "the full-count release's training box archive has the release's "
    f"{sample.FULL_SCALE_TRAIN_BBOX_FILES:,} files: the bounding boxes row is that measure",
    WRITE_SHARDS_ONE_WORKER: "the workers' scaling is measured on the realistic stand-in; here it would "
    "add minutes for no new figure; without it the index files' share is not computed",
    MAIN_COMMAND: "it times the default sample, not this release",
}


def plan_stages(args: argparse.Namespace, tfds_present: bool) -> tuple[list[Stage], dict[str, str]]:
    """The stages of the first scale, in order, and those left out with why."""
    skipped: dict[str, str] = {}
    if args.full_count:
        skipped.update(FULL_COUNT_SKIPS)
    else:
        if not args.boxes_at_scale:
            skipped[BOXES_AT_SCALE] = "--boxes-at-scale 0"
        if not args.main_command:
            skipped[MAIN_COMMAND] = "--no-main-command"
    if not args.tfds:
        skipped[TFDS] = "not asked for (--tfds; the default with --realistic and --full-count)"
    elif not tfds_present:
        skipped[TFDS] = "tensorflow_datasets is not installed (pip install -e '.[bench]')"
    return [stage for stage in STAGES if stage.name not in skipped], skipped


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the options left unset filled in (they depend on --realistic and
    --full-count); as given when it asks for one stage in a child process (``--stage``)."""
    parser = argparse.ArgumentParser(
        prog="python -m ilsvrc_assets.benchmark", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--full-count",
        action="store_true",
        help="the release's real counts with tiny images (1,281,167 training images in 1,000 synsets, "
        "50,000 validation, 544,546 training box files; about 2 GB, written once into --out), then "
        "again at half of them to compare peak memory; without the rows that make no sense there",
    )
    parser.add_argument(
        "--train-per-synset", type=int, help="training images per synset (default 4; not with --full-count)"
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--realistic",
        dest="realistic",
        action="store_true",
        default=True,
        help="training images about 500 x 375, ~90 KB each (default)",
    )
    size.add_argument("--tiny", dest="realistic", action="store_false", help="the sample's tiny images")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: cores)"
    )
    parser.add_argument("--train-shards", type=int, default=release.DEFAULT_NUM_SHARDS["train"])
    parser.add_argument("--validation-shards", type=int, default=release.DEFAULT_NUM_SHARDS["validation"])
    parser.add_argument(
        "--boxes-at-scale",
        type=int,
        metavar="FILES",
        help="also time the bounding-box table from a training box archive of FILES XML files "
        f"(default with --realistic: the release's {sample.FULL_SCALE_TRAIN_BBOX_FILES:,}; 0: skip)",
    )
    parser.add_argument(
        "--second-scale",
        type=int,
        metavar="N",
        help="run the stages again with N training images per synset, to compare peak memory "
        "(default with --realistic: twice --train-per-synset; 0: skip)",
    )
    parser.add_argument(
        "--main-command",
        action=argparse.BooleanOptionalAction,
        help="also time the main command on the default sample, generation included "
        "(default: with --realistic)",
    )
    parser.add_argument(
        "--tfds",
        action=argparse.BooleanOptionalAction,
        help="also time TensorFlow Datasets' imagenet2012 builder on the same archives, in a process of "
        "its own, when tensorflow_datasets is installed (the bench extra) "
        "(default: with --realistic or --full-count)",
    )
    parser.add_argument("--out", type=Path, help="working folder (default: a new temporary folder)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary working folder (--out is always kept)"
    )
    # Internal: run one library stage in this (child) process.
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--release", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.stage:
        resolve_defaults(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stage:
        return child_main(args.stage, args.release, args.result)
    out = (args.out or Path(tempfile.mkdtemp(prefix="ilsvrc-benchmark-"))).absolute()
    keep = args.keep or args.out is not None  # a folder the user named is never deleted
    try:
        return benchmark(args, out)
    finally:
        if keep:
            print(f"benchmark: kept {out}")
        else:
            shutil.rmtree(out, ignore_errors=True)


def resolve_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill in the options left unset, which depend on --realistic and --full-count."""
    if args.full_count:
        given = [
            "--" + name.replace("_", "-")
            for name in ("train_per_synset", "boxes_at_scale", "second_scale", "main_command")
            if getattr(args, name) is not None
        ]
        if given:
            parser.error(f"--full-count sets the counts and the rows itself: not with {', '.join(given)}")
        args.boxes_at_scale, args.second_scale, args.main_command = 0, 0, False
    if args.train_per_synset is None:
        args.train_per_synset = 4
    if args.boxes_at_scale is None:
        args.boxes_at_scale = sample.FULL_SCALE_TRAIN_BBOX_FILES if args.realistic else 0
    if args.second_scale is None:
        args.second_scale = 2 * args.train_per_synset if args.realistic else 0
    if args.main_command is None:
        args.main_command = args.realistic
    if args.tfds is None:
        args.tfds = args.realistic or args.full_count


def write_boxes_at_scale(release_dir: Path, files: int) -> None:
    archive = boxes_at_scale_archive(release_dir)
    record = archive.parent / "FILES.json"
    if record.is_file() and json.loads(record.read_text())["files"] == files and archive.is_file():
        print(f"benchmark: reusing {archive}")
        return
    started = time.perf_counter()
    archive.parent.mkdir(parents=True, exist_ok=True)
    boxes = sample.write_train_boxes_at_scale(archive, files)
    fileio.atomic_write_text(record, json.dumps({"files": files, "boxes": boxes}))
    print(
        f"benchmark: wrote {files:,} training box files ({boxes:,} boxes) in {time.perf_counter() - started:.1f} s"
    )


def run_scale(args: argparse.Namespace, scale: Scale, stages: list[Stage]) -> tuple[list[Result], bool]:
    """Write (or reuse) the scale's stand-in release and run ``stages`` on it; False if one of this
    project's stages failed (the later ones need its outputs; TFDS's failure stops nothing)."""
    out = scale.folder
    release_dir = out / "release"
    for stale in ("library", "dagster", "logs", "main-command"):  # from an earlier run in the same --out
        shutil.rmtree(out / stale, ignore_errors=True)
    (out / "logs").mkdir(parents=True)
    if sample.is_complete(release_dir, scale.spec):
        print(f"benchmark: reusing the release in {release_dir}")
    else:
        started = time.perf_counter()
        sample.write_release(release_dir, scale.spec, progress=lambda line: print(line, flush=True))
        print(f"benchmark: wrote the release in {time.perf_counter() - started:.1f} s to {release_dir}")
    if any(stage.name == BOXES_AT_SCALE for stage in stages):
        write_boxes_at_scale(release_dir, args.boxes_at_scale)
    c = counts(release_dir)
    total = archive_bytes(release_dir, *release.ARCHIVES)
    print(
        f"benchmark: {scale.label}: {c['train_images']:,} train + {c['validation_images']:,} validation images, "
        f"{c['train_bbox_files']:,} training box files, {total / 1e6:,.0f} MB in five archives "
        f"(~{archive_bytes(release_dir, release.IMG_TRAIN) / c['train_images'] / 1e3:.1f} KB per train image); "
        f"{args.workers} workers, {args.train_shards}/{args.validation_shards} shards; "
        f"{os.cpu_count()} cores",
        flush=True,
    )
    env = dict(
        os.environ,
        ILSVRC_WORKERS=str(args.workers),
        ILSVRC_TRAIN_SHARDS=str(args.train_shards),
        ILSVRC_VALIDATION_SHARDS=str(args.validation_shards),
    )
    results = []
    for stage in stages:
        print(f"benchmark: {stage.name} ...", flush=True)
        # Each stage starts with nothing of the one before still being written back to the disk
        # (e.g. the 50,000 files of tar x, which would otherwise slow the tree measured next).
        os.sync()
        result = run_stage(stage, out, release_dir, env)
        results.append(result)
        if not result.ok and stage.name != TFDS:
            return results, False
    return results, True


def benchmark(args: argparse.Namespace, out: Path) -> int:
    stages, skipped = plan_stages(args, tfds_installed())
    for name, why in skipped.items():
        print(f"benchmark: not run: {name} ({why})")
    first, *second = scales(args, out)
    results, ok = run_scale(args, first, stages)
    print()
    print(table(results))
    print(comparisons(results, args.workers))
    if args.workers > 1 and WRITE_SHARDS_ONE_WORKER not in skipped:
        print(
            f"  this machine, pure computation, {args.workers} processes / 1: "
            f"{cpu_scaling(args.workers):.2f}x (the ceiling of the workers' ratio)"
        )
    if args.full_count:
        print(full_count_targets(results))
    everything = list(results)
    if ok and second:
        again = [stage for stage in stages if stage.name not in OPTIONAL]
        print(f"\nbenchmark: the same stages with the release at {second[0].label}", flush=True)
        more, ok = run_scale(args, second[0], again)
        everything += more
        labels = (first.label, second[0].label)
        print()
        print(table(more))
        print()
        print(memory_at_two_scales(results, more, labels))
        print(peak_at_both_scales(results, more, labels))
    print(f"\ncores: {os.cpu_count()}")
    return 0 if ok and all(r.ok for r in everything) else 1


if __name__ == "__main__":
    sys.exit(main())
