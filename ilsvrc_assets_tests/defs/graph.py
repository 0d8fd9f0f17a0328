"""Running the graph in tests: the same stages as ``ilsvrc-assets build``."""

from __future__ import annotations

from dagster import AssetKey, DagsterInstance

from ilsvrc_assets.cli import run_stages
from ilsvrc_assets.definitions import build_definitions
from ilsvrc_assets.settings import Settings

ALL_CHECKS = {
    "train_archive:checksum",
    "validation_archive:checksum",
    "devkit_archive:checksum",
    "train_boxes_archive:checksum",
    "validation_boxes_archive:checksum",
    "synsets:one_thousand_synsets",
    "validation_labels:agrees_with_shipped_labels",
    "train_images:every_synset_has_training_images",
    "validation_images:fifty_per_synset",
    "validation_tree:matches_validation_label_file",
    "bounding_boxes:boxes_are_valid",
    "dataset_manifest:every_shard_present",
    "dataset_manifest:record_totals",
    "dataset_manifest:every_label_in_each_split",
    "dataset_manifest:records_parse",
    "dataset_manifest:images_decode",
}


def build_all(settings: Settings, instance: DagsterInstance):
    """All stages; returns (results, failed)."""
    return run_stages(build_definitions(settings), instance, log_level="WARNING", echo=lambda _m: None)


def run_job(
    settings: Settings, instance: DagsterInstance, job: str, assets: list[str] | None = None, tags=None
):
    """One job of the code location (optionally a subset of its assets), not raising on failure."""
    definitions = build_definitions(settings)
    selection = [AssetKey(a) for a in assets] if assets else None
    return definitions.resolve_job_def(job).execute_in_process(
        instance=instance, raise_on_error=False, asset_selection=selection, tags=tags or {}
    )


def evaluations(*results) -> dict[str, object]:
    """Check name -> evaluation, over several run results."""
    found = {}
    for result in results:
        for e in result.get_asset_check_evaluations():
            found[f"{e.asset_key.to_user_string()}:{e.check_name}"] = e
    return found


def materialized(result) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
