"""The code location: every asset, check, job and resource of ilsvrc_assets, in one place.

``dagster dev`` (via workspace.yaml or ``-m ilsvrc_assets.definitions``) loads ``defs``; tests and
the CLI call :func:`build_definitions` with their own settings.
"""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job

from ilsvrc_assets import settings as settings_module
from ilsvrc_assets.defs import kubernetes
from ilsvrc_assets.defs.archives import (
    ARCHIVE_ASSETS,
    devkit_archive,
    train_archive,
    train_boxes_archive,
    validation_archive,
    validation_boxes_archive,
)
from ilsvrc_assets.defs.bounding_boxes import bounding_boxes, boxes_are_valid
from ilsvrc_assets.defs.image_index import (
    every_synset_has_training_images,
    fifty_per_synset,
    train_images,
    validation_images,
)
from ilsvrc_assets.defs.manifest import (
    WEBDATASET,
    dataset_checks,
    dataset_manifest,
    webdataset_checks,
    webdataset_manifest,
)
from ilsvrc_assets.defs.outputs import FORMAT_ASSETS, unbuilt_assets
from ilsvrc_assets.defs.record_workers import record_workers_resource
from ilsvrc_assets.defs.resources import resources_for
from ilsvrc_assets.defs.schedules import audit_schedule, refresh_sensor
from ilsvrc_assets.defs.shards import shards_asset
from ilsvrc_assets.defs.synsets import agrees_with_shipped_labels, one_thousand_synsets, synsets, validation_labels
from ilsvrc_assets.defs.validation_tree import matches_validation_label_file, validation_tree
from ilsvrc_assets.record_workers import RecordWorkers
from ilsvrc_assets.settings import Settings

# Every check, by name; the archives' ``checksum`` checks are part of their assets.
ASSET_CHECKS = [
    one_thousand_synsets,
    agrees_with_shipped_labels,
    every_synset_has_training_images,
    fifty_per_synset,
    matches_validation_label_file,
    boxes_are_valid,
    dataset_checks,  # every_shard_present, record_totals, every_label_in_each_split, records_parse, images_decode
    webdataset_checks,  # the same five on the WebDataset tars
]

# Everything upstream of the shards: unpartitioned, one run.
INPUTS = AssetSelection.groups("archives", "classes", "images", "validation", "boxes")
JOB_NAMES = {
    "inputs": "prepare_inputs",
    "train": "write_train_shards",
    "validation": "write_validation_shards",
    "manifest": "check_dataset",
    "audit": "audit_outputs",
}
# The job of each asset of an output format (outputs.FORMAT_ASSETS); an asset not named here gets
# `materialise_<asset>`. A partitioned asset's job runs a partition range as one run.
ASSET_JOBS = {
    "train_shards": JOB_NAMES["train"],
    "validation_shards": JOB_NAMES["validation"],
    "dataset_manifest": JOB_NAMES["manifest"],
    "train_webdataset": "write_train_webdataset",
    "validation_webdataset": "write_validation_webdataset",
    "webdataset_manifest": "check_webdataset",
}


def job_for(asset: str) -> str:
    """The name of the job that materialises the format asset ``asset``."""
    return ASSET_JOBS.get(asset, f"materialise_{asset}")


def audit_selection(settings: Settings) -> AssetSelection:
    """The checks that judge outputs already on disk, of the formats built (``ILSVRC_FORMATS``); they can
    run on their own, without rebuilding. (The archive checksums are evaluated while fetching and
    need no separate run.)"""
    return AssetSelection.all_asset_checks() - AssetSelection.checks_for_assets(
        *(archive.key for archive in ARCHIVE_ASSETS.values()), *unbuilt_assets(settings)
    )


def build_definitions(
    settings: Settings | None = None, record_workers: RecordWorkers | None = None
) -> Definitions:
    """The code location for ``settings`` (default: from the environment).

    ``record_workers``: a pool the caller holds open for all its runs (the CLI's build); by default
    each step that needs workers starts its own.
    """
    settings = settings or settings_module.load()
    # Partitioned by the settings' shard counts, so made here rather than at import.
    train_shards = shards_asset(settings, "train_shards", "train")
    validation_shards = shards_asset(settings, "validation_shards", "validation")
    train_webdataset = shards_asset(settings, "train_webdataset", "train", WEBDATASET)
    validation_webdataset = shards_asset(settings, "validation_webdataset", "validation", WEBDATASET)
    partitioned = [train_shards, validation_shards, train_webdataset, validation_webdataset]
    return Definitions(
        assets=[
            train_archive,
            validation_archive,
            devkit_archive,
            train_boxes_archive,
            validation_boxes_archive,
            synsets,
            validation_labels,
            train_images,
            validation_images,
            validation_tree,
            bounding_boxes,
            train_shards,
            validation_shards,
            dataset_manifest,
            train_webdataset,
            validation_webdataset,
            webdataset_manifest,
        ],
        asset_checks=ASSET_CHECKS,
        jobs=[
            define_asset_job(
                JOB_NAMES["inputs"],
                selection=INPUTS,
                description="Archives, synsets, image indexes, validation tree and bounding boxes.",
            ),
            *(
                define_asset_job(
                    job_for(asset_def.key.to_user_string()),
                    selection=AssetSelection.assets(asset_def),
                    partitions_def=asset_def.partitions_def,
                    description=f"`{asset_def.key.to_user_string()}` (a partition range runs as one run).",
                    # Pod size under the K8sRunLauncher (deploy/k8s); ignored by other launchers.
                    tags=kubernetes.run_tags(settings),
                )
                for asset_def in partitioned
            ),
            *(
                define_asset_job(
                    job_for(name),
                    selection=AssetSelection.assets(name),
                    description=f"`{name}`, with its checks.",
                    tags=kubernetes.run_tags(settings),
                )
                for assets in FORMAT_ASSETS.values()
                for name in assets
                if name not in {a.key.to_user_string() for a in partitioned}
            ),
            define_asset_job(
                JOB_NAMES["audit"],
                selection=audit_selection(settings),
                description="Run the checks again against what is already built; materialises nothing.",
            ),
        ],
        schedules=[audit_schedule(settings, JOB_NAMES["audit"])],
        sensors=[refresh_sensor(settings)],
        resources={**resources_for(settings), "record_workers": record_workers_resource(record_workers)},
    )


defs = build_definitions()
