"""Smoke test of ``python -m ilsvrc_assets.benchmark`` at tiny scale: it runs every stage and prints the table.

Nothing here is about speed: CI machines vary too much. About a minute (the Dagster build dominates).
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ilsvrc_assets import benchmark, sample, versions
from ilsvrc_assets import settings as settings_module

pytestmark = pytest.mark.long(seconds=450)  # conftest: the long files start first

NUMBER = r"[\d,]+(?:\.\d+)?"
MAIN_COMMAND_ROW = re.compile(rf"^{re.escape(benchmark.MAIN_COMMAND)} ", re.MULTILINE)


def test_benchmark_runs_every_stage_and_prints_a_row_each(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "ilsvrc_assets.benchmark", "--tiny", "--train-per-synset", "1"]
    command += ["--train-shards", "2", "--validation-shards", "1", "--workers", "2", "--out", str(out)]
    # One scale: the second one runs the same stages again (the table of both is tested below).
    command += ["--boxes-at-scale", "3000", "--second-scale", "0", "--no-main-command", "--no-tfds"]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    table = done.stdout.split("\nratios:", 1)[0]
    assert MAIN_COMMAND_ROW.search(done.stdout) is None, "asked not to run the main command"
    assert f"not run: {benchmark.TFDS} (not asked for" in done.stdout, done.stdout[:3000]
    assert "the same stages with" not in done.stdout, "asked for one scale only"
    lines = table.splitlines()
    for stage in [s for s in benchmark.STAGES if s.name not in (benchmark.MAIN_COMMAND, benchmark.TFDS)]:
        rows = [line for line in lines if line[:28].rstrip() == stage.name]
        assert len(rows) == 1, f"no single row for {stage.name!r} in:\n{table}"
        cells = rows[0][len(stage.name) :].split()
        # seconds, images/s ("-" when the stage reads no images), MB/s, peak RSS MB, ratio to the copy
        assert len(cells) == 5, rows[0]
        for cell in (cells[0], cells[2], cells[3], cells[4]):
            assert re.fullmatch(NUMBER, cell), rows[0]
        assert re.fullmatch(NUMBER, cells[1]) or cells[1] == "-", rows[0]
    assert re.search(r"^cores: \d+$", done.stdout, re.MULTILINE), done.stdout
    # The ratios the targets are stated in, each computed (a number, not "-").
    for what in (
        "write shards / copy archives",
        "write shards / copy archives + fsync",
        "validation tree / tar x",
        "write webdataset / write shards (TFRecord)",
        "2 workers / 1 worker",
        "pure computation, 2 processes / 1",
        "index files / write shards",
    ):
        assert re.search(rf"{re.escape(what)}: {NUMBER}x( |$)", done.stdout, re.MULTILINE), done.stdout
    # The box files at scale: 3,000 of them in the training box archive it read.
    boxes = out / "boxes-at-scale"
    assert json.loads((boxes / "FILES.json").read_text())["files"] == 3000
    with tarfile.open(boxes / "ILSVRC2012_bbox_train_v2.tar.gz") as tar:
        assert sum(member.name.endswith(".xml") for member in tar) == 3000
    # Each library stage wrote its outputs where the next one reads them, and Dagster built its own.
    assert (out / "library" / "tfrecords" / "manifest.json").is_file()  # published by its row
    one_worker = (
        out / "library" / "one-worker" / versions.VERSIONS / "tfrecords" / versions.STAGING / "tfrecords"
    )
    assert sorted(p.name for p in one_worker.iterdir()) == sorted(
        p.name
        for p in (out / "library" / "tfrecords").iterdir()
        if p.name not in ("manifest.json", *versions.MARKER_FILES)
    )
    assert (out / "dagster" / "data" / "tfrecords" / "manifest.json").is_file()


def test_peak_memory_is_shown_side_by_side_at_two_scales() -> None:
    def result(name: str, mb: float, ok: bool = True) -> benchmark.Result:
        stage = benchmark.Stage(name, None, lambda r, d: benchmark.Work(0, 0))
        return benchmark.Result(stage, ok, 1.0, mb, benchmark.Work(0, 0))

    first = [
        result("write shards", 200),
        result("manifest (no read-back)", 100),
        result("failed", 50, ok=False),
    ]
    second = [result("write shards", 300), result("manifest (no read-back)", 100), result("failed", 60)]
    lines = benchmark.memory_at_two_scales(first, second, ("4/synset", "8/synset")).splitlines()
    assert "4/synset" in lines[0] and "8/synset" in lines[0], lines[0]
    rows = {line[:28].rstrip(): line[28:].split() for line in lines[2:]}
    # A stage that failed at either scale has no row: its peak says nothing.
    assert rows == {"write shards": ["200", "300", "1.50"], "manifest (no read-back)": ["100", "100", "1.00"]}


def _result(name: str, seconds: float, mb: float, images: int = 0) -> benchmark.Result:
    stage = benchmark.BY_NAME.get(name) or benchmark.Stage(name, None, lambda r, d: benchmark.Work(0, 0))
    return benchmark.Result(stage, True, seconds, mb, benchmark.Work(images, 0))


def test_full_count_runs_the_real_counts_and_leaves_out_what_makes_no_sense_there(tmp_path: Path) -> None:
    args = benchmark.parse_args(["--full-count", "--out", str(tmp_path)])
    assert (args.train_shards, args.validation_shards) == (1024, 128)  # the release's defaults
    assert args.tfds and not args.main_command and args.boxes_at_scale == 0
    first, second = benchmark.scales(args, tmp_path)
    assert (first.spec, first.folder) == (sample.full_count_spec(), tmp_path)
    assert (second.spec, second.folder) == (sample.full_count_spec(0.5), tmp_path / "half")
    stages, skipped = benchmark.plan_stages(args, tfds_present=True)
    names = [stage.name for stage in stages]
    left_out = {benchmark.BOXES_AT_SCALE, benchmark.WRITE_SHARDS_ONE_WORKER, benchmark.MAIN_COMMAND}
    assert set(skipped) == left_out and not left_out & set(names)
    assert "544,546" in skipped[benchmark.BOXES_AT_SCALE]
    assert names[-2:] == [benchmark.DAGSTER_BUILD, benchmark.TFDS]
    assert {"train index", "write shards", "manifest (no read-back)"} <= set(names)


def test_the_tfds_row_is_skipped_with_the_way_to_install_it_when_tfds_is_missing(tmp_path: Path) -> None:
    args = benchmark.parse_args(["--full-count", "--out", str(tmp_path)])
    stages, skipped = benchmark.plan_stages(args, tfds_present=False)
    assert benchmark.TFDS not in [stage.name for stage in stages]
    assert "pip install -e '.[bench]'" in skipped[benchmark.TFDS]
    # Asked not to: skipped whether installed or not; the tiny smoke test does not ask for it.
    for argv in (["--full-count", "--no-tfds"], ["--tiny"]):
        _, skipped = benchmark.plan_stages(benchmark.parse_args(argv), tfds_present=True)
        assert skipped[benchmark.TFDS].startswith("not asked for"), argv


@pytest.mark.parametrize(
    "given", [["--second-scale", "2"], ["--train-per-synset", "8"], ["--boxes-at-scale", "9"]]
)
def test_full_count_refuses_options_that_set_the_counts(given: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        benchmark.parse_args(["--full-count", *given])
    assert exit_.value.code == 2
    assert f"not with {given[0]}" in capsys.readouterr().err


def test_full_count_targets_are_judged_from_the_rows() -> None:
    results = [
        _result("copy archives", 10, 2_000),  # a peer: its memory is not ours
        _result("train index", 6.4, 586, images=1_281_167),
        _result("write shards", 80, 1_740),
        _result(benchmark.DAGSTER_BUILD, 297, 900),
        _result(benchmark.TFDS, 325, 3_000),
    ]
    text = benchmark.full_count_targets(results)
    assert "whole graph / TFDS: 0.91x (297.0 s against 325.0 s); target at most 0.5x: not met" in text
    assert "largest process: 1,740 MB (write shards)" in text
    assert "not met: write shards 1,740 MB" in text and "dagster" not in text.split("not met: ")[-1]
    assert "training index of 1,281,167 members: 6.40 s (200,182 members/s); target under 8 s: met" in text
    # Without the TFDS row there is no ratio; under 1 GiB everywhere the target is met.
    text = benchmark.full_count_targets(
        [_result("write shards", 80, 900), _result(benchmark.DAGSTER_BUILD, 297, 1_000)]
    )
    assert "whole graph / TFDS: -" in text and "target every process under 1 GiB (1,074 MB): met" in text
    half = [_result("write shards", 40, 880), _result(benchmark.DAGSTER_BUILD, 150, 800)]
    assert "1,000 MB at full counts, 880 MB at half counts (0.88x" in benchmark.peak_at_both_scales(
        [_result("write shards", 80, 900), _result(benchmark.DAGSTER_BUILD, 297, 1_000)],
        half,
        ("full counts", "half counts"),
    )


def test_the_tfds_row_builds_tensorflow_datasets_imagenet2012_from_the_same_archives(
    sample_release: Path, tmp_path: Path
) -> None:
    """TFDS's builder on the session's sample, offline, from symbolic links to its two archives
    (skipped where the bench extra is not installed, as in CI)."""
    pytest.importorskip("tensorflow_datasets")
    settings = dataclasses.replace(settings_module.load({}), data_dir=tmp_path)
    benchmark.run_tfds(settings, sample_release)
    info = json.loads(
        next((tmp_path / "tfds" / "data" / "imagenet2012").glob("*/dataset_info.json")).read_text()
    )
    examples = {split["name"]: sum(int(n) for n in split["shardLengths"]) for split in info["splits"]}
    described = sample.describe(sample_release)["counts"]
    assert examples == {"train": described["train_images"], "validation": described["validation_images"]}
