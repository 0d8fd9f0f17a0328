"""The built-in sample in the Hugging Face layout: ``data/{train_images_{0..4},val_images}.tar.gz``.

Made from a release in the official layout (the built-in sample's archives): the same image bytes,
each member renamed ``<official stem>_<wnid>.JPEG``, the validation WNID from the release's devkit
ground truth. The synsets are spread over the five training files in sorted order, about a fifth
each; the validation images keep the official archive's order. No devkit, no boxes (as on the
hub). Deterministic (fixed tar header fields, no time in the gzip header), written atomically.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from pathlib import Path

from ilsvrc_assets import archives, release, synsets
from ilsvrc_assets.sample.tars import _add, _tar_writer, _Written
from ilsvrc_assets.sources.huggingface import TRAIN_FILES, VALIDATION_FILE


def hf_member(filename: str, wnid: str) -> str:
    """The hub's member name of an image: ``<official stem>_<wnid>.JPEG``."""
    stem, ext = posixpath.splitext(filename)
    return f"{stem}_{wnid}{ext}"


def write_layout(release_dir: Path, dest: Path, progress: Callable[[str], None] | None = None) -> Path:
    """Write the images of the official-layout release in ``release_dir`` into ``dest`` in the
    Hugging Face layout; return ``dest`` (for ``ILSVRC_LOCAL_DIR``)."""
    say = progress or (lambda message: None)
    devkit = synsets.read_devkit(release_dir / release.DEVKIT.name)
    wnid_of = dict(zip(devkit.leaves["ilsvrc2012_id"], devkit.leaves["wnid"]))
    labels = [wnid_of[i] for i in devkit.ground_truth]
    train_tar = release_dir / release.IMG_TRAIN.name
    train = archives.index_train_archive(train_tar, frozenset(devkit.leaves["wnid"]))
    train = train.sort_values("synset", kind="stable")
    done: list[_Written] = []
    wnids = sorted(set(train["synset"]))
    with open(train_tar, "rb") as source:
        for part, name in enumerate(TRAIN_FILES):
            mine = set(
                wnids[part * len(wnids) // len(TRAIN_FILES) : (part + 1) * len(wnids) // len(TRAIN_FILES)]
            )
            rows = train[train["synset"].isin(mine)]
            say(f"sample (huggingface layout): writing {name} ({len(rows):,} images)")
            with _tar_writer(dest / name, True, done) as tar:
                for filename, wnid, offset, size in rows.itertuples(index=False):
                    source.seek(offset)
                    _add(tar, hf_member(filename, wnid), source.read(size))
    val_tar = release_dir / release.IMG_VAL.name
    validation = archives.index_validation_archive(val_tar, labels)
    say(f"sample (huggingface layout): writing {VALIDATION_FILE} ({len(validation):,} images)")
    with open(val_tar, "rb") as source, _tar_writer(dest / VALIDATION_FILE, True, done) as tar:
        for filename, wnid, offset, size in zip(
            validation["filename"], validation["synset"], validation["offset"], validation["size"]
        ):
            source.seek(offset)
            _add(tar, hf_member(filename, wnid), source.read(size))
    return dest
