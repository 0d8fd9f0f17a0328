"""Facts about the ILSVRC2012 release, as data, in one place.

Everything else in the package reads archive names, checksums, counts, shard names and the
TFRecord feature keys from here. The label files in ``reference/`` are the public TensorFlow
inception/slim copies; see ``../shared/ILSVRC2012.md`` for where each fact comes from.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class Archive:
    """One archive of the official release."""

    key: str  # short name used for asset keys and settings, e.g. "img_train"
    name: str  # official file name
    md5: str  # official MD5
    size: int | None  # official size in bytes, where the release states it exactly
    description: str


IMG_TRAIN = Archive(
    "img_train",
    "ILSVRC2012_img_train.tar",
    "1d675b47d978889d74fa0da5fadfb00e",
    147_897_477_120,
    "1,000 uncompressed inner tars <wnid>.tar of training JPEGs",
)
IMG_VAL = Archive(
    "img_val",
    "ILSVRC2012_img_val.tar",
    "29b22e2961454d5413ddabcf34fc5622",
    6_744_924_160,
    "50,000 flat validation JPEGs, member order not sorted",
)
DEVKIT = Archive(
    "devkit",
    "ILSVRC2012_devkit_t12.tar.gz",
    "fa75699e90414af021442c21a62c3abf",
    None,
    "meta.mat (the synset hierarchy) and the validation ground truth in devkit IDs",
)
BBOX_TRAIN = Archive(
    "bbox_train",
    "ILSVRC2012_bbox_train_v2.tar.gz",
    "9271167e2176350e65cfe4e546f14b17",
    None,
    "PASCAL VOC XML boxes <wnid>/<wnid>_<n>.xml for the annotated training subset",
)
BBOX_VAL = Archive(
    "bbox_val",
    "ILSVRC2012_bbox_val_v3.tgz",
    "f4cd18b5ea29fe6bbea62ec9c20d80f0",
    None,
    "PASCAL VOC XML boxes val/ILSVRC2012_val_<8 digits>.xml for every validation image",
)

# Beside the archives (a stand-in release such as the sample, or at an HTTP source's base URL):
# their MD5s in md5sum's format, which then replace the official ones.
MD5SUMS = "MD5SUMS"

ARCHIVES: tuple[Archive, ...] = (IMG_TRAIN, IMG_VAL, DEVKIT, BBOX_TRAIN, BBOX_VAL)
MD5SUMS = "MD5SUMS"  # beside the archives (md5sum format): the MD5s a stand-in release is verified against
ARCHIVES_BY_KEY: dict[str, Archive] = {a.key: a for a in ARCHIVES}
ARCHIVES_BY_NAME: dict[str, Archive] = {a.name: a for a in ARCHIVES}


def is_official_md5(digest: str) -> bool:
    """Whether ``digest`` is the official MD5 of one of the release's image archives: bytes that are
    then the official bytes, whose images are known to decode (the exceptions are re-encoded)."""
    return digest in (IMG_TRAIN.md5, IMG_VAL.md5)


# Members of the devkit archive that the preparation reads.
DEVKIT_META_MAT = "ILSVRC2012_devkit_t12/data/meta.mat"
DEVKIT_VALIDATION_GROUND_TRUTH = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
# Fields of each element of the `synsets` struct in meta.mat, in the devkit's order.
META_MAT_SYNSET_FIELDS = (
    "ILSVRC2012_ID",
    "WNID",
    "words",
    "gloss",
    "num_children",
    "children",
    "wordnet_height",
    "num_train_images",
)

# Counts of the official release.
NUM_SYNSETS = 1000
NUM_HIERARCHY_NODES = 1860  # leaves plus inner nodes in meta.mat
NUM_TRAIN_IMAGES = 1_281_167
NUM_VALIDATION_IMAGES = 50_000
VALIDATION_IMAGES_PER_SYNSET = 50
NUM_TRAIN_BBOX_FILES = 544_546
NUM_TRAIN_BOXES = 615_299

# The TF/TPU model zoo's TFRecord layout.
SPLITS = ("train", "validation")
DEFAULT_NUM_SHARDS = {"train": 1024, "validation": 128}
SHUFFLE_SEED = 12345  # the reference's seed; the shuffle itself is ours and deterministic
# WebDataset tars for PyTorch (timm, open_clip): the counts of the published imagenet-1k WebDataset.
DEFAULT_NUM_WEBDATASET_SHARDS = {"train": 1024, "validation": 64}
JPEG_QUALITY_FOR_CONVERTED = 100  # what every reference tool uses when re-encoding PNG/CMYK
FEATURE_KEYS = (
    "image/height",
    "image/width",
    "image/colorspace",
    "image/channels",
    "image/class/label",
    "image/class/synset",
    "image/class/text",
    "image/object/bbox/xmin",
    "image/object/bbox/xmax",
    "image/object/bbox/ymin",
    "image/object/bbox/ymax",
    "image/object/bbox/label",
    "image/format",
    "image/filename",
    "image/encoded",
)


def shard_name(split: str, index: int, num_shards: int) -> str:
    """The model zoo's shard file name, e.g. ``train-00000-of-01024``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if not 0 <= index < num_shards:
        raise ValueError(f"shard index {index} out of range for {num_shards} shards")
    return f"{split}-{index:05d}-of-{num_shards:05d}"


def shard_names(split: str, num_shards: int) -> list[str]:
    """All shard names of a split, in order."""
    return [shard_name(split, i, num_shards) for i in range(num_shards)]


def parse_shard_name(name: str) -> tuple[str, int, int]:
    """``train-00003-of-01024`` -> ("train", 3, 1024)."""
    split, index, of, count = name.rsplit("-", 3)
    if split not in SPLITS or of != "of" or not (index.isdigit() and count.isdigit()):
        raise ValueError(f"{name!r} is not a shard name like 'train-00000-of-01024'")
    return split, int(index), int(count)


def validation_filename(number: int) -> str:
    """``ILSVRC2012_val_00000001.JPEG`` for number 1 (numbers are 1-based)."""
    return f"ILSVRC2012_val_{number:08d}.JPEG"


def validation_number(filename: str) -> int:
    """Inverse of :func:`validation_filename`; raises ValueError on any other name."""
    stem = filename.removesuffix(".JPEG")
    prefix = "ILSVRC2012_val_"
    digits = stem[len(prefix) :]
    if not stem.startswith(prefix) or len(digits) != 8 or not digits.isdigit() or stem == filename:
        raise ValueError(f"{filename!r} is not a validation image name like 'ILSVRC2012_val_00000001.JPEG'")
    return int(digits)


def is_wnid(text: str) -> bool:
    """True for a WordNet ID such as ``n01440764``."""
    return len(text) == 9 and text[0] == "n" and text[1:].isdigit()


# --- The shipped reference files -------------------------------------------------------------


def reference_path(name: str) -> Path:
    """Path of a file shipped in ``ilsvrc_assets/reference/``."""
    return Path(str(resources.files("ilsvrc_assets") / "reference" / name))


def _read_lines(name: str) -> list[str]:
    return [line.strip() for line in reference_path(name).read_text().splitlines() if line.strip()]


@functools.cache
def challenge_synsets() -> tuple[str, ...]:
    """The 1,000 challenge WNIDs, sorted; position k is TF label k + 1."""
    return tuple(_read_lines("imagenet_lsvrc_2015_synsets.txt"))


@functools.cache
def tf_labels() -> dict[str, int]:
    """WNID -> 1-based TF/TPU model-zoo label (0 is the unused background class)."""
    return {wnid: i + 1 for i, wnid in enumerate(challenge_synsets())}


@functools.cache
def validation_synsets() -> tuple[str, ...]:
    """50,000 WNIDs; element i - 1 is the synset of ``validation_filename(i)``."""
    return tuple(_read_lines("imagenet_2012_validation_synset_labels.txt"))


@functools.cache
def synset_texts() -> dict[str, str]:
    """WNID -> human-readable names, for all 21,842 ImageNet synsets."""
    texts = {}
    for line in reference_path("imagenet_metadata.txt").read_text().splitlines():
        wnid, _, text = line.partition("\t")
        if wnid:
            texts[wnid] = text.strip()
    return texts


@functools.cache
def cmyk_train_files() -> frozenset[str]:
    """The 22 training files that are CMYK JPEGs."""
    return frozenset(_read_lines("ilsvrc2012_train_cmyk_images.txt"))


@functools.cache
def png_train_files() -> frozenset[str]:
    """The training file that is a PNG named ``.JPEG``."""
    return frozenset(_read_lines("ilsvrc2012_train_png_images.txt"))
