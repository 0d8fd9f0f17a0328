"""The main command as a user runs it: a fresh process, settings from the environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

from ilsvrc_assets import cli, fileio, release
from ilsvrc_assets.definitions import JOB_NAMES, build_definitions
from ilsvrc_assets_tests.helpers import variant_release

pytestmark = pytest.mark.long(seconds=400)  # conftest: the long files start first


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
        assert len(instance.get_runs()) == 10  # five jobs each time


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


def test_the_last_line_of_a_failure_names_the_file_at_fault(sample_release, tmp_path):
    def truncate(original: Path, target: Path) -> None:
        data = original.read_bytes()
        target.write_bytes(data[: len(data) // 2 + 100])  # cut inside an inner tar

    folder = variant_release(sample_release, tmp_path / "release", img_train=truncate)  # MD5SUMS agree
    result = _run(["build"], {"ILSVRC_SOURCE": "local", "ILSVRC_LOCAL_DIR": str(folder)}, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    # The project's own error (the archive and what to do), not the library error it was raised from.
    assert last.startswith("ilsvrc-assets: FAILED after "), last
    assert "step train_images: ILSVRC2012_img_train.tar" in last, last
    assert "fetch it again" in last or "delete it" in last, last


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


def _check_env(settings, home: Path) -> dict[str, str]:
    """The environment under which the CLI sees the built sample's settings and instance copy."""
    return {
        "ILSVRC_SOURCE": settings.source,
        "ILSVRC_SAMPLE_DIR": str(settings.sample_dir),
        "ILSVRC_DATA_DIR": str(settings.data_dir),
        "ILSVRC_TRAIN_SHARDS": str(settings.num_shards["train"]),
        "ILSVRC_VALIDATION_SHARDS": str(settings.num_shards["validation"]),
        "ILSVRC_WORKERS": str(settings.workers),
        "DAGSTER_HOME": str(home),
    }


def _junit_cases(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites" and [s.get("name") for s in root] == [JOB_NAMES["audit"]]
    return {f"{case.get('classname')}:{case.get('name')}": case for case in root.iter("testcase")}


def test_check_runs_the_audit_and_reports_each_check_as_a_junit_test(built_graph_copy, tmp_path):
    settings, instance = built_graph_copy  # a copy of the built sample's history: this adds runs
    env = _check_env(settings, Path(instance.root_directory))
    audited = {
        key.to_user_string()
        for key in build_definitions(settings)
        .resolve_job_def(JOB_NAMES["audit"])
        .asset_layer.asset_graph.asset_check_keys
    }
    assert "dataset_manifest:every_shard_present" in audited and len(audited) >= 11
    manifest_stamp = settings.manifest_json.stat().st_mtime_ns

    passed = _run(["check", "--junit-xml", str(tmp_path / "passed.xml")], env, tmp_path)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    for name in audited:
        assert f"check {name} passed" in passed.stdout
    cases = _junit_cases(tmp_path / "passed.xml")
    assert set(cases) == audited
    assert not [name for name, case in cases.items() if case.find("failure") is not None]
    assert settings.manifest_json.stat().st_mtime_ns == manifest_stamp  # nothing materialised

    # A shard gone behind Dagster's back: the check fails, non-zero, naming it in the report.
    shard = settings.tfrecords_dir / settings.shard_names("validation")[-1]
    moved = shutil.move(shard, tmp_path / shard.name)
    try:
        failed = _run(["check", "--junit-xml", str(tmp_path / "failed.xml")], env, tmp_path)
    finally:
        shutil.move(moved, shard)
    assert failed.returncode == cli.EXIT_FAILED, failed.stdout + failed.stderr
    assert "check dataset_manifest:every_shard_present FAILED" in failed.stdout
    assert "dataset_manifest:every_shard_present" in failed.stderr
    cases = _junit_cases(tmp_path / "failed.xml")
    assert set(cases) == audited
    failure = cases["dataset_manifest:every_shard_present"].find("failure")
    assert failure is not None and shard.name in failure.get("message") and shard.name in failure.text
    root = ET.parse(tmp_path / "failed.xml").getroot()
    assert int(root.get("failures")) >= 1 and int(root.get("tests")) == len(audited)
    assert cases["synsets:one_thousand_synsets"].find("failure") is None
    assert not [path for path in tmp_path.iterdir() if fileio.is_temp_path(path)]  # written whole


def test_check_reports_a_check_that_could_not_run_as_an_error(built_graph_copy, tmp_path):
    settings, instance = built_graph_copy
    env = _check_env(settings, Path(instance.root_directory))
    moved = shutil.move(settings.synsets_csv, tmp_path / settings.synsets_csv.name)
    try:
        result = _run(["check", "--junit-xml", str(tmp_path / "report.xml")], env, tmp_path)
    finally:
        shutil.move(moved, settings.synsets_csv)
    assert result.returncode == cli.EXIT_FAILED, result.stdout + result.stderr
    assert "check synsets:one_thousand_synsets NOT EVALUATED" in result.stdout
    cases = _junit_cases(tmp_path / "report.xml")
    error = cases["synsets:one_thousand_synsets"].find("error")
    assert error is not None and "synsets.csv" in error.get("message")
    assert cases["synsets:one_thousand_synsets"].find("failure") is None  # an error, not a failed check
    assert cases["validation_tree:matches_validation_label_file"].find("error") is None
    root = ET.parse(tmp_path / "report.xml").getroot()
    assert int(root.get("errors")) >= 1 and int(root.get("tests")) == len(cases)
