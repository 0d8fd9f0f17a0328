"""``dataset_manifest``: every shard read back and summarised, and the checks on the whole dataset."""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from ilsvrc_assets import archives, manifest, release
from ilsvrc_assets.defs.metadata import check_result
from ilsvrc_assets.defs.resources import IlsvrcResource
from ilsvrc_assets.settings import Settings


def _shard_names(settings: Settings) -> dict[str, list[str]]:
    return {split: settings.shard_names(split) for split in release.SPLITS}


@asset(
    group_name="tfrecords",
    deps=["train_shards", "validation_shards"],
    kinds={"json"},
    description="`<data>/tfrecords/manifest.json`: every shard read back with TensorFlow (record "
    "count, bytes, MD5, labels, records that do not parse with the model zoo's feature spec, "
    "images that do not decode as JPEG). The checks on this asset judge the whole dataset.",
)
def dataset_manifest(context: AssetExecutionContext, ilsvrc: IlsvrcResource) -> MaterializeResult:
    settings = ilsvrc.settings()
    expected = {split: len(archives.read_index(settings.image_index(split))) for split in release.SPLITS}

    def progress(done: int, total: int) -> None:
        if done % 64 == 0 or done == total:
            context.log.info(f"read back {done} of {total} shards")

    result = manifest.build(
        settings.tfrecords_dir,
        _shard_names(settings),
        expected,
        workers=settings.workers,
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


def _manifest(settings: Settings) -> dict:
    found = manifest.read(settings.manifest_json)
    if found is None:
        raise FileNotFoundError(f"{settings.manifest_json}: no manifest; materialise dataset_manifest first")
    return found


@asset_check(
    asset=dataset_manifest, description="Every shard of both splits is present, as the manifest read it."
)
def every_shard_present(context: AssetCheckExecutionContext, ilsvrc: IlsvrcResource) -> AssetCheckResult:
    settings = ilsvrc.settings()
    names = _shard_names(settings)
    problems = manifest.missing_shards(_manifest(settings), settings.tfrecords_dir, names)
    return check_result(problems, f"all {sum(map(len, names.values()))} shards present")


@asset_check(
    asset=dataset_manifest,
    description="Record totals equal the images in the archives (and, for the official release, "
    "1,281,167 training and 50,000 validation records).",
)
def record_totals(context: AssetCheckExecutionContext, ilsvrc: IlsvrcResource) -> AssetCheckResult:
    settings = ilsvrc.settings()
    found = _manifest(settings)
    cache = ilsvrc.checksum_cache()
    source = ilsvrc.archive_source()
    official = {}
    for split, archive in (("train", release.IMG_TRAIN), ("validation", release.IMG_VAL)):
        official[split] = cache.get(source.locate(archive, context.log.info)) == archive.md5
    problems = manifest.total_problems(found, official)
    totals = {split: info["records"] for split, info in found["splits"].items()}
    return check_result(problems, ", ".join(f"{s}: {n:,} records" for s, n in totals.items()), **totals)


@asset_check(asset=dataset_manifest, description="Every label 1..1000 has records in each split.")
def every_label_in_each_split(
    context: AssetCheckExecutionContext, ilsvrc: IlsvrcResource
) -> AssetCheckResult:
    return check_result(
        manifest.label_problems(_manifest(ilsvrc.settings())), "labels 1..1000 present in both splits"
    )


@asset_check(
    asset=dataset_manifest,
    description="Every record parses with tf.io.parse_single_example and the model zoo's feature "
    "spec, with exactly the 15 features.",
)
def records_parse(context: AssetCheckExecutionContext, ilsvrc: IlsvrcResource) -> AssetCheckResult:
    return check_result(
        manifest.record_problems(_manifest(ilsvrc.settings()), "parse"), "every record parses"
    )


@asset_check(asset=dataset_manifest, description="Every image/encoded decodes as a JPEG.")
def images_decode(context: AssetCheckExecutionContext, ilsvrc: IlsvrcResource) -> AssetCheckResult:
    return check_result(
        manifest.record_problems(_manifest(ilsvrc.settings()), "decode"), "every image decodes as JPEG"
    )
