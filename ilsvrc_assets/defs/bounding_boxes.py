"""``bounding_boxes``: one table of training and validation boxes, plus the reference CSVs.

The work is in :mod:`ilsvrc_assets.bounding_boxes` (``make_bounding_boxes`` and the check's verdict).
"""

from dagster import AssetCheckResult, AssetExecutionContext, MaterializeResult, asset, asset_check

from ilsvrc_assets import bounding_boxes as boxes
from ilsvrc_assets import bucket
from ilsvrc_assets.defs.metadata import check_result, materialized
from ilsvrc_assets.defs.resources import IlsvrcResource


@asset(
    group_name="boxes",
    deps=[
        "train_boxes_archive",
        "validation_boxes_archive",
        "synsets",
        "validation_labels",
        # For the previews only: the contact sheet draws the boxes on the images themselves.
        "train_images",
        "validation_images",
        "train_archive",
        "validation_archive",
    ],
    kinds={"parquet", "csv"},
    description="Every box of both bounding-box archives, with pixel coordinates as written and "
    "coordinates normalised by the reference rules (divided by the XML frame, min/max swapped, "
    "clamped to [0, 1]); `kept` is False, with a reason, for boxes the reference drops. "
    "`<data>/bounding_boxes.parquet`, plus the reference CSV "
    "`<data>/imagenet_2012_bounding_boxes.csv` (training) and its validation counterpart.",
)
def bounding_boxes(context: AssetExecutionContext, ilsvrc: IlsvrcResource) -> MaterializeResult:
    settings, log = ilsvrc.settings(), context.log.info
    made = boxes.make_bounding_boxes(settings, ilsvrc.image_source(), log)
    tables = [
        settings.bounding_boxes_parquet,
        settings.bounding_boxes_csv,
        settings.validation_bounding_boxes_csv,
    ]
    return materialized(bucket.also_published(settings, made, tables, log))


@asset_check(
    asset=bounding_boxes,
    blocking=True,
    description="Every kept box has coordinates in [0, 1] with min < max and lies on a known "
    "image of its synset (training: in the train archive under that synset; validation: the "
    "ground truth says that synset); and each split has kept boxes at all (an empty box "
    "archive is not a valid one). A source without boxes gets a warning saying so (non-blocking).",
)
def boxes_are_valid(ilsvrc: IlsvrcResource) -> AssetCheckResult:
    return check_result(boxes.bounding_boxes_verdict(ilsvrc.settings(), ilsvrc.image_source().has_boxes()))
