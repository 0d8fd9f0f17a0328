"""Shared pieces of the fault-injection suite: running the main command in a child process that
the test can kill, and comparing outputs with the clean build of the session (byte for byte)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ilsvrc_assets import fileio
from ilsvrc_assets.settings import Settings
from ilsvrc_assets_tests.conftest import TEST_SHARDS


def build_env(settings: Settings, dagster_home: Path, **extra: str) -> dict[str, str]:
    """The environment that makes ``ilsvrc-assets build`` use ``settings`` (sample source)."""
    env = dict(os.environ)
    env.update(
        ILSVRC_SOURCE="sample",
        ILSVRC_SAMPLE_DIR=str(settings.sample_dir),
        ILSVRC_DATA_DIR=str(settings.data_dir),
        ILSVRC_TRAIN_SHARDS=str(TEST_SHARDS["train"]),
        ILSVRC_VALIDATION_SHARDS=str(TEST_SHARDS["validation"]),
        ILSVRC_WORKERS=str(settings.workers),
        DAGSTER_HOME=str(dagster_home),
        **extra,
    )
    return env


def start_build(env: dict[str, str], log: Path) -> subprocess.Popen:
    """``ilsvrc-assets build`` in its own process group (so a kill reaches its worker processes)."""
    return subprocess.Popen(
        [sys.executable, "-m", "ilsvrc_assets.cli", "build", "--log-level", "WARNING"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float, log: Path) -> None:
    """SIGKILL the process group of ``process`` as soon as ``ready()``; fail if it never is."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                raise AssertionError(
                    f"the build ended (exit {process.returncode}) before the moment to kill it:\n"
                    + log.read_text()[-3000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for the moment to kill the build:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.02)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)
        _wait_group_gone(process.pid)


def _wait_group_gone(pgid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes of group {pgid} still alive after SIGKILL")


def final_files(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` by relative path, temp files excluded."""
    return {
        str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file() and not fileio.is_temp_path(p)
    }


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and fileio.is_temp_path(p)]


def differing(folder: Path, reference: Path, names: list[str] | None = None) -> list[str]:
    """Relative paths under ``folder`` whose bytes differ from ``reference`` (or are missing there)."""
    names = sorted(final_files(folder)) if names is None else names
    bad = []
    for name in names:
        ours, theirs = folder / name, reference / name
        if not theirs.is_file() or not ours.is_file() or ours.read_bytes() != theirs.read_bytes():
            bad.append(name)
    return bad
