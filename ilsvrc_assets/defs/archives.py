"""The five raw archives of the release: present, verified, checksum as data version.

Asset names: ``train_archive``, ``validation_archive``, ``devkit_archive``,
``train_boxes_archive``, ``validation_boxes_archive``. Each carries a blocking ``checksum``
check, evaluated in the same step (the MD5 is computed once), so nothing downstream of a corrupt
archive runs. Each materialisation also records ``source_version``, what the source said of the
archive (see :meth:`ilsvrc_assets.sources.ArchiveSource.observe`); the refresh sensor compares it
with a fresh observation to find the archives that changed at the source.
"""

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    DagsterInstance,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    asset,
)

from ilsvrc_assets import release
from ilsvrc_assets.defs.metadata import check_result
from ilsvrc_assets.defs.resources import IlsvrcResource
from ilsvrc_assets.release import Archive
from ilsvrc_assets.sources import checksum_verdict

GROUP = "archives"
SOURCE_VERSION = "source_version"  # metadata key of the observed version at materialisation


def archive_asset(archive: Archive, name: str) -> AssetsDefinition:
    """The asset ``name`` of one of the five archives, with its blocking ``checksum`` check."""

    @asset(
        name=name,
        group_name=GROUP,
        kinds={"tar"},
        description=f"`{archive.name}`: {archive.description}. Fetched from the configured source "
        f"(used in place for a local folder) and verified against MD5SUMS or the official MD5.",
        check_specs=[
            AssetCheckSpec(
                "checksum",
                asset=name,
                blocking=True,
                description=f"The MD5 of {archive.name} equals the expected one (MD5SUMS beside the "
                "archives, else the official MD5).",
            )
        ],
    )
    def _archive(context: AssetExecutionContext, ilsvrc: IlsvrcResource) -> MaterializeResult:
        source = ilsvrc.image_source()
        fetched = source.fetch(archive, ilsvrc.checksum_cache(), context.log.info)
        verdict = checksum_verdict(fetched)
        if not verdict.passed:
            context.log.error(verdict.description)
        return MaterializeResult(
            metadata={
                "path": MetadataValue.path(str(fetched.path)),
                "size": MetadataValue.int(fetched.size),
                "md5": fetched.md5,
                "expected_md5": fetched.expected_md5,
                "expected_from": fetched.expected_from,
                "official": fetched.official,
                "source": source.describe(),
                SOURCE_VERSION: fetched.source_version,
                "md5_reused_from_earlier_run": fetched.md5_from_cache,
            },
            data_version=DataVersion(fetched.md5),
            check_results=[check_result(verdict)],
        )

    return _archive


train_archive = archive_asset(release.IMG_TRAIN, "train_archive")
validation_archive = archive_asset(release.IMG_VAL, "validation_archive")
devkit_archive = archive_asset(release.DEVKIT, "devkit_archive")
train_boxes_archive = archive_asset(release.BBOX_TRAIN, "train_boxes_archive")
validation_boxes_archive = archive_asset(release.BBOX_VAL, "validation_boxes_archive")

ARCHIVE_ASSETS: dict[str, AssetsDefinition] = {
    release.IMG_TRAIN.key: train_archive,
    release.IMG_VAL.key: validation_archive,
    release.DEVKIT.key: devkit_archive,
    release.BBOX_TRAIN.key: train_boxes_archive,
    release.BBOX_VAL.key: validation_boxes_archive,
}


def archive_asset_name(archive: Archive) -> str:
    return ARCHIVE_ASSETS[archive.key].key.to_user_string()


def is_official(instance: DagsterInstance, archive: Archive) -> bool:
    """Whether the archive was the official one when last fetched (its materialisation says so).

    Read from the history, never by locating the archive: a check or an audit must not download it.
    """
    event = instance.get_latest_materialization_event(AssetKey(archive_asset_name(archive)))
    if event is None or event.asset_materialization is None:
        return False
    official = event.asset_materialization.metadata.get("official")
    return bool(official.value) if official is not None else False
