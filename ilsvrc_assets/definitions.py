"""The code location: every asset, check, job and resource of ilsvrc_assets, in one place.

``dagster dev`` (via workspace.yaml or ``-m ilsvrc_assets.definitions``) loads ``defs``; tests and
the CLI call :func:`build_definitions` with their own settings.

When the UI or the daemon launches ``prepare_inputs``, the steps that do not depend on one another
(the five archives' MD5s; the training index beside the validation index and tree; the box table
beside the validation tree) run at the same time, each in a process of its own
(:func:`inputs_executor`). ``ilsvrc-assets build`` runs it in its own process, in order, unless
``cli.OWN_EXECUTOR_JOBS`` names it (then through :func:`job_for_settings`).
"""

from __future__ import annotations

import json

from dagster import (
    AssetsDefinition,
    AssetSelection,
    Definitions,
    ExecutorDefinition,
    JobDefinition,
    define_asset_job,
    multiprocess_executor,
)

from ilsvrc_assets import settings as settings_module
from ilsvrc_assets.defs import kubernetes
from ilsvrc_assets.defs.archives import ARCHIVE_ASSETS, input_assets
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
from ilsvrc_assets.defs.published import PUBLISHED, PUBLISHED_CHECKS
from ilsvrc_assets.defs.record_workers import record_workers_resource
from ilsvrc_assets.defs.resources import resources_for
from ilsvrc_assets.defs.schedules import audit_schedule, refresh_sensor
from ilsvrc_assets.defs.shards import shards_asset
from ilsvrc_assets.defs.synsets import (
    agrees_with_shipped_labels,
    one_thousand_synsets,
    synsets,
    validation_labels,
)
from ilsvrc_assets.defs.train_tree import matches_train_index, train_tree
from ilsvrc_assets.defs.validation_tree import matches_validation_label_file, validation_tree
from ilsvrc_assets.record_workers import RecordWorkers
from ilsvrc_assets.settings import Settings
from ilsvrc_assets.sources import BOXES, DEVKIT, TRAIN, VALIDATION, ImageSource, from_settings
from ilsvrc_assets.sources.official import INPUTS as OFFICIAL_INPUTS

# Every check, by name; the archives' ``checksum`` checks are part of their assets.
ASSET_CHECKS = [
    one_thousand_synsets,
    agrees_with_shipped_labels,
    every_synset_has_training_images,
    fifty_per_synset,
    matches_validation_label_file,
    matches_train_index,
    boxes_are_valid,
    # every_shard_present, record_totals, every_label_in_each_split, records_parse, images_decode,
    # every_index_matches_its_shard
    dataset_checks,
    webdataset_checks,  # the same but every_index_matches_its_shard, on the WebDataset tars (no DALI index)
    *PUBLISHED_CHECKS,  # matches_its_listing: what readers see is the published version, complete
]

# Everything upstream of the shards, and the validation tree's publication: unpartitioned, one run.
INPUTS = AssetSelection.groups("archives", "classes", "images", "validation", "boxes")
JOB_NAMES = {
    "inputs": "prepare_inputs",
    "train": "write_train_shards",
    "validation": "write_validation_shards",
    "manifest": "check_dataset",
    "audit": "audit_outputs",
    "train_tree": "write_train_tree",
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
    "train_tree": JOB_NAMES["train_tree"],
    "published_tfrecords": "publish_tfrecords",
    "published_webdataset": "publish_webdataset",
    "published_train_tree": "publish_train_tree",
}


JOB_DESCRIPTIONS = {
    "train_tree": "The training ImageFolder tree, <data>/train/<wnid>/ (ILSVRC_FORMATS=...,imagefolder; "
    "about 140 GB).",
}


# What each step process of prepare_inputs starts from: forked from a server that imported these once,
# a step starts in a few milliseconds instead of the seconds a fresh interpreter takes to import
# Dagster, pandas and the stages (about 2 s of CPU here; ~19 steps).
PRELOADED_MODULES = ("ilsvrc_assets.definitions",)


def inputs_executor(settings: Settings) -> ExecutorDefinition:
    """The executor of ``prepare_inputs``: Dagster's multiprocess executor, each step in a process of
    its own, at most ``ILSVRC_WORKERS`` (``settings.workers``) of them at once (Dagster's default
    would be one per core, each started as a new interpreter), so that independent steps overlap
    without more step processes than the cores the deployment gave the build. A step's own helpers
    (the box table's XML parsers, the validation tree's writing threads) come on top; they are
    sized by the same setting and mostly wait on I/O or on the step's reader.

    ``execute_in_process`` ignores it: the CLI's build and the tests that run the job so run its
    steps in order, in their own process.
    """
    return multiprocess_executor.configured(
        {
            "max_concurrent": max(1, settings.workers),
            "start_method": {"forkserver": {"preload_modules": list(PRELOADED_MODULES)}},
        },
        name="inputs_multiprocess",
        description=f"Each step in a process of its own, at most {max(1, settings.workers)} at once "
        "(ILSVRC_WORKERS), forked from a server with the code location already imported.",
    )


def job_for_settings(job_name: str, settings_json: str) -> JobDefinition:
    """The job ``job_name`` of the code location for the settings ``settings_json`` (``settings.to_config``
    as JSON): how a step process of a run started outside the UI with the job's own executor
    (``cli.run_job``) rebuilds the job it runs a step of (``dagster.build_reconstructable_job``), with
    the settings of the run that started it rather than those of its environment."""
    settings = settings_module.from_config(json.loads(settings_json))
    return build_definitions(settings).resolve_job_def(job_name)


def job_for(asset: str) -> str:
    """The name of the job that materialises the format asset ``asset``."""
    return ASSET_JOBS.get(asset, f"materialise_{asset}")


def left_out(settings: Settings) -> tuple[str, ...]:
    """The assets of the output formats this deployment does not build, audit or refresh: those of the
    formats ``ILSVRC_FORMATS`` leaves out (``outputs.FORMAT_ASSETS``; e.g. ``train_tree`` unless it
    lists ``imagefolder``). They stay in the code location: the UI or their job can materialise them."""
    return tuple(unbuilt_assets(settings))


# The stages' assets name the official archives as their deps; the role each one stands for.
_OFFICIAL_ROLES = {item.asset: next(iter(item.feeds)) for item in OFFICIAL_INPUTS}
assert set(_OFFICIAL_ROLES.values()) == {DEVKIT, TRAIN, VALIDATION, BOXES}


def with_source_inputs(asset_def: AssetsDefinition, source: ImageSource) -> AssetsDefinition:
    """``asset_def`` depending on the source's inputs instead of the official archives: each
    official archive among its deps becomes the inputs that feed the same role (unchanged for
    the official sources)."""
    if source.inputs() == OFFICIAL_INPUTS:
        return asset_def

    def rewired(spec):
        deps: list[str] = []
        for dep in spec.deps:
            name = dep.asset_key.to_user_string()
            role = _OFFICIAL_ROLES.get(name)
            names = [i.asset for i in source.inputs_for(role)] if role else [name]
            deps += [n for n in names if n not in deps]
        return spec.replace_attributes(deps=deps)

    return asset_def.map_asset_specs(rewired)


def audit_selection(source: ImageSource, leave_out: tuple[str, ...] = ()) -> AssetSelection:
    """The checks that judge outputs already on disk: every check but the inputs' checksums (evaluated
    while fetching) and those of the assets ``leave_out`` (``left_out``: the formats not built)."""
    return AssetSelection.all_asset_checks() - AssetSelection.checks_for_assets(
        *(item.asset for item in source.inputs()), *leave_out
    )


def build_definitions(
    settings: Settings | None = None, record_workers: RecordWorkers | None = None
) -> Definitions:
    """The code location for ``settings`` (default: from the environment).

    ``record_workers``: a pool the caller holds open for all its runs (the CLI's build); by default
    each step that needs workers starts its own.
    """
    settings = settings or settings_module.load()
    leave_out = left_out(settings)
    # The source's input assets (the five archives for the official release), and the stages'
    # dependencies on them.
    source = from_settings(settings)
    official = source.inputs() == OFFICIAL_INPUTS
    inputs = list(ARCHIVE_ASSETS.values()) if official else input_assets(source.inputs())
    stages = [
        with_source_inputs(stage, source)
        for stage in (synsets, validation_labels, train_images, validation_images, validation_tree)
    ] + [with_source_inputs(bounding_boxes, source), with_source_inputs(train_tree, source)]
    # Partitioned by the settings' shard counts, so made here rather than at import.
    train_shards = shards_asset(settings, "train_shards", "train")
    validation_shards = shards_asset(settings, "validation_shards", "validation")
    train_webdataset = shards_asset(settings, "train_webdataset", "train", WEBDATASET)
    validation_webdataset = shards_asset(settings, "validation_webdataset", "validation", WEBDATASET)
    partitioned = [train_shards, validation_shards, train_webdataset, validation_webdataset]
    return Definitions(
        assets=[
            *inputs,
            *stages,
            train_shards,
            validation_shards,
            dataset_manifest,
            train_webdataset,
            validation_webdataset,
            webdataset_manifest,
            *PUBLISHED.values(),
        ],
        asset_checks=ASSET_CHECKS,
        jobs=[
            define_asset_job(
                JOB_NAMES["inputs"],
                selection=INPUTS,
                description="Archives, synsets, image indexes, validation tree and bounding boxes; "
                "the steps that do not depend on one another at the same time.",
                executor_def=inputs_executor(settings),
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
                    description=JOB_DESCRIPTIONS.get(name, f"`{name}`, with its checks."),
                    tags=kubernetes.run_tags(settings),
                )
                for assets in FORMAT_ASSETS.values()
                for name in assets
                if name not in {a.key.to_user_string() for a in partitioned}
            ),
            define_asset_job(
                JOB_NAMES["audit"],
                selection=audit_selection(source, leave_out),
                description="Run the checks again against what is already built; materialises nothing.",
            ),
        ],
        schedules=[audit_schedule(settings, JOB_NAMES["audit"])],
        sensors=[refresh_sensor(settings, leave_out)],
        resources={**resources_for(settings), "record_workers": record_workers_resource(record_workers)},
    )


defs = build_definitions()
