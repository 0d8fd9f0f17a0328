"""The built-in sample as Kaggle's copy: ``imagenet-object-localization-challenge.zip``.

The zip holds what Kaggle's does (``sources/kaggle.py`` lists it): the mapping file, the two
solution CSVs (made from the sample's box XML, as Kaggle made theirs), the images under
``ILSVRC/Data/CLS-LOC/`` (validation flat) and the box XML under ``ILSVRC/Annotations/CLS-LOC/``.
Images are stored, text deflated, so both ways of reading a member are exercised. Deterministic:
fixed member times, sorted order. Written under a temporary name, renamed when complete.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from lxml import etree

from ilsvrc_assets import fileio, release
from ilsvrc_assets.sample import copies
from ilsvrc_assets.sources import kaggle

_DATE_TIME = (2019, 1, 1, 0, 0, 0)  # the time of Kaggle's patched copy; fixed for reproducible bytes


def _member(name: str, deflated: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, _DATE_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def _groups(objects: Iterable[tuple[str, tuple[str, str, str, str]]]) -> str:
    return " ".join(f"{name} {' '.join(box)}" for name, box in objects)


def _objects(xml: bytes, folder: str) -> list[tuple[str, tuple[str, str, str, str]]]:
    """(class, (xmin, ymin, xmax, ymax) as written) of each object; a text label counts for the folder."""
    root = etree.fromstring(xml, etree.XMLParser(resolve_entities=False, no_network=True))
    found = []
    known = set(release.challenge_synsets())
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if box is None:
            continue
        coords = tuple((box.findtext(k) or "0").strip() for k in ("xmin", "ymin", "xmax", "ymax"))
        found.append((name if name in known else folder, coords))
    return found


def write_layout(release_dir: Path, dest: Path, progress: Callable[[str], None]) -> Path:
    """Write the sample in ``release_dir`` as Kaggle's zip into ``dest``; returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    kit = copies.devkit(release_dir)
    labels = copies.validation_labels(release_dir)
    words = dict(zip(kit.leaves["wnid"], kit.leaves["words"]))
    progress(f"sample: writing {kaggle.ZIP_NAME}")
    with fileio.atomic_write(dest / kaggle.ZIP_NAME) as f, zipfile.ZipFile(f, "w") as z:
        mapping = "".join(f"{w} {words[w]}\n" for w in sorted(words))
        z.writestr(_member(kaggle.MAPPING, True), mapping)
        train_rows = ["ImageId,PredictionString"]
        for name, xml in copies.box_files(release_dir / release.BBOX_TRAIN.name):
            wnid, _, filename = name.partition("/")
            z.writestr(_member(f"{kaggle.TRAIN_BOXES}/{name}", True), xml)
            if objects := _objects(xml, wnid):
                train_rows.append(f"{filename.removesuffix('.xml')},{_groups(objects)}")
        val_rows = ["ImageId,PredictionString"]
        for name, xml in copies.box_files(release_dir / release.BBOX_VAL.name):
            filename = name.removeprefix("val/")
            stem = filename.removesuffix(".xml")
            z.writestr(_member(f"{kaggle.VALIDATION_BOXES}/{filename}", True), xml)
            label = labels[release.validation_number(stem + ".JPEG") - 1]
            # The class first (what a reader takes), then every box under the class.
            boxes = [(label, box) for _, box in _objects(xml, label)] or [(label, ("0", "0", "0", "0"))]
            val_rows.append(f"{stem},{_groups(boxes)}")
        z.writestr(_member(kaggle.TRAIN_SOLUTION, True), "\n".join(train_rows) + "\n")
        z.writestr(_member(kaggle.VAL_SOLUTION, True), "\n".join(val_rows) + "\n")
        for wnid, filename, data in copies.train_images(release_dir):
            z.writestr(_member(f"{kaggle.TRAIN_IMAGES}/{wnid}/{filename}", False), data)
        for filename, data in copies.validation_images(release_dir):
            z.writestr(_member(f"{kaggle.VALIDATION_IMAGES}/{filename}", False), data)
    progress(f"sample: wrote {dest / kaggle.ZIP_NAME} ({(dest / kaggle.ZIP_NAME).stat().st_size:,} bytes)")
    return dest
