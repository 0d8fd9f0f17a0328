"""``bounding_boxes``: one table of training and validation boxes, plus the reference CSV."""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from ilsvrc_assets import archives, bounding_boxes as boxes, release, synsets
from ilsvrc_assets.defs.metadata import check_result, markdown_preview
from ilsvrc_assets.defs.resources import IlsvrcResource


@asset(
    group_name="boxes",
    deps=["train_boxes_archive", "validation_boxes_archive", "synsets", "validation_labels"],
    kinds={"parquet", "csv"},
    description="Every box of both bounding-box archives, with pixel coordinates as written and "
    "coordinates normalised by the reference rules (divided by the XML frame, min/max swapped, "
    "clamped to [0, 1]); `kept` is False, with a reason, for boxes the reference drops. "
    "`<data>/bounding_boxes.parquet`, plus the reference CSV "
    "`<data>/imagenet_2012_bounding_boxes.csv` (training) and its validation counterpart.",
)
def bounding_boxes(context: AssetExecutionContext, ilsvrc: IlsvrcResource) -> MaterializeResult:
    settings = ilsvrc.settings()
    source = ilsvrc.archive_source()
    train_archive = source.locate(release.BBOX_TRAIN, context.log.info)
    validation_archive = source.locate(release.BBOX_VAL, context.log.info)
    known = set(synsets.read_synsets(settings.synsets_csv)["wnid"])
    labels = synsets.read_validation_labels(settings.validation_labels_csv)
    table = boxes.build_table(train_archive, validation_archive, known, labels, workers=settings.workers)
    boxes.write_outputs(
        table,
        settings.bounding_boxes_parquet,
        settings.bounding_boxes_csv,
        settings.validation_bounding_boxes_csv,
    )
    kept = table[table["kept"]]
    dropped = table[~table["kept"]]
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(settings.bounding_boxes_parquet)),
            "reference_csv": MetadataValue.path(str(settings.bounding_boxes_csv)),
            "boxes": MetadataValue.int(len(table)),
            "kept_train_boxes": MetadataValue.int(int((kept["split"] == "train").sum())),
            "kept_validation_boxes": MetadataValue.int(int((kept["split"] == "validation").sum())),
            "annotated_train_images": MetadataValue.int(
                int(kept.loc[kept["split"] == "train", "image"].nunique())
            ),
            "dropped": MetadataValue.json(
                {str(k): int(v) for k, v in dropped["drop_reason"].value_counts().items()}
            ),
            "preview": markdown_preview(table),
        }
    )


@asset_check(
    asset=bounding_boxes,
    blocking=True,
    description="Every kept box has coordinates in [0, 1] with min < max and lies on a known "
    "image of its synset (training: in the train archive under that synset; validation: the "
    "ground truth says that synset); and each split has kept boxes at all (an empty box "
    "archive is not a valid one).",
    additional_deps=["train_images"],
)
def boxes_are_valid(context: AssetCheckExecutionContext, ilsvrc: IlsvrcResource) -> AssetCheckResult:
    settings = ilsvrc.settings()
    table = boxes.read_table(settings.bounding_boxes_parquet)
    index = archives.read_index(settings.image_index("train"))
    train_images = dict(zip(index["filename"], index["synset"]))
    labels = synsets.read_validation_labels(settings.validation_labels_csv)
    problems = boxes.find_problems(table, train_images, labels)
    for split in release.SPLITS:
        if not (table["kept"] & (table["split"] == split)).any():
            problems.append(
                f"no kept {split} boxes: the {split} bounding-box archive holds no usable annotation"
            )
    return check_result(
        problems, f"{int(table['kept'].sum()):,} kept boxes, all valid", kept_boxes=int(table["kept"].sum())
    )
