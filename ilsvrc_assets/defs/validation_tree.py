"""``validation_tree``: ``<data>/validation/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG``.

The work is in :mod:`ilsvrc_assets.validation_tree` (``make_validation_tree`` and the check's verdict).
"""

from dagster import AssetCheckResult, AssetExecutionContext, MaterializeResult, asset, asset_check

from ilsvrc_assets import validation_tree as tree
from ilsvrc_assets.defs.metadata import check_result, materialized
from ilsvrc_assets.defs.resources import IlsvrcResource


@asset(
    group_name="validation",
    deps=["validation_images", "validation_archive"],
    kinds={"folder"},
    description="The 50,000 validation images sorted into one folder per synset, "
    "`<data>/validation/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG` (the layout PyTorch's ImageFolder "
    "reads), made in one pass over the validation tar; labels from the devkit ground truth. "
    "Re-runnable: images already in place are kept, misplaced ones removed.",
)
def validation_tree(context: AssetExecutionContext, ilsvrc: IlsvrcResource) -> MaterializeResult:
    return materialized(tree.make_validation_tree(ilsvrc.settings(), ilsvrc.image_source(), context.log.info))


@asset_check(
    asset=validation_tree,
    blocking=True,  # nothing is downstream, but an audit that finds damage must fail its run
    description="The tree on disk matches the shipped validation label file exactly: every image "
    "in its synset's folder, 50 per synset, 50,000 in all, nothing else.",
)
def matches_validation_label_file(ilsvrc: IlsvrcResource) -> AssetCheckResult:
    return check_result(tree.validation_tree_verdict(ilsvrc.settings()))
