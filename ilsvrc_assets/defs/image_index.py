"""``train_images`` and ``validation_images``: where every image lies inside the source's files.

Their dependencies on the input assets are the official archives' here; the code location
points them at the configured source's inputs (``definitions.with_source_inputs``).

The work is in :mod:`ilsvrc_assets.image_index` (the stages and the checks' verdicts).
"""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    MaterializeResult,
    asset,
    asset_check,
)

from ilsvrc_assets import image_index
from ilsvrc_assets.defs.archives import is_official
from ilsvrc_assets.defs.metadata import check_result, materialized
from ilsvrc_assets.defs.resources import IlsvrcResource
from ilsvrc_assets.sources import TRAIN

GROUP = "images"


@asset(
    group_name=GROUP,
    deps=["train_archive", "synsets"],
    kinds={"parquet"},
    description="Every training image: file name, synset, byte offset and size inside "
    "ILSVRC2012_img_train.tar (a tar of 1,000 inner tars), read from tar headers only. "
    "Written to `<data>/index/train_images.parquet`.",
)
def train_images(context: AssetExecutionContext, ilsvrc: IlsvrcResource) -> MaterializeResult:
    return materialized(
        image_index.make_train_images(ilsvrc.settings(), ilsvrc.image_source(), context.log.info)
    )


@asset_check(
    asset=train_images,
    blocking=True,
    description="One inner tar per synset: all 1,000 synsets have training images (and, for the "
    "official archive, 1,281,167 images in all).",
)
def every_synset_has_training_images(
    context: AssetCheckExecutionContext, ilsvrc: IlsvrcResource
) -> AssetCheckResult:
    official = is_official(context.instance, ilsvrc.image_source().inputs_for(TRAIN))
    return check_result(image_index.train_images_verdict(ilsvrc.settings(), official))


@asset(
    group_name=GROUP,
    deps=["validation_archive", "validation_labels"],
    kinds={"parquet"},
    description="Every validation image: file name, number, synset (devkit ground truth), byte "
    "offset and size inside ILSVRC2012_img_val.tar. Written to "
    "`<data>/index/validation_images.parquet`.",
)
def validation_images(context: AssetExecutionContext, ilsvrc: IlsvrcResource) -> MaterializeResult:
    return materialized(
        image_index.make_validation_images(ilsvrc.settings(), ilsvrc.image_source(), context.log.info)
    )


@asset_check(
    asset=validation_images,
    blocking=True,
    description="Exactly 50 validation images per synset and 50,000 in all, each number 1..50,000 once.",
)
def fifty_per_synset(ilsvrc: IlsvrcResource) -> AssetCheckResult:
    return check_result(image_index.validation_images_verdict(ilsvrc.settings()))
