"""Reading the generated official sample back, for the modules that lay it out as other copies have it.

Each yields the same bytes the official archives hold, in a fixed order, so a copy written from
them (``sample/kaggle.py``, ``sample/folder.py``) holds exactly the sample's images and boxes.
The sample is small (a few MB); reading it with ``tarfile`` is fine here.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

from ilsvrc_assets import release, synsets


def train_images(release_dir: Path) -> Iterator[tuple[str, str, bytes]]:
    """(wnid, file name, bytes) of every training image, synset by synset in sorted order."""
    with tarfile.open(release_dir / release.IMG_TRAIN.name) as outer:
        inner_members = sorted((m for m in outer.getmembers() if m.isfile()), key=lambda m: m.name)
        for inner_member in inner_members:
            wnid = inner_member.name.removesuffix(".tar")
            with tarfile.open(fileobj=outer.extractfile(inner_member)) as inner:
                for member in sorted((m for m in inner.getmembers() if m.isfile()), key=lambda m: m.name):
                    yield wnid, member.name, inner.extractfile(member).read()  # type: ignore[union-attr]


def validation_images(release_dir: Path) -> Iterator[tuple[str, bytes]]:
    """(file name, bytes) of every validation image, in number order."""
    with tarfile.open(release_dir / release.IMG_VAL.name) as tar:
        for member in sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name):
            yield member.name, tar.extractfile(member).read()  # type: ignore[union-attr]


def box_files(archive: Path) -> Iterator[tuple[str, bytes]]:
    """(member name, XML bytes) of a box archive, in sorted order."""
    with tarfile.open(archive, "r:gz") as tar:
        for member in sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name):
            yield member.name, tar.extractfile(member).read()  # type: ignore[union-attr]


def devkit(release_dir: Path) -> synsets.Devkit:
    return synsets.read_devkit(release_dir / release.DEVKIT.name)


def validation_labels(release_dir: Path) -> list[str]:
    """The sample's validation labels (element i - 1 for image i), from its devkit."""
    kit = devkit(release_dir)
    return synsets.validation_labels(kit, kit.leaves)
