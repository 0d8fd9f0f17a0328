"""``synsets`` (the 1,000 classes) and ``validation_labels`` (the devkit ground truth), from the devkit."""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from ilsvrc_assets import release, synsets
from ilsvrc_assets.defs.metadata import check_result, markdown_preview
from ilsvrc_assets.defs.resources import IlsvrcResource

GROUP = "classes"


def _devkit(context: AssetExecutionContext, ilsvrc: IlsvrcResource) -> synsets.Devkit:
    path = ilsvrc.archive_source().locate(release.DEVKIT, context.log.info)
    return synsets.read_devkit(path)


@asset(
    name="synsets",
    group_name=GROUP,
    deps=["devkit_archive"],
    kinds={"csv"},
    description="The 1,000 classes: WNID, TF label (1..1000 in sorted WNID order; 0 is the unused "
    "background class), human-readable text and the devkit's ILSVRC2012_ID, read from the devkit's "
    "meta.mat. Written to `<data>/synsets.csv`.",
)
def synsets_asset(context: AssetExecutionContext, ilsvrc: IlsvrcResource) -> MaterializeResult:
    devkit = _devkit(context, ilsvrc)
    table = synsets.synset_table(devkit)
    path = ilsvrc.settings().synsets_csv
    synsets.write_csv(table, path)
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(path)),
            "synsets": MetadataValue.int(len(table)),
            "hierarchy_nodes": MetadataValue.int(devkit.num_nodes),
            "preview": markdown_preview(table),
        }
    )


@asset_check(
    asset="synsets",
    blocking=True,
    description="Exactly 1,000 leaf synsets with ILSVRC2012_IDs 1..1000, the same WNIDs as the "
    "shipped synset list, TF labels 1..1000 in sorted order.",
)
def one_thousand_synsets(context: AssetCheckExecutionContext, ilsvrc: IlsvrcResource) -> AssetCheckResult:
    table = synsets.read_synsets(ilsvrc.settings().synsets_csv)
    problems = synsets.synset_problems(table)
    return check_result(problems, f"{len(table)} synsets, as the shipped list", synsets=len(table))


@asset(
    group_name=GROUP,
    deps=["devkit_archive", "synsets"],
    kinds={"csv"},
    description="The synset of each of the 50,000 validation images: the devkit's ground truth "
    "(ILSVRC2012_IDs) mapped through meta.mat to WNIDs. Written to `<data>/validation_labels.csv`.",
)
def validation_labels(context: AssetExecutionContext, ilsvrc: IlsvrcResource) -> MaterializeResult:
    devkit = _devkit(context, ilsvrc)
    table = synsets.read_synsets(ilsvrc.settings().synsets_csv)
    labels = synsets.validation_labels(devkit, table)
    path = ilsvrc.settings().validation_labels_csv
    synsets.write_validation_labels(labels, path)
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(path)),
            "images": MetadataValue.int(len(labels)),
            "first_image": f"{release.validation_filename(1)} -> {labels[0] if labels else '-'}",
        }
    )


@asset_check(
    asset=validation_labels,
    blocking=True,
    description="The devkit ground truth, mapped to WNIDs, agrees line for line with the shipped "
    "validation label file (50,000 lines).",
)
def agrees_with_shipped_labels(
    context: AssetCheckExecutionContext, ilsvrc: IlsvrcResource
) -> AssetCheckResult:
    labels = synsets.read_validation_labels(ilsvrc.settings().validation_labels_csv)
    problems = synsets.validation_label_problems(labels)
    return check_result(problems, f"all {len(labels)} labels agree with the shipped file")
