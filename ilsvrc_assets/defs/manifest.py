"""``dataset_manifest``: every shard read back and summarised, and the checks on the whole dataset.

The five checks run as one step (:func:`dataset_checks`) that looks at the shards as they are on
disk when it runs, not at what an earlier run wrote into ``manifest.json``: every shard is hashed
and compared with the size and MD5 recorded when its partition was materialised, and a shard whose
bytes are not the ones the manifest read is read back again. So ``audit_outputs``, which runs the
checks without materialising anything, notices a shard deleted, truncated or altered since. The
checks are blocking: a failure fails the run, which is what makes the audit loud.
"""

from collections.abc import Iterator

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    asset,
    multi_asset_check,
)

from ilsvrc_assets import archives, manifest, release, shard_plan
from ilsvrc_assets.defs.archives import archive_asset_name
from ilsvrc_assets.defs.metadata import check_result
from ilsvrc_assets.defs.resources import IlsvrcResource
from ilsvrc_assets.progress import reporter
from ilsvrc_assets.record_workers import RecordWorkers
from ilsvrc_assets.settings import Settings

MANIFEST = "dataset_manifest"


def _shard_names(settings: Settings) -> dict[str, list[str]]:
    return {split: settings.shard_names(split) for split in release.SPLITS}


def _expected_images(settings: Settings) -> dict[str, int]:
    return {split: len(archives.read_index(settings.image_index(split))) for split in release.SPLITS}


@asset(
    name=MANIFEST,
    group_name="tfrecords",
    deps=["train_shards", "validation_shards"],
    kinds={"json"},
    description="`<data>/tfrecords/manifest.json`: every shard read back with TensorFlow (record "
    "count, bytes, MD5, labels, records that do not parse with the model zoo's feature spec, "
    "images that do not decode as JPEG). The checks on this asset judge the whole dataset.",
)
def dataset_manifest(
    context: AssetExecutionContext, ilsvrc: IlsvrcResource, record_workers: ResourceParam[RecordWorkers]
) -> MaterializeResult:
    settings = ilsvrc.settings()

    progress = reporter("manifest: read back", "shards", context.log.info)
    result = manifest.build(
        settings.tfrecords_dir,
        _shard_names(settings),
        _expected_images(settings),
        workers=record_workers,
        previous=manifest.read(settings.manifest_json),
        progress=progress,
    )
    manifest.write(result, settings.manifest_json)
    splits = result["splits"]
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(settings.manifest_json)),
            **{f"{split}_records": MetadataValue.int(info["records"]) for split, info in splits.items()},
            **{f"{split}_shards": MetadataValue.int(info["num_shards"]) for split, info in splits.items()},
            "bytes": MetadataValue.int(sum(info["bytes"] for info in splits.values())),
        }
    )


def written_shards(instance: DagsterInstance, settings: Settings) -> dict[str, manifest.Written]:
    """Size and MD5 of each shard as recorded by the latest materialisation of its partition.

    Shards without such a record in the instance (e.g. a new ``DAGSTER_HOME``) fall back to the
    shard ledger under ``<data>/.state/shards``, which the same step writes.
    """
    written: dict[str, manifest.Written] = {}
    for split, names in _shard_names(settings).items():
        key = AssetKey(f"{split}_shards")
        latest = instance.event_log_storage.get_latest_storage_id_by_partition(
            key, DagsterEventType.ASSET_MATERIALIZATION, partitions=set(names)
        )
        ids = sorted(latest.values())
        for start in range(0, len(ids), 500):  # a bounded number of ids per query
            chunk = ids[start : start + 500]
            found = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=key, storage_ids=chunk), limit=len(chunk)
            )
            for record in found.records:
                materialization = record.asset_materialization
                if materialization is None or materialization.partition is None:
                    continue
                metadata = materialization.metadata
                if "bytes" in metadata and "md5" in metadata:
                    written[materialization.partition] = manifest.Written(
                        bytes=int(metadata["bytes"].value), md5=str(metadata["md5"].value)
                    )
        ledger = shard_plan.ShardLedger(settings.state_dir / "shards")
        for name in names:
            if name not in written and (entry := ledger.get(name)) is not None:
                written[name] = manifest.Written(bytes=entry["bytes"], md5=entry["md5"])
    return written


def _is_official(instance: DagsterInstance, archive: release.Archive) -> bool:
    """Whether the archive was the official one when last fetched (its materialisation says so).

    Read from the history rather than by locating the archive: an audit must not download it.
    """
    event = instance.get_latest_materialization_event(AssetKey(archive_asset_name(archive)))
    if event is None or event.asset_materialization is None:
        return False
    official = event.asset_materialization.metadata.get("official")
    return bool(official.value) if official is not None else False


def _built_in_this_run(context: AssetCheckExecutionContext) -> bool:
    latest = context.instance.get_latest_materialization_event(AssetKey(MANIFEST))
    return latest is not None and latest.run_id == context.run.run_id


CHECKS = {
    "every_shard_present": "Every shard of both splits is on disk with the size and MD5 recorded when its "
    "partition was materialised (hashed again whenever the checks run on their own).",
    "record_totals": "Record totals equal the images in the archives (and, for the official release, "
    "1,281,167 training and 50,000 validation records).",
    "every_label_in_each_split": "Every label 1..1000 has records in each split.",
    "records_parse": "Every record parses with tf.io.parse_single_example and the model zoo's feature "
    "spec, with exactly the 15 features.",
    "images_decode": "Every image/encoded decodes as a JPEG.",
}


@multi_asset_check(
    specs=[AssetCheckSpec(name, asset=MANIFEST, blocking=True, description=d) for name, d in CHECKS.items()],
    can_subset=True,
    description="The checks on the whole dataset, judged on the shards as they are on disk now.",
)
def dataset_checks(
    context: AssetCheckExecutionContext, ilsvrc: IlsvrcResource, record_workers: ResourceParam[RecordWorkers]
) -> Iterator[AssetCheckResult]:
    settings = ilsvrc.settings()
    names = _shard_names(settings)
    # Right after dataset_manifest was built in this run, its MD5s are fresh; on their own (the
    # audit), the checks hash every shard again.
    fresh = _built_in_this_run(context)

    progress = reporter("audit: read back", "changed shards", context.log.info)
    found = manifest.audit(
        settings.tfrecords_dir,
        names,
        _expected_images(settings),
        written_shards(context.instance, settings),
        workers=record_workers,
        previous=manifest.read(settings.manifest_json),
        hash_shards=not fresh,
        progress=progress,
    )
    if found.read_back:
        context.log.warning(
            f"{len(found.read_back)} shards differ from what manifest.json read and were read back "
            f"again: {', '.join(found.read_back[:10])}"
        )
    current = found.manifest
    selected = {key.name for key in context.selected_asset_check_keys}

    def result(name: str, problems: list[str], ok: str, **metadata) -> AssetCheckResult:
        return check_result(problems, ok, asset_key=AssetKey(MANIFEST), check_name=name, **metadata)

    if "every_shard_present" in selected:
        total = sum(map(len, names.values()))
        yield result(
            "every_shard_present",
            found.shard_problems,
            f"all {total} shards present, as written",
            shards=total,
            hashed=found.hashed,
            read_back=len(found.read_back),
        )
    if "record_totals" in selected:
        official = {
            split: _is_official(context.instance, archive)
            for split, archive in (("train", release.IMG_TRAIN), ("validation", release.IMG_VAL))
        }
        totals = {split: info["records"] for split, info in current["splits"].items()}
        yield result(
            "record_totals",
            manifest.total_problems(current, official),
            ", ".join(f"{s}: {n:,} records" for s, n in totals.items()),
            **totals,
        )
    if "every_label_in_each_split" in selected:
        yield result(
            "every_label_in_each_split",
            manifest.label_problems(current),
            "labels 1..1000 present in both splits",
        )
    if "records_parse" in selected:
        yield result("records_parse", manifest.record_problems(current, "parse"), "every record parses")
    if "images_decode" in selected:
        yield result(
            "images_decode", manifest.record_problems(current, "decode"), "every image decodes as JPEG"
        )
