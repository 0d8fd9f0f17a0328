"""``ILSVRC_SOURCE=folder``: an already-extracted copy, its files read where they are.

``ILSVRC_LOCAL_DIR`` holds ``train/<wnid>/<wnid>_<n>.JPEG`` (what extracting the 1,000 inner tars
leaves) and ``val/``, either flat (``val/ILSVRC2012_val_<8 digits>.JPEG``, what ``tar x`` of the
validation archive leaves) or sorted (``val/<wnid>/...``, torchvision's and ImageFolder's layout).
Other files beside them (torchvision's ``meta.bin``, the archives) are not read.

There is no devkit: the ILSVRC2012_IDs and the words come from the shipped reference files, the
validation labels from the sorted folders or, for a flat ``val/``, from the shipped validation
label file (``imagenet_2012_validation_synset_labels.txt``; a flat folder carries no labels).
Boxes: from the official box archives in ``ILSVRC_BOXES_DIR`` (two more input assets, verified
as the official source verifies them), else none (the box table is empty and its check warns).

Inputs: ``train_folder`` and ``validation_folder``, each verified by its manifest of file names,
sizes and times (:func:`sources.folder_manifest`; no MD5 is published for a folder).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import pandas as pd

from ilsvrc_assets import release, synsets
from ilsvrc_assets.archives import ChecksumCache
from ilsvrc_assets.settings import ENV_BOXES_DIR, ENV_LOCAL_DIR, Settings
from ilsvrc_assets.sources import (
    BOXES,
    DEVKIT,
    TRAIN,
    VALIDATION,
    BoxFiles,
    FetchedInput,
    ImageReader,
    ImageSource,
    Input,
    Log,
    SourceError,
    folder_manifest,
)
from ilsvrc_assets.sources.official import INPUTS as OFFICIAL_INPUTS
from ilsvrc_assets.sources.official import LocalSource
from ilsvrc_assets.sources.trees import FolderTree, index_train, index_validation, sorted_validation_labels

TRAIN_DIR, VALIDATION_DIR = "train", "val"
TRAIN_FOLDER = Input(
    "train_folder",
    TRAIN_DIR,
    "the training images, train/<wnid>/<wnid>_<n>.JPEG, read where they are",
    frozenset({TRAIN}),
    "folder",
)
VALIDATION_FOLDER = Input(
    "validation_folder",
    VALIDATION_DIR,
    "the validation images, val/ flat or sorted into val/<wnid>/, read where they are (sorted: "
    "the folders are the labels)",
    frozenset({VALIDATION, DEVKIT}),
    "folder",
)
BOX_INPUTS = tuple(i for i in OFFICIAL_INPUTS if BOXES in i.feeds)


def make(settings: Settings, environ: Mapping[str, str] = os.environ) -> FolderSource:
    if settings.local_dir is None:
        raise SourceError(f"set {ENV_LOCAL_DIR} to the folder holding train/ and val/")
    return FolderSource(settings.local_dir, settings.boxes_dir)


class FolderSource(ImageSource):
    """An extracted copy: ``train/<wnid>/`` and ``val/`` (flat or sorted) under one folder."""

    kind = "folder"

    def __init__(self, root: Path, boxes_dir: Path | None = None) -> None:
        self.root = root
        self.tree = FolderTree(root)
        self.boxes = LocalSource(boxes_dir) if boxes_dir else None

    def describe(self) -> str:
        boxes = f", boxes from {self.boxes.root}" if self.boxes else ", no boxes"
        return f"extracted folder {self.root}{boxes}"

    def has_boxes(self) -> bool:
        return self.boxes is not None

    # --- Its inputs -------------------------------------------------------------------------------

    def inputs(self) -> tuple[Input, ...]:
        return (TRAIN_FOLDER, VALIDATION_FOLDER) + (BOX_INPUTS if self.boxes else ())

    def _folder(self, item: Input) -> Path:
        folder = self.root / item.name
        if not folder.is_dir():
            raise SourceError(
                f"{folder}: no such folder; set {ENV_LOCAL_DIR} to the folder holding "
                f"{TRAIN_DIR}/<wnid>/ and {VALIDATION_DIR}/"
            )
        return folder

    def observe(self, item: Input, log: Log) -> str:
        if item in BOX_INPUTS:
            assert self.boxes is not None
            return self.boxes.observe(item, log)
        return folder_manifest(self._folder(item)).version

    def fetch(self, item: Input, cache: ChecksumCache | None, log: Log) -> FetchedInput:
        if item in BOX_INPUTS:
            if self.boxes is None:
                raise SourceError(f"no boxes in this source: set {ENV_BOXES_DIR} to the box archives' folder")
            return self.boxes.fetch(item, cache, log)
        folder = self._folder(item)
        manifest = folder_manifest(folder)
        log(f"{folder}: {manifest.files:,} files, {manifest.bytes:,} bytes, manifest MD5 {manifest.md5}")
        return FetchedInput(
            input=item,
            path=folder,
            size=manifest.bytes,
            md5=manifest.md5,
            expected_md5="",
            expected_from="a folder: its manifest of paths, sizes and times, recorded",
            md5_from_cache=False,
            source_version=manifest.version,
            problems=tuple(f"{folder / name}: empty (0 bytes), cut short?" for name in manifest.empty),
            digest="manifest MD5",
        )

    # --- What the stages read ---------------------------------------------------------------------

    def read_devkit(self, log: Log) -> synsets.Devkit:
        self._folder(VALIDATION_FOLDER)
        labels = sorted_validation_labels(self.tree, VALIDATION_DIR)
        where = f"{self.root / VALIDATION_DIR}/<wnid>/ folders"
        if labels is None:
            log(f"{self.root / VALIDATION_DIR} is flat: the labels are the shipped validation label file's")
        return synsets.reference_devkit(None, "", labels, where)

    def index_images(
        self,
        split: str,
        known: Collection[str],
        labels: Sequence[str],
        log: Log,
        progress: Callable[[int, int], None] | None = None,
    ) -> pd.DataFrame:
        if split == "train":
            self._folder(TRAIN_FOLDER)
            return index_train(self.tree, TRAIN_DIR, known, progress)
        self._folder(VALIDATION_FOLDER)
        return index_validation(self.tree, VALIDATION_DIR, labels)

    def image_reader(self, split: str, log: Log) -> ImageReader:
        return self.tree.reader(TRAIN_DIR if split == "train" else VALIDATION_DIR, split)

    def box_files(self, log: Log) -> BoxFiles | None:
        return self.boxes.box_files(log) if self.boxes else None


__all__ = ["FolderSource", "make", "release"]
