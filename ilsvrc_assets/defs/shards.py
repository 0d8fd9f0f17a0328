"""``train_shards`` and ``validation_shards``: the model zoo's TFRecord shards, one partition each;
likewise ``train_webdataset`` and ``validation_webdataset``, the WebDataset tars (any record format).

A run for a range of partitions (a backfill, or ``ilsvrc-assets build``) is one Dagster run and
one step that writes its shards with a pool of worker processes, rather than one process start-up
per shard. A backfill is one such run, or runs of ``ILSVRC_PARTITIONS_PER_RUN`` shards when set.
"""

import time

from dagster import (
    AssetCheckKey,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    Failure,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    StaticPartitionsDefinition,
    asset,
)

from ilsvrc_assets import formats, shards, versions
from ilsvrc_assets.defs.metadata import metadata, preview_metadata
from ilsvrc_assets.defs.resources import IlsvrcResource
from ilsvrc_assets.record_workers import RecordWorkers
from ilsvrc_assets.settings import Settings
from ilsvrc_assets.shard_plan import ShardStats
from ilsvrc_assets.sources import TRAIN, VALIDATION, ImageSource

# Blocking checks upstream of each split's shards. Dagster skips downstream steps of a failed
# blocking check within one run; the shards run in their own run (a partition range), so they
# also refuse to start while the latest evaluation of any of these is not a pass (a warning, such
# as "no boxes in this source", does not block).
_COMMON_CHECKS = [
    AssetCheckKey(AssetKey("synsets"), "one_thousand_synsets"),
    AssetCheckKey(AssetKey("bounding_boxes"), "boxes_are_valid"),
]
_INDEX_CHECKS = {
    "train": AssetCheckKey(AssetKey("train_images"), "every_synset_has_training_images"),
    "validation": AssetCheckKey(AssetKey("validation_images"), "fifty_per_synset"),
}


def upstream_checks(source: ImageSource, split: str) -> list[AssetCheckKey]:
    """The blocking checks upstream of ``split``'s shards: the checksums of the source's inputs
    that feed the split (the train or validation archive, for the official release), the index's
    check and the common ones."""
    inputs = source.inputs_for(TRAIN if split == "train" else VALIDATION)
    return [
        *(AssetCheckKey(AssetKey(item.asset), "checksum") for item in inputs),
        _INDEX_CHECKS[split],
        *_COMMON_CHECKS,
    ]


# How long a run waits for upstream checks that another run in progress is evaluating (a backfill
# launches a run once its parents are materialised, which can be before their checks have run).
CHECK_WAIT_SECONDS = 1800


def latest_check_executions(context: AssetExecutionContext, keys: list[AssetCheckKey]) -> dict:
    """The latest execution of each check of ``keys``, once none is still being evaluated by another
    run in progress (waited for up to :data:`CHECK_WAIT_SECONDS`)."""
    from ilsvrc_assets.defs.dagster_internals import AssetCheckExecutionRecordStatus

    deadline = time.monotonic() + CHECK_WAIT_SECONDS
    while True:
        latest = context.instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
        pending = sorted(
            f"{key.asset_key.to_user_string()}:{key.name}"
            for key, record in latest.items()
            if record.status == AssetCheckExecutionRecordStatus.PLANNED
            and record.run_id != context.run_id
            and (run := context.instance.get_run_by_id(record.run_id)) is not None
            and not run.is_finished
        )
        if not pending or time.monotonic() > deadline:
            return latest
        context.log.info(f"waiting for {', '.join(pending)}, being evaluated by another run")
        time.sleep(2)


def require_upstream_checks_passed(context: AssetExecutionContext, keys: list[AssetCheckKey]) -> dict:
    """Raise a Failure naming every upstream blocking check whose latest evaluation did not pass
    (a warning, e.g. "no boxes in this source", blocks nothing); one another run is evaluating now is
    waited for. Returns the latest executions judged (:func:`latest_check_executions`)."""
    from ilsvrc_assets.defs.dagster_internals import AssetCheckExecutionRecordStatus

    latest = latest_check_executions(context, keys)
    blocked = []
    for key in keys:
        record = latest.get(key)
        name = f"{key.asset_key.to_user_string()}:{key.name}"
        if record is None:
            blocked.append(f"{name} has not been evaluated (materialise the upstream assets first)")
        elif record.status != AssetCheckExecutionRecordStatus.SUCCEEDED:
            evaluation = (
                record.event.dagster_event.event_specific_data
                if record.event and record.event.dagster_event
                else None
            )
            if getattr(getattr(evaluation, "severity", None), "value", None) == "WARN":
                continue  # a warning (e.g. no boxes in this source) blocks nothing
            detail = getattr(evaluation, "description", None) or record.status.value.lower()
            blocked.append(f"{name}: {detail}")
    if blocked:
        raise Failure(
            description="Blocked by upstream checks: "
            + "; ".join(blocked)
            + ". Fix the input and materialise again."
        )
    return latest


def shard_partitions(
    settings: Settings, split: str, record_format: str = "tfrecord"
) -> StaticPartitionsDefinition:
    return StaticPartitionsDefinition(settings.shard_names(split, record_format))


# What each format's shard assets are, for the UI ({split} filled in).
DESCRIPTIONS = {
    "tfrecord": "The {split} TFRecord shards `<data>/tfrecords/{split}-NNNNN-of-MMMMM` in the "
    "TF/TPU model zoo's format (15 features, 1-based labels, boxes from the bounding-box "
    "table, PNG/CMYK re-encoded as RGB JPEG). Images are shuffled across shards with a fixed "
    "seed, so the assignment is deterministic. Read straight out of the archive, never extracted. "
    "Each shard's NVIDIA DALI index is written with it, `<data>/tfrecords-index/<shard>.idx`.",
    "webdataset": "The {split} WebDataset tars `<data>/webdataset/imagenet1k-{split}-NNNN.tar` for PyTorch "
    "(webdataset, timm, open_clip): one sample per image, `__key__` the official stem, `jpg` the "
    "TFRecord's JPEG bytes, `cls` the 0-based label, `json` wnid, text, 1-based label, size and "
    "boxes. The same shuffle as the TFRecords, cut into this asset's own number of shards; member "
    "headers fixed, so the tars are reproducible byte for byte.",
}


def shards_asset(
    settings: Settings, name: str, split: str, record_format: formats.RecordFormat | None = None
) -> AssetsDefinition:
    """The partitioned shard asset ``name`` of ``split`` in ``record_format`` (default: TFRecord), with
    one partition per shard of ``settings``."""
    record_format = record_format or formats.by_name(formats.DEFAULT)

    @asset(
        name=name,
        group_name=record_format.folder,
        partitions_def=shard_partitions(settings, split, record_format.name),
        # A backfill runs the whole range in one run, or in batches of ILSVRC_PARTITIONS_PER_RUN.
        backfill_policy=(
            BackfillPolicy.multi_run(settings.partitions_per_run)
            if settings.partitions_per_run
            else BackfillPolicy.single_run()
        ),
        deps=[f"{split}_images", "bounding_boxes", "synsets"],
        kinds={record_format.name},
        description=DESCRIPTIONS[record_format.name].format(split=split),
    )
    def _shards(
        context: AssetExecutionContext, ilsvrc: IlsvrcResource, record_workers: ResourceParam[RecordWorkers]
    ) -> MaterializeResult:
        require_upstream_checks_passed(context, upstream_checks(ilsvrc.image_source(), split))
        record_workers.start()  # they load TensorFlow while the shards are planned

        settings = ilsvrc.settings()

        def published(path) -> MetadataValue:  # where readers will find it (versions.where_published)
            return MetadataValue.path(str(versions.where_published(settings, path)))

        def record(stats: ShardStats, reused: bool) -> None:
            context.add_asset_metadata(
                {
                    "path": published(stats.path),
                    "records": MetadataValue.int(stats.records),
                    "bytes": MetadataValue.int(stats.bytes),
                    "md5": stats.md5,
                    "converted_to_rgb_jpeg": MetadataValue.json(list(stats.converted)),
                    "unchanged_since_earlier_run": reused,
                    # What the checks of its records found as they were written.
                    **(
                        {
                            "parse_errors": MetadataValue.int(stats.verified.parse_errors),
                            "decode_errors": MetadataValue.int(stats.verified.decode_errors),
                            "images_decoded": MetadataValue.int(stats.verified.decoded),
                            "images_compared_with_the_archive": MetadataValue.int(stats.verified.compared),
                        }
                        if stats.verified is not None
                        else {}
                    ),
                    # The files published with the shard (the DALI index): index_path, index_bytes, index_md5.
                    **{
                        f"{c.kind}_{key}": value
                        for c in stats.companions
                        for key, value in (
                            ("path", published(c.path)),
                            ("bytes", MetadataValue.int(c.bytes)),
                            ("md5", c.md5),
                        )
                    },
                },
                partition_key=stats.name,
            )

        made = shards.write_split_shards(
            ilsvrc.settings(),
            split,
            ilsvrc.image_source(),
            record_workers,
            wanted=list(context.partition_keys),
            on_shard=record,
            log=context.log.info,
            record_format=record_format,
        )
        # The pictures go on one partition's materialisation: metadata of the result itself would be
        # copied onto every partition's.
        context.add_asset_metadata(preview_metadata(made.previews), partition_key=context.partition_keys[-1])
        return MaterializeResult(metadata={"folder": published(made.path), **metadata(made.facts)})

    return _shards
