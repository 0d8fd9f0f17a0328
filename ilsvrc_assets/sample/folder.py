"""The built-in sample as an extracted copy: ``<dest>/train/<wnid>/*.JPEG`` and ``<dest>/val/``.

``val/`` flat (what ``tar x`` of the validation archive leaves) or, with ``sorted_val``, sorted
into ``val/<wnid>/`` folders (torchvision's layout). No boxes: an extracted copy has none (point
``ILSVRC_BOXES_DIR`` at the official box archives to add them). Each file is written under a
temporary name and renamed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ilsvrc_assets import fileio
from ilsvrc_assets.sample import copies


def write_layout(
    release_dir: Path, dest: Path, progress: Callable[[str], None], sorted_val: bool = False
) -> Path:
    """Write the sample in ``release_dir`` as an extracted copy into ``dest``; returns ``dest``."""
    progress(f"sample: writing the training images to {dest / 'train'}")
    for wnid, filename, data in copies.train_images(release_dir):
        fileio.atomic_write_bytes(dest / "train" / wnid / filename, data)
    progress(
        f"sample: writing the validation images to {dest / 'val'} ({'sorted' if sorted_val else 'flat'})"
    )
    labels = copies.validation_labels(release_dir) if sorted_val else None
    for number, (filename, data) in enumerate(copies.validation_images(release_dir), start=1):
        folder = dest / "val" / labels[number - 1] if labels else dest / "val"
        fileio.atomic_write_bytes(folder / filename, data)
    return dest
