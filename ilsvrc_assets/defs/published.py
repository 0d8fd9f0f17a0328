"""``published_validation_tree``, ``published_tfrecords``, ``published_webdataset``, ``published_train_tree``:
make a written and checked version of an output what readers see, in one step.

The work is in :mod:`ilsvrc_assets.versions` (``make_published`` and the check's verdict). Each asset
is downstream of the blocking checks that judge the version being written; it refuses to publish
unless each of them passed after the latest materialisation of the asset it checks, so a failed,
killed or blocked build, or partitions written since the checks, never change what readers see.
"""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetExecutionContext,
    AssetsDefinition,
    Failure,
    MaterializeResult,
    ResourceParam,
    asset,
    asset_check,
)

from ilsvrc_assets import bucket, release, versions
from ilsvrc_assets.defs.manifest import dataset_checks, official_splits, webdataset_checks
from ilsvrc_assets.defs.metadata import check_result, materialized, metadata
from ilsvrc_assets.defs.resources import IlsvrcResource
from ilsvrc_assets.defs.shards import require_upstream_checks_passed
from ilsvrc_assets.defs.train_tree import matches_train_index
from ilsvrc_assets.defs.validation_tree import matches_validation_label_file
from ilsvrc_assets.record_workers import RecordWorkers
from ilsvrc_assets.shard_scan import ALL, SAMPLE


def _gate(group: str, checks: AssetChecksDefinition) -> tuple[str, str, list[AssetCheckKey]]:
    """(the asset ``checks`` judge, ``group``, their keys in order of name)."""
    keys = sorted(checks.check_keys, key=lambda key: key.name)
    (asset_key,) = {key.asset_key for key in keys}
    return asset_key.to_user_string(), group, keys


# Output -> (the asset whose checks judge its staged version, the publishing asset's group, those checks).
GATES: dict[str, tuple[str, str, list[AssetCheckKey]]] = {
    "validation_tree": _gate("validation", matches_validation_label_file),
    "train_tree": _gate("imagefolder", matches_train_index),
    "tfrecords": _gate("tfrecords", dataset_checks),
    "webdataset": _gate("webdataset", webdataset_checks),
}
assert set(GATES) == set(versions.OUTPUTS), "every published output needs its gate here"


def require_checks_since_materialised(context: AssetExecutionContext, keys: list[AssetCheckKey]) -> None:
    """Raise a Failure unless every check of ``keys`` passed (:func:`require_upstream_checks_passed`)
    and was evaluated after the latest materialisation of the asset it checks: a check that judged an
    earlier version proves nothing about the one being published."""
    latest = require_upstream_checks_passed(context, keys)
    stale = []
    for key in keys:
        made = context.instance.get_latest_materialization_event(key.asset_key)
        record = latest[key]
        evaluated = record.event.timestamp if record.event else record.create_timestamp
        if made is not None and evaluated < made.timestamp:
            stale.append(f"{key.asset_key.to_user_string()}:{key.name}")
    if stale:
        raise Failure(
            description=f"Not published: {', '.join(stale)} judged an earlier materialisation; "
            "materialise the asset again (its checks run with it), then publish."
        )


def published_asset(name: str) -> AssetsDefinition:
    """The asset that publishes output ``name`` (a key of :data:`versions.OUTPUTS`)."""
    output = versions.OUTPUTS[name]
    upstream, group, gate = GATES[name]
    folders = ", ".join(f"`<data>/{f}/`" for f in output.folders)

    @asset(
        name=output.asset,
        group_name=group,
        deps=[upstream],
        kinds={"folder"},
        description=f"What readers see at {folders}: the version `{upstream}` wrote, published once its "
        f"blocking checks passed on it. Its completeness marker, `{output.folders[0]}/{versions.MARKER}` "
        f"with `{versions.LISTING}` (every file, size and MD5), is written last; then one rename of a "
        "symbolic link makes it visible. Until then readers see the previous version, unchanged. With "
        "`ILSVRC_OUTPUT_URL`, the version is then uploaded to the bucket under the same paths (verified, "
        "conditional; its marker removed first and written last: `ilsvrc_assets/bucket.py`).",
    )
    def _published(context: AssetExecutionContext, ilsvrc: IlsvrcResource) -> MaterializeResult:
        require_checks_since_materialised(context, gate)
        settings, log = ilsvrc.settings(), context.log.info
        made = versions.make_published(settings, name, log)
        if not bucket.publishes(settings, name):
            return materialized(made)
        # Then to the bucket, verified, its marker last (ilsvrc_assets.bucket).
        return materialized(made, **metadata(bucket.publish_output(settings, name, log).metadata()))

    return _published


def listing_check(asset_def: AssetsDefinition, name: str) -> AssetChecksDefinition:
    """The check that what readers see of output ``name`` is its published listing."""

    @asset_check(
        asset=asset_def,
        name="matches_its_listing",
        blocking=True,  # nothing is downstream, but an audit that finds damage must fail its run
        description="Readers' folders are the links to the published version, which holds exactly the "
        f"files its `{versions.LISTING}` lists, at the sizes listed (the shards' MD5s are compared by "
        "the manifests' checks, which hash every shard).",
    )
    def _matches(
        context: AssetCheckExecutionContext,
        ilsvrc: IlsvrcResource,
        record_workers: ResourceParam[RecordWorkers],
    ) -> AssetCheckResult:
        settings = ilsvrc.settings()
        read_back = None
        latest = context.instance.get_latest_materialization_event(asset_def.key)
        published_now = latest is not None and latest.run_id == context.run.run_id
        if versions.OUTPUTS[name].record_format and bucket.publishes(settings, name) and not published_now:
            # The audit: the bucket's shards are read back, as the manifest's checks read the local ones.
            official = official_splits(context.instance, ilsvrc) == set(release.SPLITS)
            read_back = (record_workers, SAMPLE if official and not settings.audit_decode_all else ALL)
        return check_result(bucket.published_verdict(settings, name, read_back))

    return _matches


PUBLISHED = {name: published_asset(name) for name in versions.OUTPUTS}
PUBLISHED_CHECKS = [listing_check(asset_def, name) for name, asset_def in PUBLISHED.items()]
