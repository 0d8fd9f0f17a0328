"""Stages ``train_images`` and ``validation_images``: where every image lies inside its archive.

Made by the source (:meth:`ilsvrc_assets.sources.ImageSource.index_images`; the official archives:
from tar headers only); every later step reads an image by its index row, with one seek and one
read for the official archives, so nothing is ever extracted to disk first.
"""

from __future__ import annotations

from ilsvrc_assets import archives, previews, release, synsets
from ilsvrc_assets.progress import Progress
from ilsvrc_assets.settings import Settings
from ilsvrc_assets.sources import ImageSource
from ilsvrc_assets.stage import Log, Made, Verdict, quiet


def make_train_images(settings: Settings, source: ImageSource, log: Log = quiet) -> Made:
    """Stage ``train_images``: index the train archive (a tar of 1,000 inner tars) into
    ``<data>/index/train_images.parquet`` (needs ``synsets``)."""
    synset_table = synsets.read_synsets(settings.synsets_csv)
    known = frozenset(synset_table["wnid"])
    progress = Progress("train index", len(known), "synset tars", log)
    index = source.index_images("train", known, (), log, lambda done, _total: progress.update(done))
    path = settings.image_index("train")
    archives.write_index(index, path)
    per_synset = index.groupby("synset").size()
    shown = previews.for_image_index(index, "train", synset_table)
    previews.write_all(shown, previews.folder_for(settings.data_dir, "train_images"))
    return Made(
        path,
        {
            "images": len(index),
            "synsets": int(per_synset.size),
            "fewest_per_synset": int(per_synset.min()) if len(per_synset) else 0,
            "most_per_synset": int(per_synset.max()) if len(per_synset) else 0,
            "bytes": int(index["size"].sum()),
        },
        preview=index,
        previews=shown,
    )


def train_images_verdict(settings: Settings, official: bool) -> Verdict:
    """Check ``every_synset_has_training_images``: every synset has images; an ``official``
    archive (its MD5 is the release's) has exactly 1,281,167."""
    index = archives.read_index(settings.image_index("train"))
    expected = set(synsets.read_synsets(settings.synsets_csv)["wnid"])
    present = set(index["synset"])
    problems = []
    if missing := sorted(expected - present):
        problems.append(f"{len(missing)} synsets have no training images, e.g. {', '.join(missing[:5])}")
    if official and len(index) != release.NUM_TRAIN_IMAGES:
        problems.append(
            f"{len(index):,} training images, the official release has {release.NUM_TRAIN_IMAGES:,}"
        )
    return Verdict(
        problems,
        f"{len(index):,} images over {len(present)} synsets",
        {"images": len(index), "synsets": len(present), "official_archive": official},
    )


def make_validation_images(settings: Settings, source: ImageSource, log: Log = quiet) -> Made:
    """Stage ``validation_images``: index the validation archive into
    ``<data>/index/validation_images.parquet``, each image with its synset (needs ``validation_labels``)."""
    labels = synsets.read_validation_labels(settings.validation_labels_csv)
    index = source.index_images("validation", (), labels, log)
    path = settings.image_index("validation")
    archives.write_index(index, path)
    shown = previews.for_image_index(index, "validation", synsets.read_synsets(settings.synsets_csv))
    previews.write_all(shown, previews.folder_for(settings.data_dir, "validation_images"))
    return Made(
        path,
        {
            "images": len(index),
            "synsets": int(index["synset"].nunique()),
            "bytes": int(index["size"].sum()),
        },
        preview=index.sort_values("number"),
        previews=shown,
    )


def validation_images_verdict(settings: Settings) -> Verdict:
    """Check ``fifty_per_synset``: 50 images per synset, 50,000 in all, each number once."""
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
    return Verdict(
        problems,
        "50,000 images, 50 per synset",
        {"images": len(index), "synsets_with_wrong_count": len(wrong)},
    )
