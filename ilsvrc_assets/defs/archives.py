"""The input assets: the files (or folders) the configured source is read from, present and verified.

The source declares them (:meth:`ilsvrc_assets.sources.ImageSource.inputs`); for the official
release they are the five archives, ``train_archive``, ``validation_archive``, ``devkit_archive``,
``train_boxes_archive``, ``validation_boxes_archive``. Each carries a blocking ``checksum``
check, evaluated in the same step (the digest is computed once), so nothing downstream of a
corrupt input runs. Each materialisation also records ``source_version``, what the source said of
the input (see :meth:`ilsvrc_assets.sources.ImageSource.observe`); the refresh sensor compares it
with a fresh observation to find the inputs that changed at the source.
"""

from collections.abc import Iterable

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

from ilsvrc_assets.defs.metadata import check_result
from ilsvrc_assets.defs.resources import IlsvrcResource
from ilsvrc_assets.sources import Input, checksum_verdict
from ilsvrc_assets.sources.official import INPUTS as OFFICIAL_INPUTS

GROUP = "archives"
SOURCE_VERSION = "source_version"  # metadata key of the observed version at materialisation


def input_asset(item: Input) -> AssetsDefinition:
    """The asset of one input of the source, with its blocking ``checksum`` check."""
    published = (
        "verified against MD5SUMS beside it, else the official MD5"
        if item.md5
        else "verified against MD5SUMS beside it where there is one (no MD5 is published for it)"
    )

    @asset(
        name=item.asset,
        group_name=GROUP,
        kinds={item.kind},
        description=f"`{item.name}`: {item.description}. Fetched from the configured source "
        f"(used in place where local) and {published}.",
        check_specs=[
            AssetCheckSpec(
                "checksum",
                asset=item.asset,
                blocking=True,
                description=f"The digest of {item.name} equals the expected one (MD5SUMS beside it, "
                "else the published MD5, where there is one) and the source found nothing wrong with it.",
            )
        ],
    )
    def _input(context: AssetExecutionContext, ilsvrc: IlsvrcResource) -> MaterializeResult:
        source = ilsvrc.image_source()
        fetched = source.fetch(item, ilsvrc.checksum_cache(), context.log.info)
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

    return _input


def input_assets(inputs: Iterable[Input]) -> list[AssetsDefinition]:
    """The input assets of a source (its :meth:`~ilsvrc_assets.sources.ImageSource.inputs`)."""
    return [input_asset(item) for item in inputs]


# The official archives' assets, for the sources sample, local and http.
train_archive, validation_archive, devkit_archive, train_boxes_archive, validation_boxes_archive = (
    input_assets(OFFICIAL_INPUTS)
)
ARCHIVE_ASSETS: dict[str, AssetsDefinition] = {
    item.asset: definition
    for item, definition in zip(
        OFFICIAL_INPUTS,
        (train_archive, validation_archive, devkit_archive, train_boxes_archive, validation_boxes_archive),
    )
}


def is_official(instance: DagsterInstance, inputs: Iterable[Input]) -> bool:
    """Whether the inputs were all the official (published) files when last fetched (their
    materialisations say so); False for none.

    Read from the history, never by fetching: a check or an audit must not download anything.
    """
    names = [item.asset for item in inputs]
    for name in names:
        event = instance.get_latest_materialization_event(AssetKey(name))
        if event is None or event.asset_materialization is None:
            return False
        official = event.asset_materialization.metadata.get("official")
        if official is None or not official.value:
            return False
    return bool(names)
