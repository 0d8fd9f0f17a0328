"""``prepare_inputs`` launched with its own executor, as the UI and the daemon launch it
(``definitions.inputs_executor``; ``cli.run_job(own_executor=True)``): the steps that do not depend on
one another run at the same time, each in a process of its own, never more at once than
``ILSVRC_WORKERS``, and a step that fails still fails the run naming the file and what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance

from ilsvrc_assets import cli, release
from ilsvrc_assets.definitions import JOB_NAMES, build_definitions
from ilsvrc_assets_tests.helpers import make_settings, variant_release

pytestmark = pytest.mark.long(seconds=90)  # conftest: the long files start first

_ENDS = {DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE}


def _windows(instance: DagsterInstance, run_id: str) -> dict[str, tuple[float, float, int]]:
    """{step key: (when it started, when it succeeded or failed, the process it ran in)}, from the
    run's event log as Dagster stored it."""
    starts, windows = {}, {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == DagsterEventType.STEP_START:
            starts[event.step_key] = (record.timestamp, event.pid)
        elif event.event_type in _ENDS:
            started, pid = starts[event.step_key]
            windows[event.step_key] = (started, record.timestamp, pid)
    return windows


def test_independent_steps_run_at_once_and_a_failure_still_names_the_file(sample_release, tmp_path):
    def cut(original: Path, target: Path) -> None:
        target.write_bytes(original.read_bytes()[:-200])  # the gzip stream's last bytes gone

    # MD5SUMS list the cut archive, so its checksum passes: the box table's step is the one to fail,
    # late (the stream ends early), while the validation tree, which does not need it, is written.
    folder = variant_release(sample_release, tmp_path / "release", bbox_val=cut)
    settings = make_settings(tmp_path / "data", folder, workers=2)
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        definitions = build_definitions(settings)
        result = cli.run_job(definitions, JOB_NAMES["inputs"], instance, {}, "WARNING", own_executor=True)
        windows = _windows(instance, result.run_id)

    assert not result.success
    failed = cli.echo_failed_steps(result, echo=lambda _m: None)
    assert set(failed) == {"bounding_boxes"}, failed
    assert failed["bounding_boxes"].startswith(f"{release.BBOX_VAL.name}: "), failed
    assert "fetch it again" in failed["bounding_boxes"], failed
    assert settings.validation_dir.is_dir()  # published: the failure blocked only what depends on it

    # Each step in a process of its own; the tree and the box table at the same time (both wait
    # only for the validation index): run in order, one would end before the other started.
    assert len({pid for _, _, pid in windows.values()}) == len(windows) > 10, windows
    tree_start, tree_end, _ = windows["validation_tree"]
    boxes_start, boxes_end, _ = windows["bounding_boxes"]
    assert tree_start < boxes_end and boxes_start < tree_end, windows
    # Never more steps at once than ILSVRC_WORKERS.
    for moment in sorted(start for start, _, _ in windows.values()):
        running = [key for key, (start, end, _) in windows.items() if start <= moment < end]
        assert len(running) <= settings.workers, (moment, running)


def test_the_executor_the_ui_launches_prepare_inputs_with(tmp_path):
    settings = make_settings(tmp_path / "data", None, source="sample", workers=3)
    job = build_definitions(settings).resolve_job_def(JOB_NAMES["inputs"])
    config = job.executor_def.config_schema.resolve_config({}).value["config"]  # a launch without config
    assert config["max_concurrent"] == 3  # ILSVRC_WORKERS, not Dagster's one per core
    assert config["start_method"] == {"forkserver": {"preload_modules": ["ilsvrc_assets.definitions"]}}
    # The jobs after it keep Dagster's default (one step each, or the shard partitions' one step).
    assert not build_definitions(settings).resolve_job_def(JOB_NAMES["train"]).has_specified_executor
