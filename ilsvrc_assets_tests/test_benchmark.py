"""Smoke test of ``python -m ilsvrc_assets.benchmark`` at tiny scale: it runs every stage and prints the table.

Nothing here is about speed: CI machines vary too much. About a minute (the Dagster build dominates).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ilsvrc_assets import benchmark

NUMBER = r"[\d,]+(?:\.\d+)?"


def test_benchmark_runs_every_stage_and_prints_a_row_each(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "ilsvrc_assets.benchmark", "--tiny", "--train-per-synset", "1"]
    command += ["--train-shards", "2", "--validation-shards", "1", "--workers", "2", "--out", str(out)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    lines = done.stdout.splitlines()
    for stage in benchmark.STAGES:
        rows = [
            line for line in lines if line.startswith(stage.name + " ") and line[:28].rstrip() == stage.name
        ]
        assert len(rows) == 1, f"no single row for {stage.name!r} in:\n{done.stdout}"
        cells = rows[0][len(stage.name) :].split()
        # seconds, images/s ("-" when the stage reads no images), MB/s, peak RSS MB, ratio to the copy
        assert len(cells) == 5, rows[0]
        for cell in (cells[0], cells[2], cells[3], cells[4]):
            assert re.fullmatch(NUMBER, cell), rows[0]
        assert re.fullmatch(NUMBER, cells[1]) or cells[1] == "-", rows[0]
    assert re.search(r"^cores: \d+$", done.stdout, re.MULTILINE), done.stdout
    # The ratios the targets are stated in, each computed (a number, not "-").
    for what in ("write shards / copy archives", "validation tree / tar x", "2 workers / 1 worker"):
        assert re.search(rf"{re.escape(what)}: {NUMBER}x$", done.stdout, re.MULTILINE), done.stdout
    # Each library stage wrote its outputs where the next one reads them, and Dagster built its own.
    assert (out / "library" / "tfrecords" / "manifest.json").is_file()
    assert sorted(p.name for p in (out / "library" / "one-worker" / "tfrecords").iterdir()) == sorted(
        p.name for p in (out / "library" / "tfrecords").iterdir() if p.name != "manifest.json"
    )
    assert (out / "dagster" / "data" / "tfrecords" / "manifest.json").is_file()
