"""The code location: every asset, check, job and resource of ilsvrc_assets, in one place.

``dagster dev`` (via workspace.yaml or ``-m ilsvrc_assets.definitions``) loads ``defs``; tests and
the CLI call :func:`build_definitions` with their own settings.
"""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job, load_asset_checks_from_modules

from ilsvrc_assets import settings as settings_module
from ilsvrc_assets.defs import bounding_boxes, image_index, kubernetes, manifest, synsets, validation_tree
from ilsvrc_assets.defs.archives import archive_assets
from ilsvrc_assets.defs.record_workers import record_workers_resource
from ilsvrc_assets.defs.resources import resources_for
from ilsvrc_assets.defs.schedules import audit_schedule, refresh_sensor
from ilsvrc_assets.defs.shards import shards_asset
from ilsvrc_assets.record_workers import RecordWorkers
from ilsvrc_assets.settings import Settings

CHECK_MODULES = (synsets, image_index, validation_tree, bounding_boxes, manifest)

# Everything upstream of the shards: unpartitioned, one run.
INPUTS = AssetSelection.groups("archives", "classes", "images", "validation", "boxes")
JOB_NAMES = {
    "inputs": "prepare_inputs",
    "train": "write_train_shards",
    "validation": "write_validation_shards",
    "manifest": "check_dataset",
    "audit": "audit_outputs",
}
# Checks that judge outputs already on disk; they can run on their own, without rebuilding.
# (The archive checksums are evaluated while fetching and need no separate run.)
AUDIT = AssetSelection.all_asset_checks() - AssetSelection.checks_for_assets(
    *(archive_asset.key for archive_asset in archive_assets)
)


def build_definitions(
    settings: Settings | None = None, record_workers: RecordWorkers | None = None
) -> Definitions:
    """The code location for ``settings`` (default: from the environment).

    ``record_workers``: a pool the caller holds open for all its runs (the CLI's build); by default
    each step that needs workers starts its own.
    """
    settings = settings or settings_module.load()
    shard_assets = {split: shards_asset(settings, split) for split in ("train", "validation")}
    return Definitions(
        assets=[
            *archive_assets,
            synsets.synsets_asset,
            synsets.validation_labels,
            image_index.train_images,
            image_index.validation_images,
            validation_tree.validation_tree,
            bounding_boxes.bounding_boxes,
            *shard_assets.values(),
            manifest.dataset_manifest,
        ],
        asset_checks=load_asset_checks_from_modules(list(CHECK_MODULES)),
        jobs=[
            define_asset_job(
                JOB_NAMES["inputs"],
                selection=INPUTS,
                description="Archives, synsets, image indexes, validation tree and bounding boxes.",
            ),
            *(
                define_asset_job(
                    JOB_NAMES[split],
                    selection=AssetSelection.assets(asset_def),
                    partitions_def=asset_def.partitions_def,
                    description=f"The {split} TFRecord shards (a partition range runs as one run).",
                    # Pod size under the K8sRunLauncher (deploy/k8s); ignored by other launchers.
                    tags=kubernetes.run_tags(settings),
                )
                for split, asset_def in shard_assets.items()
            ),
            define_asset_job(
                JOB_NAMES["manifest"],
                selection=AssetSelection.assets("dataset_manifest"),
                description="Read every shard back and run the dataset checks.",
                tags=kubernetes.run_tags(settings),
            ),
            define_asset_job(
                JOB_NAMES["audit"],
                selection=AUDIT,
                description="Run the checks again against what is already built; materialises nothing.",
            ),
        ],
        schedules=[audit_schedule(settings, JOB_NAMES["audit"])],
        sensors=[refresh_sensor(settings)],
        resources={**resources_for(settings), "record_workers": record_workers_resource(record_workers)},
    )


defs = build_definitions()
