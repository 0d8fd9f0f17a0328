"""``train_tree`` in the code location: made by its own job with its blocking check, and left out of
``ilsvrc-assets build`` and the audit unless ``ILSVRC_FORMATS`` lists ``imagefolder`` (``defs/outputs.py``,
through ``definitions.left_out``; the refresh: ``test_schedules.py``)."""

from __future__ import annotations

import shutil

import pytest
from dagster import DagsterInstance

from ilsvrc_assets import archives, versions
from ilsvrc_assets.cli import _check_steps, _stages
from ilsvrc_assets.definitions import JOB_NAMES, build_definitions
from ilsvrc_assets_tests.helpers import evaluations, make_settings, materialized, run_job

PUBLISH = "publish_train_tree"
LISTED = "published_train_tree:matches_its_listing"

CHECK = "train_tree:matches_train_index"


def _audited(definitions) -> set[str]:
    job = definitions.resolve_job_def(JOB_NAMES["audit"])
    return {f"{key.asset_key.to_user_string()}:{key.name}" for key in _check_steps(job)}


@pytest.mark.parametrize("asked", [False, True])
def test_built_and_audited_only_when_asked(sample_release, tmp_path, asked):
    formats = ("tfrecord", "imagefolder") if asked else ("tfrecord",)  # ILSVRC_FORMATS=tfrecord,imagefolder
    settings = make_settings(tmp_path / "data", sample_release, formats=formats)
    definitions = build_definitions(settings)
    in_location = {key.to_user_string() for key in definitions.resolve_asset_graph().get_all_asset_keys()}
    assert "train_tree" in in_location  # either way: the UI can materialise it
    jobs = [job for job, _ in _stages(definitions)]
    if asked:
        assert jobs[-4:] == [JOB_NAMES["manifest"], "publish_tfrecords", JOB_NAMES["train_tree"], PUBLISH]
        assert CHECK in _audited(definitions)
    else:
        assert JOB_NAMES["train_tree"] not in jobs and jobs[-2:] == [
            JOB_NAMES["manifest"],
            "publish_tfrecords",
        ]
        assert CHECK not in _audited(
            definitions
        ) and "validation_tree:matches_validation_label_file" in _audited(definitions)


def test_its_job_writes_the_tree_and_its_check_passes_then_a_rerun_writes_what_is_missing(
    built_sample_graph, tmp_path
):
    reference = built_sample_graph[0]
    settings = make_settings(tmp_path / "data", None, source="sample", sample_dir=reference.sample_dir)
    settings.index_dir.mkdir(parents=True)
    shutil.copyfile(reference.synsets_csv, settings.synsets_csv)
    shutil.copyfile(reference.image_index("train"), settings.image_index("train"))
    images = len(archives.read_index(settings.image_index("train")))
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        first = run_job(settings, instance, JOB_NAMES["train_tree"])
        assert first.success and materialized(first) == {"train_tree"}
        assert evaluations(first)[CHECK].passed
        metadata = first.asset_materializations_for_node("train_tree")[0].metadata
        assert metadata["written"].value == metadata["images"].value == images
        assert not settings.train_dir.exists()  # written and checked, not yet what readers see
        published = run_job(settings, instance, PUBLISH)
        assert published.success and evaluations(published)[LISTED].passed
        assert settings.train_dir.is_symlink()
        shutil.rmtree(settings.train_dir / min(p.name for p in settings.train_dir.iterdir() if p.is_dir()))
        assert not versions.published_verdict(settings, "train_tree").passed  # what the audit would say
        again = run_job(settings, instance, JOB_NAMES["train_tree"])
        assert again.success and evaluations(again)[CHECK].passed
        metadata = again.asset_materializations_for_node("train_tree")[0].metadata
        assert 0 < metadata["written"].value < images
        assert metadata["already_in_place"].value == images - metadata["written"].value
