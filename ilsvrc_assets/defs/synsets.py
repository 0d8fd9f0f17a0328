"""``synsets`` (the 1,000 classes) and ``validation_labels`` (the devkit ground truth), from the devkit.

The work is in :mod:`ilsvrc_assets.synsets` (``make_synsets``, ``make_validation_labels`` and the
checks' verdicts).
"""

from dagster import AssetCheckResult, AssetExecutionContext, MaterializeResult, asset, asset_check

from ilsvrc_assets import bucket
from ilsvrc_assets import synsets as classes
from ilsvrc_assets.defs.metadata import check_result, materialized
from ilsvrc_assets.defs.resources import IlsvrcResource

GROUP = "classes"


@asset(
    group_name=GROUP,
    deps=["devkit_archive"],
    kinds={"csv"},
    description="The 1,000 classes: WNID, TF label (1..1000 in sorted WNID order; 0 is the unused "
    "background class), human-readable text and the devkit's ILSVRC2012_ID, read from the devkit's "
    "meta.mat. Written to `<data>/synsets.csv`.",
)
def synsets(context: AssetExecutionContext, ilsvrc: IlsvrcResource) -> MaterializeResult:
    settings, log = ilsvrc.settings(), context.log.info
    made = classes.make_synsets(settings, ilsvrc.image_source(), log)
    return materialized(bucket.also_published(settings, made, [settings.synsets_csv], log))


@asset_check(
    asset=synsets,
    blocking=True,
    description="Exactly 1,000 leaf synsets with ILSVRC2012_IDs 1..1000, the same WNIDs as the "
    "shipped synset list, TF labels 1..1000 in sorted order.",
)
def one_thousand_synsets(ilsvrc: IlsvrcResource) -> AssetCheckResult:
    return check_result(classes.synsets_verdict(ilsvrc.settings()))


@asset(
    group_name=GROUP,
    deps=["devkit_archive", synsets],
    kinds={"csv"},
    description="The synset of each of the 50,000 validation images: the devkit's ground truth "
    "(ILSVRC2012_IDs) mapped through meta.mat to WNIDs. Written to `<data>/validation_labels.csv`.",
)
def validation_labels(context: AssetExecutionContext, ilsvrc: IlsvrcResource) -> MaterializeResult:
    settings, log = ilsvrc.settings(), context.log.info
    made = classes.make_validation_labels(settings, ilsvrc.image_source(), log)
    return materialized(bucket.also_published(settings, made, [settings.validation_labels_csv], log))


@asset_check(
    asset=validation_labels,
    blocking=True,
    description="The devkit ground truth, mapped to WNIDs, agrees line for line with the shipped "
    "validation label file (50,000 lines).",
)
def agrees_with_shipped_labels(ilsvrc: IlsvrcResource) -> AssetCheckResult:
    return check_result(classes.validation_labels_verdict(ilsvrc.settings()))
