"""``dataset_manifest``: every shard summarised, and the checks on the whole dataset;
``webdataset_manifest`` likewise for the WebDataset tars (and their ``_info.json``).

A shard's summary is what its writer's checks found as it wrote it (every record parsed, each image
compared with the archive's bytes or decoded), kept in the shard ledger; no shard is read again
for the manifest unless it changed since it was written.

The six checks run as one step (:func:`dataset_checks`; :func:`webdataset_checks` runs the five
that apply to the WebDataset tars, which have no DALI index). In the build, right after the
manifest, they judge what the writers found and the shards' presence and sizes on disk, reading
nothing. On their own (``audit_outputs``, without materialising anything) they look at the shards
as they are on disk when they run: every shard is read back, hashed and compared with the size
and MD5 recorded when its partition was materialised, every record parsed, the fixed sample of
images decoded (all of them if the archives are not the official ones, or with
``ILSVRC_AUDIT_DECODE_ALL=1``), and each shard's DALI index compared with the records read. So the
audit notices a shard or an index deleted, truncated or altered since. The checks are blocking: a
failure fails the run, which is what makes the audit loud.
"""

from collections.abc import Iterator

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    AssetsDefinition,
    DagsterEventType,
    DagsterInstance,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    asset,
    multi_asset_check,
)

from ilsvrc_assets import formats, manifest, release, shard_plan, versions
from ilsvrc_assets.defs.archives import is_official
from ilsvrc_assets.defs.metadata import check_result, metadata
from ilsvrc_assets.defs.resources import IlsvrcResource
from ilsvrc_assets.record_workers import RecordWorkers
from ilsvrc_assets.settings import Settings
from ilsvrc_assets.shard_scan import ALL, SAMPLE
from ilsvrc_assets.sources import TRAIN, VALIDATION

MANIFEST = "dataset_manifest"
WEBDATASET_MANIFEST = "webdataset_manifest"
TFRECORD = formats.by_name("tfrecord")
WEBDATASET = formats.by_name("webdataset")


def manifest_asset(name: str, record_format: formats.RecordFormat, description: str) -> AssetsDefinition:
    """The manifest asset ``name`` of the shards of ``record_format`` (both splits read back)."""

    @asset(
        name=name,
        group_name=record_format.folder,
        deps=[f"{split}_{record_format.asset_suffix}" for split in release.SPLITS],
        kinds={"json"},
        description=description,
    )
    def _manifest(
        context: AssetExecutionContext, ilsvrc: IlsvrcResource, record_workers: ResourceParam[RecordWorkers]
    ) -> MaterializeResult:
        settings = ilsvrc.settings()
        # A shard read back (written before its writer checked it, or changed since) has every
        # image decoded unless the archives are the official ones.
        decode = SAMPLE if official_splits(context.instance, ilsvrc) == set(release.SPLITS) else ALL
        made = manifest.make_manifest(settings, record_workers, context.log.info, record_format, decode)
        # Where readers find it once published (it is written into the unpublished version).
        where = versions.where_published(settings, made.path)
        return MaterializeResult(metadata={"path": MetadataValue.path(str(where)), **metadata(made.facts)})

    return _manifest


dataset_manifest = manifest_asset(
    MANIFEST,
    TFRECORD,
    "`<data>/tfrecords/manifest.json`: every shard read back with TensorFlow (record "
    "count, bytes, MD5, labels, records that do not parse with the model zoo's feature spec, "
    "images that do not decode as JPEG, the MD5 its DALI index must have). The checks on this asset judge "
    "the whole dataset, the index files included.",
)
webdataset_manifest = manifest_asset(
    WEBDATASET_MANIFEST,
    WEBDATASET,
    "`<data>/webdataset/manifest.json`: every WebDataset tar read back (samples, bytes, MD5, labels, "
    "samples not of a .jpg, .cls and .json that agree, .jpg that do not decode with Pillow), and "
    "`<data>/webdataset/_info.json`, the split sizes and shard lengths timm's WebDataset reader reads "
    "(for each split whose tars are all present). The checks on this asset judge the tars.",
)


def official_splits(instance: DagsterInstance, ilsvrc: IlsvrcResource) -> set[str]:
    """The splits whose archives were the official ones when last fetched (from the history)."""
    source = ilsvrc.image_source()
    return {
        split
        for split, role in (("train", TRAIN), ("validation", VALIDATION))
        if is_official(instance, source.inputs_for(role))
    }


def written_shards(
    instance: DagsterInstance, settings: Settings, record_format: formats.RecordFormat = TFRECORD
) -> dict[str, manifest.Written]:
    """Size and MD5 of each shard of ``record_format`` as recorded by the latest materialisation of
    its partition.

    Shards without such a record in the instance (e.g. a new ``DAGSTER_HOME``) fall back to the
    shard ledger under ``<data>/.state/<asset_suffix>``, which the same step writes.
    """
    written: dict[str, manifest.Written] = {}
    for split in release.SPLITS:
        names = settings.shard_names(split, record_format.name)
        key = AssetKey(f"{split}_{record_format.asset_suffix}")
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
        ledger = shard_plan.ShardLedger(settings.state_dir / record_format.asset_suffix)
        for name in names:
            if name not in written and (entry := ledger.get(name)) is not None:
                written[name] = manifest.Written(bytes=entry["bytes"], md5=entry["md5"])
    return written


def manifest_checks(
    manifest_name: str, record_format: formats.RecordFormat, name: str
) -> AssetChecksDefinition:
    """The checks (:func:`manifest.dataset_verdicts`) on the manifest asset ``manifest_name`` of
    ``record_format``'s shards, as one step called ``name``."""

    def built_in_this_run(context: AssetCheckExecutionContext) -> bool:
        latest = context.instance.get_latest_materialization_event(AssetKey(manifest_name))
        return latest is not None and latest.run_id == context.run.run_id

    @multi_asset_check(
        name=name,
        specs=[
            AssetCheckSpec(check, asset=manifest_name, blocking=True, description=d)
            for check, d in manifest.checks_for(record_format).items()
        ],
        can_subset=True,
        description=f"The checks on the whole dataset ({record_format.name} shards), judged on the "
        "shards as they are on disk now.",
    )
    def _checks(
        context: AssetCheckExecutionContext,
        ilsvrc: IlsvrcResource,
        record_workers: ResourceParam[RecordWorkers],
    ) -> Iterator[AssetCheckResult]:
        settings = ilsvrc.settings()
        verdicts = manifest.dataset_verdicts(
            settings,
            record_workers,
            written_shards(context.instance, settings, record_format),
            official={split: split in official_splits(context.instance, ilsvrc) for split in release.SPLITS},
            selected={key.name for key in context.selected_asset_check_keys},
            # Right after the manifest was built in this run, it holds what the writers found; on
            # their own (the audit), the checks read every shard back.
            read_back=not built_in_this_run(context),
            log=context.log.warning,
            record_format=record_format,
        )
        for check, verdict in verdicts.items():
            yield check_result(verdict, asset_key=AssetKey(manifest_name), check_name=check)

    return _checks


dataset_checks = manifest_checks(MANIFEST, TFRECORD, "dataset_checks")
webdataset_checks = manifest_checks(WEBDATASET_MANIFEST, WEBDATASET, "webdataset_checks")
