"""``ILSVRC_SOURCE=kaggle``: Kaggle's ImageNet Object Localization Challenge, read in place.

``kaggle competitions download -c imagenet-object-localization-challenge`` leaves one zip,
``imagenet-object-localization-challenge.zip``; ``ILSVRC_LOCAL_DIR`` names it, the folder holding
it, or the folder it was extracted into. Inside (the zip's root or the folder)::

    LOC_synset_mapping.txt                     n01440764 tench, Tinca tinca  (1,000 lines, sorted)
    LOC_val_solution.csv                       ImageId,PredictionString; class = first WNID
    LOC_train_solution.csv                     ImageId,PredictionString (the annotated subset)
    ILSVRC/Data/CLS-LOC/train/<wnid>/<wnid>_<n>.JPEG
    ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_<8 digits>.JPEG                      (flat)
    ILSVRC/Annotations/CLS-LOC/train/<wnid>/<wnid>_<n>.xml                      (VOC XML)
    ILSVRC/Annotations/CLS-LOC/val/ILSVRC2012_val_<8 digits>.xml
    ILSVRC/Data/CLS-LOC/test/, ILSVRC/ImageSets/, LOC_sample_submission.csv     (not read)

There is no devkit: the class list's words come from the mapping file, the validation ground
truth from the CSV, the ILSVRC2012_IDs from the shipped reference (:func:`synsets.reference_devkit`).
The zip is one input asset (its MD5 against an MD5SUMS beside it where there is one: Kaggle
publishes none); an extracted folder one input verified by its manifest
(:func:`sources.folder_manifest`).

Older copies hold the ``ILSVRC/`` tree as ``imagenet_object_localization_patched2019.tar.gz``
beside the CSVs and the mapping file (``ILSVRC_LOCAL_DIR``: that folder or the tarball). It is read
in place like the huggingface source's tars (:class:`trees.GzipTarTree`): one pass lists its members
and saves a seek-point index of its gzip stream under ``<data>/index/kaggle/``; images and box
files are then read from the nearest seek point. The folder is one input verified by its manifest,
its check also failing when the tarball cannot be read to its end (a truncated download).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import pandas as pd

from ilsvrc_assets import fileio, release, synsets
from ilsvrc_assets.archives import ChecksumCache, md5_of
from ilsvrc_assets.settings import ENV_LOCAL_DIR, Settings
from ilsvrc_assets.sources import (
    ROLES,
    BoxFiles,
    FetchedInput,
    ImageReader,
    ImageSource,
    Input,
    Log,
    SourceError,
    file_version,
    folder_manifest,
)
from ilsvrc_assets.sources.trees import (
    FolderTree,
    GzipTarTree,
    Tree,
    TreeBoxFiles,
    ZipTree,
    index_train,
    index_validation,
)

ZIP_NAME = "imagenet-object-localization-challenge.zip"
OLD_TARBALL = "imagenet_object_localization_patched2019.tar.gz"  # older copies: the tree as a .tar.gz
MAPPING = "LOC_synset_mapping.txt"
VAL_SOLUTION = "LOC_val_solution.csv"
TRAIN_SOLUTION = "LOC_train_solution.csv"
TRAIN_IMAGES = "ILSVRC/Data/CLS-LOC/train"
VALIDATION_IMAGES = "ILSVRC/Data/CLS-LOC/val"
TRAIN_BOXES = "ILSVRC/Annotations/CLS-LOC/train"
VALIDATION_BOXES = "ILSVRC/Annotations/CLS-LOC/val"
ASSET = "kaggle_copy"
_MAX_CSV = 256 * 1024 * 1024  # LOC_train_solution.csv is about 30 MB


def make(settings: Settings, environ: Mapping[str, str] = os.environ) -> KaggleSource:
    if settings.local_dir is None:
        raise SourceError(
            f"set {ENV_LOCAL_DIR} to Kaggle's zip, the folder holding it, or its extracted folder"
        )
    return KaggleSource(settings.local_dir, settings.index_dir / "kaggle")


class KaggleSource(ImageSource):
    """Kaggle's copy: its zip (members read in place), an older copy's folder holding the tree as a
    gzip-compressed tar (read in place through a seek-point index kept in ``index_dir``), or the
    folder it was extracted into."""

    kind = "kaggle"

    def __init__(self, path: Path, index_dir: Path | None = None) -> None:
        self.path = path
        self.zip: Path | None = None
        self.tarball: Path | None = None
        # The zip itself, or a folder holding it (and not an extracted copy): read the zip. The
        # older tarball likewise, the CSVs and the mapping beside it.
        if path.suffix == ".zip":
            self.zip = path
        elif path.name.endswith(".tar.gz"):
            self.tarball, self.path = path, path.parent
        elif not (path / "ILSVRC").exists():
            if (path / ZIP_NAME).is_file():
                self.zip = path / ZIP_NAME
            elif (path / OLD_TARBALL).is_file():
                self.tarball = path / OLD_TARBALL
        self.tree: Tree
        if self.zip:
            self.tree = ZipTree(self.zip)
        elif self.tarball:
            if index_dir is None:
                raise SourceError(f"{self.tarball}: reading a tarball in place needs a folder for its index")
            self.tree = GzipTarTree(self.tarball, index_dir)
        else:
            self.tree = FolderTree(self.path)
        # The CSVs and the mapping: in the zip, or in the folder (beside the tarball).
        self.texts: Tree = self.tree if self.zip else FolderTree(self.path)

    def describe(self) -> str:
        if self.zip:
            return f"Kaggle's copy, zip {self.zip}"
        if self.tarball:
            return f"Kaggle's older copy, {self.path} with the tree as {self.tarball.name} (read in place)"
        return f"Kaggle's copy, extracted folder {self.path}"

    # --- Its input: the zip or the folder ---------------------------------------------------

    def inputs(self) -> tuple[Input, ...]:
        if self.zip:
            return (
                Input(
                    ASSET,
                    self.zip.name,
                    "Kaggle's ImageNet Object Localization Challenge zip, read in place (members by offset)",
                    frozenset(ROLES),
                    "zip",
                ),
            )
        if self.tarball:
            what = (
                f"with the tree as {self.tarball.name}, read in place (a seek-point index of its gzip stream)"
            )
        else:
            what = "extracted; files read where they are"
        return (
            Input(
                ASSET,
                self.path.name,
                f"Kaggle's ImageNet Object Localization Challenge, {what}",
                frozenset(ROLES),
                "folder",
            ),
        )

    def observe(self, item: Input, log: Log) -> str:
        if self.zip:
            if not self.zip.is_file():
                raise SourceError(f"{self.zip}: not found; set {ENV_LOCAL_DIR} to Kaggle's zip")
            return file_version(self.zip)
        self._check_folder()
        return folder_manifest(self.path).version

    def _check_folder(self) -> None:
        if self.tarball:
            if not self.tarball.is_file():
                raise SourceError(f"{self.tarball}: not found; set {ENV_LOCAL_DIR} to the folder holding it")
            return
        if not (self.path / TRAIN_IMAGES).is_dir():
            raise SourceError(
                f"{self.path}: no {TRAIN_IMAGES}/, no {ZIP_NAME} and no {OLD_TARBALL}: set {ENV_LOCAL_DIR} "
                f"to Kaggle's zip, the folder holding it or the folder it was extracted into"
            )

    def fetch(self, item: Input, cache: ChecksumCache | None, log: Log) -> FetchedInput:
        version = self.observe(item, log)
        if self.zip:
            # Reading the central directory first finds a zip cut short before hashing 155 GB.
            problems: tuple[str, ...] = ()
            try:
                for _ in self.tree.files(TRAIN_IMAGES):
                    break
            except SourceError as e:
                problems = (str(e),)
            md5, cached = md5_of(self.zip, cache)
            log(
                f"{self.zip.name}: MD5 {md5} " + ("(unchanged since last verified)" if cached else "computed")
            )
            sums = self.zip.parent / release.MD5SUMS
            listed = fileio.read_md5sums(sums).get(self.zip.name, "") if sums.is_file() else ""
            return FetchedInput(
                input=item,
                path=self.zip,
                size=self.zip.stat().st_size,
                md5=md5,
                expected_md5=listed,
                expected_from=str(sums) if listed else f"Kaggle publishes no MD5; none in {sums}",
                md5_from_cache=cached,
                source_version=version,
                problems=problems,
            )
        manifest = folder_manifest(self.path)
        log(f"{self.path}: {manifest.files:,} files, {manifest.bytes:,} bytes, manifest MD5 {manifest.md5}")
        problems = tuple(f"{self.path / name}: empty (0 bytes), cut short?" for name in manifest.empty)
        if self.tarball:
            # The one pass that lists the tarball and saves its seek-point index reads it to the
            # end (gzip's CRC and length): a truncated download fails the check here.
            try:
                for _ in self.tree.files(TRAIN_IMAGES):
                    break
                log(f"{self.tarball.name}: read to its end, seek-point index saved")
            except SourceError as e:
                problems += (str(e),)
        return FetchedInput(
            input=item,
            path=self.path,
            size=manifest.bytes,
            md5=manifest.md5,
            expected_md5="",
            expected_from="a folder: its manifest of paths, sizes and times, recorded",
            md5_from_cache=False,
            source_version=version,
            problems=problems,
            digest="manifest MD5",
        )

    # --- What the stages read -----------------------------------------------------------------

    def _read_text(self, name: str) -> str:
        data = self.texts.read(name, _MAX_CSV)
        if data is None:
            raise SourceError(f"{self.texts.name(name)}: not found; is this Kaggle's complete copy?")
        return data.decode("utf-8-sig", errors="replace")

    def read_devkit(self, log: Log) -> synsets.Devkit:
        if not self.zip:
            self._check_folder()
        words = read_mapping(self._read_text(MAPPING), self.texts.name(MAPPING))
        labels = read_val_solution(self._read_text(VAL_SOLUTION), self.texts.name(VAL_SOLUTION), words)
        return synsets.reference_devkit(
            words, self.texts.name(MAPPING), labels, self.texts.name(VAL_SOLUTION)
        )

    def index_images(
        self,
        split: str,
        known: Collection[str],
        labels: Sequence[str],
        log: Log,
        progress: Callable[[int, int], None] | None = None,
    ) -> pd.DataFrame:
        if not self.zip:
            self._check_folder()
        if split == "train":
            return index_train(self.tree, TRAIN_IMAGES, known, progress)
        return index_validation(self.tree, VALIDATION_IMAGES, labels)

    def image_reader(self, split: str, log: Log) -> ImageReader:
        return self.tree.reader(TRAIN_IMAGES if split == "train" else VALIDATION_IMAGES, split)

    def box_files(self, log: Log) -> BoxFiles:
        # The CSV is Kaggle's summary of the same XML files: a row naming a class that is not one
        # of the 1,000 means a damaged or foreign copy.
        rows = check_train_solution(self._read_text(TRAIN_SOLUTION), self.texts.name(TRAIN_SOLUTION))
        log(f"{TRAIN_SOLUTION}: {rows:,} annotated training images, every class a challenge synset")
        return TreeBoxFiles(self.tree, TRAIN_BOXES, VALIDATION_BOXES)


# --- The CSVs and the mapping --------------------------------------------------------------------


def read_mapping(text: str, where: str) -> dict[str, str]:
    """``LOC_synset_mapping.txt``: {WNID: words}, one ``<wnid> <words>`` per line."""
    words: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        wnid, _, text_ = line.strip().partition(" ")
        if not release.is_wnid(wnid):
            raise synsets.DevkitError(f"{where} line {number}: {line[:60]!r} is not '<wnid> <words>'")
        if wnid in words:
            raise synsets.DevkitError(f"{where} line {number}: {wnid} is listed twice")
        words[wnid] = text_.strip()
    return words


def _solution_rows(text: str, where: str) -> csv.reader:
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
        raise SourceError(f"{where}: the first line is not 'ImageId,PredictionString'")
    return rows


def _wnids(prediction: str, where: str, known: Collection[str]) -> list[str]:
    values = prediction.split()
    if not values or len(values) % 5:
        raise SourceError(
            f"{where}: PredictionString {prediction[:60]!r} is not groups of 'wnid xmin ymin xmax ymax'"
        )
    wnids = values[::5]
    for wnid in wnids:
        if wnid not in known:
            raise SourceError(f"{where}: {wnid!r} is not one of the 1,000 challenge synsets")
    return wnids


def read_val_solution(text: str, where: str, known: Collection[str]) -> list[str]:
    """``LOC_val_solution.csv``: the validation labels (element i - 1 for image i; class = first WNID).

    Refuses (naming the file and line) another image name, an unknown WNID, an image twice and
    numbers missing in between.
    """
    found: dict[int, str] = {}
    rows = _solution_rows(text, where)
    for row in rows:
        line = f"{where} line {rows.line_num}"
        if len(row) < 2:
            raise SourceError(f"{line}: not 'ImageId,PredictionString'")
        try:
            number = release.validation_number(row[0].strip() + ".JPEG")
        except ValueError:
            raise SourceError(
                f"{line}: {row[0][:40]!r} is not a validation image ID 'ILSVRC2012_val_<8 digits>'"
            ) from None
        if number in found:
            raise SourceError(f"{line}: {row[0]} appears twice")
        found[number] = _wnids(row[1], line, known)[0]
    if missing := sorted(set(range(1, max(found, default=0) + 1)) - found.keys()):
        raise SourceError(
            f"{where}: no row for {len(missing):,} images, e.g. {release.validation_filename(missing[0])}"
        )
    return [found[n] for n in range(1, len(found) + 1)]


def check_train_solution(text: str, where: str) -> int:
    """``LOC_train_solution.csv``: every row a training image of a challenge synset with boxes of
    challenge synsets; the number of rows. Refuses, naming the file and line, what is not."""
    known = frozenset(release.challenge_synsets())
    rows = _solution_rows(text, where)
    count = 0
    for row in rows:
        line = f"{where} line {rows.line_num}"
        if len(row) < 2:
            raise SourceError(f"{line}: not 'ImageId,PredictionString'")
        wnid, _, number = row[0].strip().rpartition("_")
        if wnid not in known or not number.isdigit():
            raise SourceError(
                f"{line}: {row[0][:40]!r} is not a training image '<wnid>_<n>' of a challenge synset"
            )
        _wnids(row[1], line, known)
        count += 1
    return count
