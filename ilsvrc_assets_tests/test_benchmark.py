"""Smoke test of ``python -m ilsvrc_assets.benchmark`` at tiny scale: it runs every stage and prints the table.

Nothing here is about speed: CI machines vary too much. About a minute (the Dagster build dominates).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ilsvrc_assets import benchmark, versions

pytestmark = pytest.mark.long(seconds=450)  # conftest: the long files start first

NUMBER = r"[\d,]+(?:\.\d+)?"
MAIN_COMMAND_ROW = re.compile(rf"^{re.escape(benchmark.MAIN_COMMAND)} ", re.MULTILINE)


def test_benchmark_runs_every_stage_and_prints_a_row_each(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "ilsvrc_assets.benchmark", "--tiny", "--train-per-synset", "1"]
    command += ["--train-shards", "2", "--validation-shards", "1", "--workers", "2", "--out", str(out)]
    # One scale: the second one runs the same stages again (the table of both is tested below).
    command += ["--boxes-at-scale", "3000", "--second-scale", "0", "--no-main-command"]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    table = done.stdout.split("\nratios:", 1)[0]
    assert MAIN_COMMAND_ROW.search(done.stdout) is None, "asked not to run the main command"
    assert "the same stages with" not in done.stdout, "asked for one scale only"
    lines = table.splitlines()
    for stage in [stage for stage in benchmark.STAGES if stage.name != benchmark.MAIN_COMMAND]:
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

    first = [result("write shards", 200), result("manifest read-back", 100), result("failed", 50, ok=False)]
    second = [result("write shards", 300), result("manifest read-back", 100), result("failed", 60)]
    lines = benchmark.memory_at_two_scales(first, second, (4, 8)).splitlines()
    assert "4/synset" in lines[0] and "8/synset" in lines[0], lines[0]
    rows = {line[:28].rstrip(): line[28:].split() for line in lines[2:]}
    # A stage that failed at either scale has no row: its peak says nothing.
    assert rows == {"write shards": ["200", "300", "1.50"], "manifest read-back": ["100", "100", "1.00"]}
