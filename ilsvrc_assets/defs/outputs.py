"""Which assets each output format is, and so what ``ILSVRC_FORMATS`` has ``ilsvrc-assets build`` write.

Every format's assets are in the code location whatever the setting says (each can be materialised
from the UI); the setting decides what the build materialises, and so what the refresh rebuilds and
what the audit checks: the outputs that were built.
"""

from ilsvrc_assets.settings import FORMATS, Settings, SettingsError

# Format (a value of ILSVRC_FORMATS) -> its assets, in the order the build materialises them (after the
# inputs, which every format needs). A partitioned asset is built as one run of all its partitions.
FORMAT_ASSETS: dict[str, tuple[str, ...]] = {
    "tfrecord": ("train_shards", "validation_shards", "dataset_manifest"),
    "webdataset": ("train_webdataset", "validation_webdataset", "webdataset_manifest"),
    # The training ImageFolder tree (issue 11, item 3) is not in this code location yet: its asset's
    # name goes here. Until then, choosing `imagefolder` stops the build with a message saying so.
    "imagefolder": (),
}
assert set(FORMAT_ASSETS) == set(FORMATS), "every value of ILSVRC_FORMATS needs its assets here"


class NotAvailableError(SettingsError):
    """A chosen format has no assets in this code location."""


def built_assets(settings: Settings) -> list[str]:
    """The assets ``ilsvrc-assets build`` materialises after the inputs, in order, for ``settings.formats``."""
    if missing := [name for name in settings.formats if not FORMAT_ASSETS[name]]:
        raise NotAvailableError(
            f"ILSVRC_FORMATS names {', '.join(missing)}, which this version cannot build yet (no asset "
            f"writes it); leave it out of ILSVRC_FORMATS"
        )
    return [asset for name in settings.formats for asset in FORMAT_ASSETS[name]]


def unbuilt_assets(settings: Settings) -> list[str]:
    """The format assets of the formats ``settings.formats`` leaves out: not refreshed, not audited."""
    return [
        asset for name, assets in FORMAT_ASSETS.items() if name not in settings.formats for asset in assets
    ]
