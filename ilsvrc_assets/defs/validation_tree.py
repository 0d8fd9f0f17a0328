"""``validation_tree``: ``<data>/validation/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG``."""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from ilsvrc_assets import archives, release, validation_tree as tree
from ilsvrc_assets.defs.metadata import check_result
from ilsvrc_assets.defs.resources import IlsvrcResource
from ilsvrc_assets.progress import Progress


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
    settings = ilsvrc.settings()
    archive = ilsvrc.archive_source().locate(release.IMG_VAL, context.log.info)
    index = archives.read_index(settings.image_index("validation"))

    progress = Progress("validation tree", len(index), "images", context.log.info)
    with ilsvrc.exclusive("validation_tree"):  # a second run at once would delete our temp files
        stats = tree.build(
            archive,
            index,
            settings.validation_dir,
            lambda done, _total: progress.update(done),
            threads=settings.workers,
        )
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(settings.validation_dir)),
            "images": MetadataValue.int(stats.images),
            "written": MetadataValue.int(stats.written),
            "already_in_place": MetadataValue.int(stats.skipped),
            "removed_misplaced": MetadataValue.int(stats.removed),
            "bytes": MetadataValue.int(stats.bytes),
        }
    )


@asset_check(
    asset=validation_tree,
    blocking=True,  # nothing is downstream, but an audit that finds damage must fail its run
    description="The tree on disk matches the shipped validation label file exactly: every image "
    "in its synset's folder, 50 per synset, 50,000 in all, nothing else.",
)
def matches_validation_label_file(
    context: AssetCheckExecutionContext, ilsvrc: IlsvrcResource
) -> AssetCheckResult:
    scanned = tree.scan(ilsvrc.settings().validation_dir)
    problems = tree.problems(scanned)
    return check_result(
        problems,
        "50,000 images in 1,000 folders, as the label file says",
        images=sum(len(v) for v in scanned.values()),
        folders=len(scanned),
    )
