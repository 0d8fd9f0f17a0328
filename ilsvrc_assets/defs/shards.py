"""``train_shards`` and ``validation_shards``: the model zoo's TFRecord shards, one partition each.

A run for a range of partitions (a backfill, or ``ilsvrc-assets build``) is one Dagster run and
one step that writes its shards with a pool of worker processes, rather than one process start-up
per shard. A backfill is one such run, or runs of ``ILSVRC_PARTITIONS_PER_RUN`` shards when set.
"""

from dataclasses import replace

from dagster import (
    AssetCheckKey,
    AssetExecutionContext,
    AssetKey,
    Failure,
    AssetsDefinition,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    StaticPartitionsDefinition,
    asset,
)

from ilsvrc_assets import archives, bounding_boxes, fileio, release, shard_plan, shards, sources, synsets
from ilsvrc_assets.defs.resources import IlsvrcResource
from ilsvrc_assets.progress import Progress
from ilsvrc_assets.settings import Settings

SPLIT_ARCHIVES = {"train": release.IMG_TRAIN, "validation": release.IMG_VAL}

# Blocking checks upstream of each split's shards. Dagster skips downstream steps of a failed
# blocking check within one run; the shards run in their own run (a partition range), so they
# also refuse to start while the latest evaluation of any of these is not a pass.
UPSTREAM_CHECKS = {
    split: [
        AssetCheckKey(AssetKey(f"{split}_archive"), "checksum"),
        AssetCheckKey(AssetKey("synsets"), "one_thousand_synsets"),
        AssetCheckKey(AssetKey(f"{split}_images"), index_check),
        AssetCheckKey(AssetKey("bounding_boxes"), "boxes_are_valid"),
    ]
    for split, index_check in (
        ("train", "every_synset_has_training_images"),
        ("validation", "fifty_per_synset"),
    )
}


def require_upstream_checks_passed(context: AssetExecutionContext, keys: list[AssetCheckKey]) -> None:
    """Raise a Failure naming every upstream blocking check whose latest evaluation did not pass."""
    from ilsvrc_assets.defs.dagster_internals import AssetCheckExecutionRecordStatus

    latest = context.instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
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
            detail = getattr(evaluation, "description", None) or record.status.value.lower()
            blocked.append(f"{name}: {detail}")
    if blocked:
        raise Failure(
            description="Blocked by upstream checks: "
            + "; ".join(blocked)
            + ". Fix the input and materialise again."
        )


def shard_partitions(settings: Settings, split: str) -> StaticPartitionsDefinition:
    return StaticPartitionsDefinition(settings.shard_names(split))


def shards_asset(settings: Settings, split: str) -> AssetsDefinition:
    """The partitioned shard asset of one split, with one partition per shard of ``settings``."""
    archive = SPLIT_ARCHIVES[split]

    @asset(
        name=f"{split}_shards",
        group_name="tfrecords",
        partitions_def=shard_partitions(settings, split),
        # A backfill runs the whole range in one run, or in batches of ILSVRC_PARTITIONS_PER_RUN.
        backfill_policy=(
            BackfillPolicy.multi_run(settings.partitions_per_run)
            if settings.partitions_per_run
            else BackfillPolicy.single_run()
        ),
        deps=[f"{split}_images", "bounding_boxes", "synsets"],
        kinds={"tfrecord"},
        description=f"The {split} TFRecord shards `<data>/tfrecords/{split}-NNNNN-of-MMMMM` in the "
        "TF/TPU model zoo's format (15 features, 1-based labels, boxes from the bounding-box "
        "table, PNG/CMYK re-encoded as RGB JPEG). Images are shuffled across shards with a fixed "
        "seed, so the assignment is deterministic. Read straight out of the archive, never extracted.",
    )
    def _asset(context: AssetExecutionContext, ilsvrc: IlsvrcResource) -> MaterializeResult:
        require_upstream_checks_passed(context, UPSTREAM_CHECKS[split])
        settings = ilsvrc.settings()
        archive_path = ilsvrc.archive_source().locate(archive, context.log.info)
        wanted = list(context.partition_keys)
        if removed := fileio.remove_stale_temp_files(settings.tfrecords_dir):
            context.log.info(f"removed {removed} partial shard files left by an interrupted run")
        _, _, num_shards = release.parse_shard_name(wanted[0])
        table = bounding_boxes.read_table(settings.bounding_boxes_parquet)
        jobs = shard_plan.plan_split(
            split,
            archives.read_index(settings.image_index(split)),
            synsets.read_synsets(settings.synsets_csv),
            bounding_boxes.boxes_by_image(table[table["split"] == split]),
            archive_path,
            settings.tfrecords_dir,
            num_shards,
            wanted=wanted,
        )
        # Each shard is written under its own lock: runs of other shards of the split (other
        # batches, other machines) go ahead in parallel; a second run of the same shard is refused.
        jobs = {name: replace(job, lock=ilsvrc.lock_path(f"shards/{name}")) for name, job in jobs.items()}
        archive_version = ilsvrc.checksum_cache().get(archive_path) or sources.local_version(archive_path)
        ledger = shard_plan.ShardLedger(settings.state_dir / "shards")
        fingerprints = {name: shard_plan.fingerprint(job, archive_version) for name, job in jobs.items()}
        to_write = []
        reused = 0
        for name in wanted:
            stats = ledger.reusable(jobs[name], fingerprints[name])
            if stats is None:
                to_write.append(jobs[name])
            else:
                reused += 1
                _record(context, stats, reused=True)
        context.log.info(
            f"{split}: {len(to_write)} of {len(wanted)} shards to write "
            f"({reused} unchanged since an earlier run) with {settings.workers} workers"
        )
        progress = Progress(
            f"{split} shards", sum(len(job.records) for job in to_write), "images", context.log.info
        )
        written_records = [0]

        def on_done(stats: shards.ShardStats) -> None:
            ledger.record(stats, fingerprints[stats.name])
            _record(context, stats, reused=False)
            written_records[0] += stats.records
            progress.update(written_records[0])

        shards.write_shards(to_write, workers=settings.workers, on_done=on_done)
        return MaterializeResult(
            metadata={
                "shards_in_this_run": MetadataValue.int(len(wanted)),
                "shards_written": MetadataValue.int(len(to_write)),
                "shards_unchanged": MetadataValue.int(reused),
                "folder": MetadataValue.path(str(settings.tfrecords_dir)),
            }
        )

    return _asset


def _record(context: AssetExecutionContext, stats: shards.ShardStats, reused: bool) -> None:
    context.add_asset_metadata(
        {
            "path": MetadataValue.path(str(stats.path)),
            "records": MetadataValue.int(stats.records),
            "bytes": MetadataValue.int(stats.bytes),
            "md5": stats.md5,
            "converted_to_rgb_jpeg": MetadataValue.json(list(stats.converted)),
            "unchanged_since_earlier_run": reused,
        },
        partition_key=stats.name,
    )
