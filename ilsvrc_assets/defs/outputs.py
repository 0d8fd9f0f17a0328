"""Which assets each output format is, and so what ``ILSVRC_FORMATS`` has ``ilsvrc-assets build`` write.

Every format's assets are in the code location whatever the setting says (each can be materialised
from the UI or its job); the setting decides what the build materialises, and so what the refresh
rebuilds and what the audit checks: the outputs that were built. This is the one place that decides
it (``definitions.left_out`` is :func:`unbuilt_assets`).
"""

from ilsvrc_assets.settings import FORMATS, Settings

# Format (a value of ILSVRC_FORMATS) -> its assets, in the order the build materialises them (after the
# inputs, which every format needs; the formats in the order of settings.FORMATS, so the training tree,
# the whole training set again, comes after the manifests). A partitioned asset is built as one run of
# all its partitions.
FORMAT_ASSETS: dict[str, tuple[str, ...]] = {
    "tfrecord": ("train_shards", "validation_shards", "dataset_manifest", "published_tfrecords"),
    "webdataset": (
        "train_webdataset",
        "validation_webdataset",
        "webdataset_manifest",
        "published_webdataset",
    ),
    # the training ImageFolder tree, <data>/train/<wnid>/ (about 140 GB)
    "imagefolder": ("train_tree", "published_train_tree"),
}
assert set(FORMAT_ASSETS) == set(FORMATS), "every value of ILSVRC_FORMATS needs its assets here"
assert all(FORMAT_ASSETS.values()), "every value of ILSVRC_FORMATS needs an asset that writes it"


def built_assets(settings: Settings) -> list[str]:
    """The assets ``ilsvrc-assets build`` materialises after the inputs, in order, for ``settings.formats``."""
    return [asset for name in FORMATS if name in settings.formats for asset in FORMAT_ASSETS[name]]


def unbuilt_assets(settings: Settings) -> list[str]:
    """The format assets of the formats ``settings.formats`` leaves out: not built, refreshed or audited."""
    return [
        asset for name, assets in FORMAT_ASSETS.items() if name not in settings.formats for asset in assets
    ]
