"""Smoke test of ``python -m ilsvrc_assets.benchmark`` at tiny scale: it runs every stage and prints the table.

Nothing here is about speed: CI machines vary too much. About a minute (the Dagster build dominates).
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import sys
from pathlib import Path

from ilsvrc_assets import benchmark

NUMBER = r"[\d,]+(?:\.\d+)?"
MAIN_COMMAND_ROW = re.compile(rf"^{re.escape(benchmark.MAIN_COMMAND)} ", re.MULTILINE)


def test_benchmark_runs_every_stage_and_prints_a_row_each(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "ilsvrc_assets.benchmark", "--tiny", "--train-per-synset", "1"]
    command += ["--train-shards", "2", "--validation-shards", "1", "--workers", "2", "--out", str(out)]
    command += ["--boxes-at-scale", "3000", "--second-scale", "2", "--no-main-command"]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    first, rest = done.stdout.split("\nratios:", 1)
    second = rest[rest.index("the same stages with 2 training images") : rest.index("\npeak RSS MB ")]
    assert MAIN_COMMAND_ROW.search(done.stdout) is None, "asked not to run the main command"
    for table, stages in (
        (first, [stage for stage in benchmark.STAGES if stage.name != benchmark.MAIN_COMMAND]),
        (second, [stage for stage in benchmark.STAGES if stage.name not in benchmark.OPTIONAL]),
    ):
        lines = table.splitlines()
        for stage in stages:
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
    ):
        assert re.search(rf"{re.escape(what)}: {NUMBER}x( |$)", done.stdout, re.MULTILINE), done.stdout
    # Peak memory side by side at 1 and 2 training images per synset, for each stage run twice.
    memory = done.stdout[done.stdout.index("\npeak RSS MB ") + 1 :].splitlines()
    assert "1/synset" in memory[0] and "2/synset" in memory[0], memory[0]
    assert len([row for row in memory[2:] if re.match(rf"^.{{28}} +{NUMBER} +{NUMBER} +{NUMBER}$", row)]) == (
        len(benchmark.STAGES) - len(benchmark.OPTIONAL)
    ), "\n".join(memory)
    # The box files at scale: 3,000 of them in the training box archive it read.
    boxes = out / "boxes-at-scale"
    assert json.loads((boxes / "FILES.json").read_text())["files"] == 3000
    with tarfile.open(boxes / "ILSVRC2012_bbox_train_v2.tar.gz") as tar:
        assert sum(member.name.endswith(".xml") for member in tar) == 3000
    # Each library stage wrote its outputs where the next one reads them, and Dagster built its own.
    assert (out / "library" / "tfrecords" / "manifest.json").is_file()
    assert sorted(p.name for p in (out / "library" / "one-worker" / "tfrecords").iterdir()) == sorted(
        p.name for p in (out / "library" / "tfrecords").iterdir() if p.name != "manifest.json"
    )
    assert (out / "dagster" / "data" / "tfrecords" / "manifest.json").is_file()
