"""``train_images`` and ``validation_images``: where every image lies inside its archive.

Made from tar headers only (``ilsvrc_assets.archives``); every later step reads an image with
one seek and one read, so nothing is ever extracted to disk first.
"""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from ilsvrc_assets import archives, release, synsets
from ilsvrc_assets.defs.metadata import check_result, markdown_preview
from ilsvrc_assets.defs.resources import IlsvrcResource
from ilsvrc_assets.progress import Progress

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
    settings = ilsvrc.settings()
    path = ilsvrc.archive_source().locate(release.IMG_TRAIN, context.log.info)
    known = frozenset(synsets.read_synsets(settings.synsets_csv)["wnid"])

    progress = Progress("train index", len(known), "synset tars", context.log.info)
    index = archives.index_train_archive(path, known, lambda done, _total, _wnid: progress.update(done))
    archives.write_index(index, settings.image_index("train"))
    per_synset = index.groupby("synset").size()
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(settings.image_index("train"))),
            "images": MetadataValue.int(len(index)),
            "synsets": MetadataValue.int(int(per_synset.size)),
            "fewest_per_synset": MetadataValue.int(int(per_synset.min()) if len(per_synset) else 0),
            "most_per_synset": MetadataValue.int(int(per_synset.max()) if len(per_synset) else 0),
            "bytes": MetadataValue.int(int(index["size"].sum())),
            "preview": markdown_preview(index),
        }
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
    settings = ilsvrc.settings()
    index = archives.read_index(settings.image_index("train"))
    expected = set(synsets.read_synsets(settings.synsets_csv)["wnid"])
    present = set(index["synset"])
    problems = []
    if missing := sorted(expected - present):
        problems.append(f"{len(missing)} synsets have no training images, e.g. {', '.join(missing[:5])}")
    official = _is_official(context, ilsvrc, release.IMG_TRAIN)
    if official and len(index) != release.NUM_TRAIN_IMAGES:
        problems.append(
            f"{len(index):,} training images, the official release has {release.NUM_TRAIN_IMAGES:,}"
        )
    return check_result(
        problems,
        f"{len(index):,} images over {len(present)} synsets",
        images=len(index),
        synsets=len(present),
        official_archive=official,
    )


@asset(
    group_name=GROUP,
    deps=["validation_archive", "validation_labels"],
    kinds={"parquet"},
    description="Every validation image: file name, number, synset (devkit ground truth), byte "
    "offset and size inside ILSVRC2012_img_val.tar. Written to "
    "`<data>/index/validation_images.parquet`.",
)
def validation_images(context: AssetExecutionContext, ilsvrc: IlsvrcResource) -> MaterializeResult:
    settings = ilsvrc.settings()
    path = ilsvrc.archive_source().locate(release.IMG_VAL, context.log.info)
    labels = synsets.read_validation_labels(settings.validation_labels_csv)
    index = archives.index_validation_archive(path, labels)
    archives.write_index(index, settings.image_index("validation"))
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(settings.image_index("validation"))),
            "images": MetadataValue.int(len(index)),
            "synsets": MetadataValue.int(int(index["synset"].nunique())),
            "bytes": MetadataValue.int(int(index["size"].sum())),
            "preview": markdown_preview(index.sort_values("number")),
        }
    )


@asset_check(
    asset=validation_images,
    blocking=True,
    description="Exactly 50 validation images per synset and 50,000 in all, each number 1..50,000 once.",
)
def fifty_per_synset(context: AssetCheckExecutionContext, ilsvrc: IlsvrcResource) -> AssetCheckResult:
    settings = ilsvrc.settings()
    index = archives.read_index(settings.image_index("validation"))
    problems = []
    if len(index) != release.NUM_VALIDATION_IMAGES:
        problems.append(f"{len(index):,} validation images, expected {release.NUM_VALIDATION_IMAGES:,}")
    missing = sorted(set(range(1, release.NUM_VALIDATION_IMAGES + 1)) - set(index["number"]))
    if missing:
        names = ", ".join(release.validation_filename(n) for n in missing[:5])
        problems.append(f"{len(missing)} missing, e.g. {names}")
    counts = index.groupby("synset").size().reindex(release.challenge_synsets(), fill_value=0)
    wrong = counts[counts != release.VALIDATION_IMAGES_PER_SYNSET]
    if len(wrong):
        shown = ", ".join(f"{s}: {n}" for s, n in wrong.head(5).items())
        problems.append(
            f"{len(wrong)} synsets without exactly {release.VALIDATION_IMAGES_PER_SYNSET} images ({shown})"
        )
    return check_result(
        problems, "50,000 images, 50 per synset", images=len(index), synsets_with_wrong_count=len(wrong)
    )


def _is_official(
    context: AssetCheckExecutionContext, ilsvrc: IlsvrcResource, archive: release.Archive
) -> bool:
    """True when the archive on disk is the official one (by its verified MD5)."""
    path = ilsvrc.archive_source().locate(archive, context.log.info)
    md5 = ilsvrc.checksum_cache().get(path)
    return md5 == archive.md5
