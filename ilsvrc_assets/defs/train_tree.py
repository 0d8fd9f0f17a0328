"""``train_tree``: ``<data>/train/<wnid>/<wnid>_<n>.JPEG``, the training ImageFolder tree (opt-in).

The work is in :mod:`ilsvrc_assets.train_tree` (``make_train_tree`` and the check's verdict). In the
code location, so it can be materialised from the UI (or its job, ``write_train_tree``), but left
out of ``ilsvrc-assets build``, the audit and the refresh unless asked
(``ILSVRC_FORMATS=tfrecord,imagefolder``: ``defs/outputs.FORMAT_ASSETS``, ``definitions.left_out``).
"""

from dagster import AssetCheckResult, AssetExecutionContext, MaterializeResult, asset, asset_check

from ilsvrc_assets import train_tree as tree
from ilsvrc_assets.defs.metadata import check_result, materialized
from ilsvrc_assets.defs.resources import IlsvrcResource


@asset(
    group_name="imagefolder",
    deps=["train_images", "train_archive"],
    kinds={"folder"},
    description="The training images sorted into one folder per synset, "
    "`<data>/train/<wnid>/<wnid>_<n>.JPEG` (with `<data>/validation/`, what PyTorch's ImageFolder "
    "reads), each the archive member's bytes as they are, made in one pass over the train tar. "
    "Opt-in: the whole training set again (about 140 GB), not part of `ilsvrc-assets build` "
    "unless asked. Re-runnable: images already in place are kept, anything else removed.",
)
def train_tree(context: AssetExecutionContext, ilsvrc: IlsvrcResource) -> MaterializeResult:
    return materialized(tree.make_train_tree(ilsvrc.settings(), ilsvrc.image_source(), context.log.info))


@asset_check(
    asset=train_tree,
    blocking=True,  # nothing is downstream, but an audit that finds damage must fail its run
    description="The tree on disk matches the training image index exactly: one folder per synset "
    "(1,000), each holding the images the index lists for it at their indexed sizes, nothing else.",
)
def matches_train_index(ilsvrc: IlsvrcResource) -> AssetCheckResult:
    return check_result(tree.train_tree_verdict(ilsvrc.settings()))
