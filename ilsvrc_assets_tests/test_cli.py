"""The main command as a user runs it: a fresh process, settings from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

from ilsvrc_assets import cli, fileio, release
from ilsvrc_assets_tests.helpers import variant_release


def _run(args, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "ilsvrc_assets.cli", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_build_twice_then_history_shows_every_run(sample_release, tmp_path):
    env = {
        "ILSVRC_SOURCE": "local",
        "ILSVRC_LOCAL_DIR": str(sample_release),
        "ILSVRC_TRAIN_SHARDS": "4",
        "ILSVRC_VALIDATION_SHARDS": "2",
    }
    first = _run(["build"], env, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "every check passed" in first.stdout
    assert str(tmp_path / "data" / "tfrecords") in first.stdout  # says where the outputs are
    assert (tmp_path / "data" / "tfrecords" / "train-00003-of-00004").is_file()

    second = _run(["build"], env, tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 of 4 shards to write (4 unchanged" in second.stdout + second.stderr
    assert "(unchanged since last verified)" in second.stdout + second.stderr

    home = tmp_path / ".dagster_home"  # the documented default, inside the project folder
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        assert len(instance.get_runs()) == 8


def test_failed_check_exits_non_zero_and_names_the_file(sample_release, tmp_path):
    def corrupt(original: Path, target: Path) -> None:
        data = bytearray(original.read_bytes())
        data[100] ^= 0xFF
        target.write_bytes(bytes(data))

    folder = variant_release(sample_release, tmp_path / "release", update_md5sums=False, bbox_val=corrupt)
    result = _run(["build"], {"ILSVRC_SOURCE": "local", "ILSVRC_LOCAL_DIR": str(folder)}, tmp_path)
    assert result.returncode == 1
    assert "check validation_boxes_archive:checksum FAILED" in result.stdout
    assert f"{release.BBOX_VAL.name}: MD5" in result.stdout
    assert "FAILED" in result.stderr
    assert not (tmp_path / "data" / "tfrecords").exists()


def test_bad_setting_is_explained(tmp_path):
    result = _run(["build"], {"ILSVRC_SOURCE": "local", "ILSVRC_LOCAL_DIR": ""}, tmp_path)
    assert result.returncode == 2 and "ILSVRC_LOCAL_DIR" in result.stderr


def test_sample_command_writes_a_stand_in_release(tmp_path, capsys):
    assert cli.main(["sample", str(tmp_path / "release")]) == 0
    sums = fileio.read_md5sums(tmp_path / "release" / "MD5SUMS")
    assert set(sums) == {a.name for a in release.ARCHIVES}
    assert "ILSVRC_SOURCE=local" in capsys.readouterr().out


def test_dagster_home_defaults_inside_the_project_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    environ: dict[str, str] = {}
    home = cli.ensure_dagster_home(environ)
    assert home == tmp_path / ".dagster_home" and environ["DAGSTER_HOME"] == str(home)
    assert (home / "dagster.yaml").is_file()
