"""How fast is each stage, next to simply copying the archives? ``python -m ilsvrc_assets.benchmark``

    python -m ilsvrc_assets.benchmark                       realistic training images (~90 KB), 4 per synset
    python -m ilsvrc_assets.benchmark --tiny --train-per-synset 1 --train-shards 4 --validation-shards 2

Writes a stand-in release (``sample.write_release``) into ``<out>/release``, then runs, each in a
fresh process of its own:

- ``copy``: a plain copy of the five archives' bytes (the baseline: what the disk allows);
- each stage alone through the plain library functions (outputs under ``<out>/library``);
- ``dagster build``: the whole graph, ``ilsvrc-assets build`` with ``ILSVRC_SOURCE=local`` (outputs
  and Dagster history under ``<out>/dagster``).

and prints, per stage: seconds, images/s, MB/s of the input it had to read, the peak RSS of the
stage's largest process (the stage's process or one of its workers; from ``wait4``) and the ratio
of its time to the copy's. A library stage's seconds are measured inside its process around the
stage function (no interpreter start or imports); the ``dagster build`` row is the whole command.
The archives were just written, so they are usually in the page cache: the numbers show CPU cost
more than disk speed. Exits 1 if a stage fails (its log is under ``<out>/logs``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ilsvrc_assets import release, sample
from ilsvrc_assets import settings as settings_module
from ilsvrc_assets.settings import Settings

PHOTO_SIZE = (375, 500)  # min/max side of the realistic training images (the release's are ~500 x 375)

# --- The stages: plain library calls, each run alone in a child process -------------------------


def run_copy(settings: Settings, release_dir: Path) -> None:
    copy_dir = settings.data_dir / "copy"
    copy_dir.mkdir(parents=True, exist_ok=True)
    for archive in release.ARCHIVES:
        shutil.copyfile(release_dir / archive.name, copy_dir / archive.name)


def run_devkit(settings: Settings, release_dir: Path) -> None:
    from ilsvrc_assets import synsets

    devkit = synsets.read_devkit(release_dir / release.DEVKIT.name)
    table = synsets.synset_table(devkit)
    synsets.write_csv(table, settings.synsets_csv)
    synsets.write_validation_labels(synsets.validation_labels(devkit, table), settings.validation_labels_csv)


def run_train_index(settings: Settings, release_dir: Path) -> None:
    from ilsvrc_assets import archives, synsets

    known = frozenset(synsets.read_synsets(settings.synsets_csv)["wnid"])
    index = archives.index_train_archive(release_dir / release.IMG_TRAIN.name, known)
    archives.write_index(index, settings.image_index("train"))


def run_validation_index(settings: Settings, release_dir: Path) -> None:
    from ilsvrc_assets import archives, synsets

    labels = synsets.read_validation_labels(settings.validation_labels_csv)
    index = archives.index_validation_archive(release_dir / release.IMG_VAL.name, labels)
    archives.write_index(index, settings.image_index("validation"))


def run_validation_tree(settings: Settings, release_dir: Path) -> None:
    from ilsvrc_assets import archives, validation_tree

    index = archives.read_index(settings.image_index("validation"))
    validation_tree.build(
        release_dir / release.IMG_VAL.name, index, settings.validation_dir, threads=settings.workers
    )


def run_bounding_boxes(settings: Settings, release_dir: Path) -> None:
    from ilsvrc_assets import bounding_boxes, synsets

    table = bounding_boxes.build_table(
        release_dir / release.BBOX_TRAIN.name,
        release_dir / release.BBOX_VAL.name,
        set(synsets.read_synsets(settings.synsets_csv)["wnid"]),
        synsets.read_validation_labels(settings.validation_labels_csv),
        workers=settings.workers,
    )
    bounding_boxes.write_outputs(
        table,
        settings.bounding_boxes_parquet,
        settings.bounding_boxes_csv,
        settings.validation_bounding_boxes_csv,
    )


def run_tar_x(settings: Settings, release_dir: Path) -> None:
    """The baseline of the validation tree: GNU tar extracting the validation archive, flat."""
    target = settings.data_dir / "tar-x"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    subprocess.run(["tar", "xf", str(release_dir / release.IMG_VAL.name), "-C", str(target)], check=True)


def run_shards_one_worker(settings: Settings, release_dir: Path) -> None:
    """The shard stage again with one worker, into a folder of its own: how it scales with cores."""
    from dataclasses import replace

    run_shards(replace(settings, data_dir=settings.data_dir / "one-worker", workers=1), release_dir)


def run_shards(settings: Settings, release_dir: Path) -> None:
    from ilsvrc_assets import archives, bounding_boxes, shard_plan, shards, synsets

    # Inputs from the library stages before (the one-worker run writes under a folder of its own).
    inputs = settings_module.load()

    table = bounding_boxes.read_table(inputs.bounding_boxes_parquet)
    synset_table = synsets.read_synsets(inputs.synsets_csv)
    jobs = []
    for split, archive in (("train", release.IMG_TRAIN), ("validation", release.IMG_VAL)):
        planned = shard_plan.plan_split(
            split,
            archives.read_index(inputs.image_index(split)),
            synset_table,
            bounding_boxes.boxes_by_image(table[table["split"] == split]),
            release_dir / archive.name,
            settings.tfrecords_dir,
            settings.num_shards[split],
        )
        jobs.extend(planned.values())
    settings.tfrecords_dir.mkdir(parents=True, exist_ok=True)
    shards.write_shards(jobs, workers=settings.workers)


def run_manifest(settings: Settings, release_dir: Path) -> None:
    from ilsvrc_assets import archives, manifest

    result = manifest.build(
        settings.tfrecords_dir,
        {split: settings.shard_names(split) for split in release.SPLITS},
        {split: len(archives.read_index(settings.image_index(split))) for split in release.SPLITS},
        workers=settings.workers,
    )
    manifest.write(result, settings.manifest_json)


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
    tfrecords = data_dir / "library" / "tfrecords"
    size = sum(p.stat().st_size for p in tfrecords.iterdir() if p.name.startswith(release.SPLITS))
    return Work(c["train_images"] + c["validation_images"], size)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Settings, Path], None] | None  # None: the Dagster build, a command of its own
    reads: Callable[[Path, Path], Work]  # (release dir, benchmark dir) -> what the stage had to read


STAGES = (
    Stage("copy archives", run_copy, all_archives),
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
    Stage("write shards", run_shards, shard_input),
    Stage("write shards (1 worker)", run_shards_one_worker, shard_input),
    Stage("manifest read-back", run_manifest, shard_files),
    Stage("dagster build (whole graph)", None, all_archives),
)
BY_NAME = {stage.name: stage for stage in STAGES}


# --- Running a stage in a child process -----------------------------------------------------------


def child_main(stage_name: str, release_dir: Path, result_file: Path) -> int:
    """In the child: run one library stage against the settings in the environment; write its seconds."""
    settings = settings_module.load()
    started = time.perf_counter()
    BY_NAME[stage_name].run(settings, release_dir)
    result_file.write_text(json.dumps({"seconds": time.perf_counter() - started}))
    return 0


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
    if stage.run is None:  # the whole graph through Dagster
        env = dict(
            env,
            ILSVRC_SOURCE="local",
            ILSVRC_LOCAL_DIR=str(release_dir),
            ILSVRC_DATA_DIR=str(out / "dagster" / "data"),
            DAGSTER_HOME=str(out / "dagster" / "home"),
        )
        command = [sys.executable, "-m", "ilsvrc_assets.cli", "build"]
        code, seconds, rss = run_child(command, env, log)
    else:
        result_file = log.with_suffix(".json")
        command = [sys.executable, "-m", "ilsvrc_assets.benchmark", "--stage", stage.name]
        command += ["--release", str(release_dir), "--result", str(result_file)]
        code, _, rss = run_child(command, dict(env, ILSVRC_DATA_DIR=str(out / "library")), log)
        seconds = json.loads(result_file.read_text())["seconds"] if code == 0 else float("nan")
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
            ratio("validation tree", "tar x (validation archive)", "validation tree / tar x"),
            ratio(
                "write shards (1 worker)",
                "write shards",
                f"shard throughput, {workers} workers / 1 worker",
            ),
            ratio("dagster build (whole graph)", "copy archives", "whole graph / copy archives"),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ilsvrc_assets.benchmark", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--train-per-synset", type=int, default=4, help="training images per synset (default 4)"
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
    parser.add_argument("--out", type=Path, help="working folder (default: a new temporary folder)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary working folder (--out is always kept)"
    )
    # Internal: run one library stage in this (child) process.
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--release", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
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


def benchmark(args: argparse.Namespace, out: Path) -> int:
    spec = sample.SampleSpec(
        train_images_per_synset=(args.train_per_synset, args.train_per_synset),
        photo_train_size=PHOTO_SIZE if args.realistic else None,
    )
    release_dir = out / "release"
    for stale in ("library", "dagster", "logs"):  # from an earlier run in the same --out
        shutil.rmtree(out / stale, ignore_errors=True)
    (out / "logs").mkdir(parents=True)
    if sample.is_complete(release_dir, spec):
        print(f"benchmark: reusing the release in {release_dir}")
    else:
        started = time.perf_counter()
        sample.write_release(release_dir, spec)
        print(f"benchmark: wrote the release in {time.perf_counter() - started:.1f} s to {release_dir}")
    c = counts(release_dir)
    total = archive_bytes(release_dir, *release.ARCHIVES)
    print(
        f"benchmark: {c['train_images']:,} train + {c['validation_images']:,} validation images, "
        f"{total / 1e6:,.0f} MB in five archives "
        f"(~{archive_bytes(release_dir, release.IMG_TRAIN) / c['train_images'] / 1e3:.0f} KB per train image); "
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
    for stage in STAGES:
        print(f"benchmark: {stage.name} ...", flush=True)
        result = run_stage(stage, out, release_dir, env)
        results.append(result)
        if not result.ok:
            break  # the later stages need this one's outputs
    print()
    print(table(results))
    print(comparisons(results, args.workers))
    print(f"\ncores: {os.cpu_count()}")
    return 0 if all(r.ok for r in results) and len(results) == len(STAGES) else 1


if __name__ == "__main__":
    sys.exit(main())
