"""The five raw archives of the release: present, verified, checksum as data version.

Asset names: ``train_archive``, ``validation_archive``, ``devkit_archive``,
``train_boxes_archive``, ``validation_boxes_archive``. Each carries a blocking ``checksum``
check, evaluated in the same step (the MD5 is computed once), so nothing downstream of a corrupt
archive runs. Each materialisation also records ``source_version``, what the source said of the
archive (see :meth:`ilsvrc_assets.sources.ArchiveSource.observe`); the refresh sensor compares it
with a fresh observation to find the archives that changed at the source.
"""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    asset,
)

from ilsvrc_assets import release
from ilsvrc_assets.archives import checksum_problem
from ilsvrc_assets.defs.resources import IlsvrcResource
from ilsvrc_assets.release import Archive

GROUP = "archives"
SOURCE_VERSION = "source_version"  # metadata key of the observed version at materialisation

ARCHIVE_ASSET_NAMES: dict[str, str] = {
    release.IMG_TRAIN.key: "train_archive",
    release.IMG_VAL.key: "validation_archive",
    release.DEVKIT.key: "devkit_archive",
    release.BBOX_TRAIN.key: "train_boxes_archive",
    release.BBOX_VAL.key: "validation_boxes_archive",
}


def archive_asset_name(archive: Archive) -> str:
    return ARCHIVE_ASSET_NAMES[archive.key]


def _archive_asset(archive: Archive) -> AssetsDefinition:
    name = archive_asset_name(archive)

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
    def _asset(context: AssetExecutionContext, ilsvrc: IlsvrcResource) -> MaterializeResult:
        source = ilsvrc.archive_source()
        fetched = source.fetch(archive, ilsvrc.checksum_cache(), context.log.info)
        problem = checksum_problem(archive.name, fetched.expected_md5, fetched.md5)
        if problem:
            context.log.error(problem)
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
            check_results=[
                AssetCheckResult(
                    check_name="checksum",
                    passed=problem is None,
                    severity=AssetCheckSeverity.ERROR,
                    description=problem or f"MD5 {fetched.md5} as expected ({fetched.expected_from})",
                    metadata={"md5": fetched.md5, "expected_md5": fetched.expected_md5},
                )
            ],
        )

    return _asset


archive_assets: list[AssetsDefinition] = [_archive_asset(a) for a in release.ARCHIVES]
