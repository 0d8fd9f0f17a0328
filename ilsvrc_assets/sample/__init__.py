"""A deterministic stand-in for the ILSVRC2012 release: the five archives, tiny images, full structure.

The official archives need an ImageNet login and weigh 155 GB. This package writes archives with the
same names and exactly the same internal layouts (a tar of 1,000 inner ``<wnid>.tar``, 50,000 flat
validation JPEGs in shuffled order, the devkit's ``meta.mat`` and ground truth, PASCAL VOC XML boxes),
with tiny images, so every step and check of the preparation runs unchanged on it. It also carries
the release's known traps: the PNG and the 22 CMYK files under their real names, grayscale JPEGs,
devkit IDs that are not in alphabetical order, and bounding-box XML with float, reversed, zero-area
and out-of-image boxes, text labels, foreign WNIDs, junk ``<filename>`` and a differing ``<size>``.

Everything is a function of :class:`SampleSpec`: the same spec gives byte-identical archives (tar
headers carry fixed times and owners, gzip headers no time or name, ``meta.mat`` a fixed header).
``SAMPLE.json`` beside the archives records the spec, the counts, and which file holds which oddity,
so tests can assert against it rather than re-derive it.

The package, in the order the bytes are made:

- :mod:`~ilsvrc_assets.sample.spec`: :class:`SampleSpec` (what to generate) and :data:`SAMPLE_VERSION`;
- :mod:`~ilsvrc_assets.sample.plan`: every name, size and box, decided before any byte is written;
- :mod:`~ilsvrc_assets.sample.render`: the bytes of images, XML and ``meta.mat``;
- :mod:`~ilsvrc_assets.sample.tars`: deterministic streamed tar and gzip archives;
- this module: writing the release (:func:`write_release`), the bounding-box archive at the
  release's scale for benchmarks, and the cache of a generated sample (:func:`ensure_sample`).
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import secrets
import shutil
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ilsvrc_assets import fileio, release
from ilsvrc_assets.sample.plan import ODDITIES, _box, _Image, _inside, _Object, _plan, reference_kept_boxes
from ilsvrc_assets.sample.render import DEMO_EVAL, DEVKIT_README, _meta_mat, _xml, encoded_batches
from ilsvrc_assets.sample.spec import SAMPLE_VERSION, SampleSpec, full_count_spec
from ilsvrc_assets.sample.tars import TAR_FORMAT, TAR_MTIME, _add, _add_dir, _tar_writer, _Written

__all__ = [
    "FULL_SCALE_TRAIN_BBOX_FILES",
    "ODDITIES",
    "SAMPLE_JSON",
    "SAMPLE_VERSION",
    "TAR_MTIME",
    "SampleError",
    "SampleSpec",
    "describe",
    "ensure_sample",
    "full_count_spec",
    "is_complete",
    "reference_kept_boxes",
    "write_release",
    "write_train_boxes_at_scale",
]

SAMPLE_JSON = "SAMPLE.json"


class SampleError(RuntimeError):
    """The sample cannot be generated or cached where asked; the message says what to do."""


def _inner_tar(images: Sequence[_Image], encoded: Sequence[bytes]) -> bytes:
    buffer = io.BytesIO()  # one synset's inner tar is small (a few KB per image): in memory is fine
    with tarfile.open(fileobj=buffer, mode="w", format=TAR_FORMAT) as inner:
        for image, data in zip(images, encoded, strict=True):
            _add(inner, image.filename, data)
    return buffer.getvalue()


# Validation images are encoded in batches of this many (one task for an encoding process).
_VALIDATION_BATCH = 500


def write_release(
    dest: Path,
    spec: SampleSpec = SampleSpec(),
    progress: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Write the five archives and an ``MD5SUMS`` file (md5sum format) into ``dest``; return {archive name: md5}.

    Each archive is written atomically, member by member. ``SAMPLE.json`` records the version, the
    spec, the counts (synsets, train images, validation images, train bbox files, boxes), each
    archive's size and MD5, the special image files, and which XML holds which oddity. The same
    spec always gives byte-identical archives.
    """
    spec.validate()
    say = progress or (lambda message: None)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    plan = _plan(spec)
    written: dict[str, _Written] = {}
    done: list[_Written] = []

    def finish(name: str) -> None:
        written[name] = done.pop()
        say(f"sample: wrote {name} ({written[name].size:,} bytes) after {time.monotonic() - started:.1f} s")

    num_train = sum(len(images) for images in plan.train.values())
    say(f"sample: writing {release.IMG_TRAIN.name} ({num_train:,} images in {len(plan.train):,} inner tars)")
    with _tar_writer(dest / release.IMG_TRAIN.name, False, done) as tar:
        synsets = (plan.train[wnid] for wnid in plan.synset_order)  # one batch per synset
        for wnid, encoded in zip(plan.synset_order, encoded_batches(spec, synsets, train=True), strict=True):
            _add(tar, f"{wnid}.tar", _inner_tar(plan.train[wnid], encoded))
    finish(release.IMG_TRAIN.name)

    say(f"sample: writing {release.IMG_VAL.name} ({len(plan.validation):,} images)")
    with _tar_writer(dest / release.IMG_VAL.name, False, done) as tar:
        order = [plan.validation[number - 1] for number in plan.validation_order]
        batches = [order[i : i + _VALIDATION_BATCH] for i in range(0, len(order), _VALIDATION_BATCH)]
        count = 0
        for batch, encoded in zip(batches, encoded_batches(spec, batches, train=False), strict=True):
            for image, data in zip(batch, encoded, strict=True):
                _add(tar, image.filename, data)
            count += len(batch)
            if count // 10_000 > (count - len(batch)) // 10_000:  # a multiple of 10,000 passed
                say(f"sample: {count:,} of {len(plan.validation):,} validation images")
    finish(release.IMG_VAL.name)

    say(f"sample: writing {release.DEVKIT.name}")
    train_counts = {wnid: len(images) for wnid, images in plan.train.items()}
    ground_truth = "".join(f"{plan.ids[wnid]}\n" for wnid in release.validation_synsets())
    root = release.DEVKIT_META_MAT.split("/")[0]
    readme = DEVKIT_README.format(version=SAMPLE_VERSION, fields=", ".join(release.META_MAT_SYNSET_FIELDS))
    with _tar_writer(dest / release.DEVKIT.name, True, done) as tar:
        for folder in (root, f"{root}/data", f"{root}/evaluation"):
            _add_dir(tar, folder)
        _add(tar, f"{root}/readme.txt", readme.encode())
        _add(tar, release.DEVKIT_META_MAT, _meta_mat(spec, plan.ids, train_counts))
        _add(tar, release.DEVKIT_VALIDATION_GROUND_TRUTH, ground_truth.encode())
        _add(tar, f"{root}/evaluation/demo_eval.m", DEMO_EVAL.encode())
    finish(release.DEVKIT.name)

    say(f"sample: writing {release.BBOX_TRAIN.name} ({len(plan.annotations):,} XML files)")
    train_boxes = kept = 0
    with _tar_writer(dest / release.BBOX_TRAIN.name, True, done) as tar:
        folder = None
        for annotation in plan.annotations:
            if annotation.folder != folder:
                folder = annotation.folder
                _add_dir(tar, folder)
            a = annotation
            _add(tar, a.member, _xml(a.folder, a.filename_text, a.frame, a.objects))
            train_boxes += len(a.objects)
            kept += reference_kept_boxes(a.folder, a.frame, [(o.name, o.box) for o in a.objects])
    finish(release.BBOX_TRAIN.name)

    say(f"sample: writing {release.BBOX_VAL.name} ({len(plan.validation):,} XML files)")
    with _tar_writer(dest / release.BBOX_VAL.name, True, done) as tar:
        _add_dir(tar, "val")
        for image, objects in zip(plan.validation, plan.validation_boxes):
            stem = image.filename.removesuffix(".JPEG")
            _add(tar, f"val/{stem}.xml", _xml("val", stem, (image.width, image.height), objects))
    finish(release.BBOX_VAL.name)

    md5s = {name: w.md5 for name, w in written.items()}
    all_train = [image for wnid in sorted(plan.train) for image in plan.train[wnid]]
    description = {
        "version": SAMPLE_VERSION,
        "spec": spec.as_json(),
        "counts": {
            "synsets": len(plan.train),
            "train_images": num_train,
            "validation_images": len(plan.validation),
            "train_bbox_files": len(plan.annotations),
            "boxes": train_boxes,  # <object>s in the training XML files
            "train_boxes_kept_by_reference": kept,  # rows of the reference bounding-box CSV
            "validation_boxes": sum(len(b) for b in plan.validation_boxes),
        },
        "archives": {name: {"size": w.size, "md5": w.md5} for name, w in written.items()},
        "special_files": {
            "png": sorted(i.filename for i in all_train if i.kind == "png"),
            "cmyk": sorted(i.filename for i in all_train if i.kind == "cmyk"),
            "train_grayscale": sorted(i.filename for i in all_train if i.kind == "gray"),
            "validation_grayscale": sorted(i.filename for i in plan.validation if i.kind == "gray"),
        },
        "oddities": plan.oddities,
    }
    fileio.atomic_write_text(dest / release.MD5SUMS, fileio.format_md5sums(md5s))
    # Written last: its presence with the right version and spec marks the folder complete.
    fileio.atomic_write_text(dest / SAMPLE_JSON, json.dumps(description, indent=1) + "\n")
    say(f"sample: done in {time.monotonic() - started:.1f} s")
    return md5s


def describe(dest: Path) -> dict:
    """The parsed ``SAMPLE.json`` of a generated sample (version, spec, counts, archives, oddities)."""
    path = Path(dest) / SAMPLE_JSON
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: not found; {dest} holds no generated sample (run ensure_sample first)"
        ) from None
    except json.JSONDecodeError as e:
        raise SampleError(f"{path}: not valid JSON ({e}); delete {dest} and generate the sample again") from e


def is_complete(dest: Path, spec: SampleSpec = SampleSpec()) -> bool:
    """True when ``dest`` holds a whole sample of this SAMPLE_VERSION and spec.

    SAMPLE.json must match, MD5SUMS must list all five archives with the MD5s SAMPLE.json recorded,
    and every archive must exist with its recorded size (sizes, not digests: hashing is for the
    archive checks downstream).
    """
    dest = Path(dest)
    try:
        info = json.loads((dest / SAMPLE_JSON).read_text())
        sums = fileio.read_md5sums(dest / release.MD5SUMS)
    except (OSError, ValueError):
        return False
    if (
        not isinstance(info, dict)
        or info.get("version") != SAMPLE_VERSION
        or info.get("spec") != spec.as_json()
    ):
        return False
    archives = info.get("archives") or {}
    for archive in release.ARCHIVES:
        recorded = archives.get(archive.name) or {}
        if sums.get(archive.name) is None or sums[archive.name] != recorded.get("md5"):
            return False
        try:
            if (dest / archive.name).stat().st_size != recorded.get("size"):
                return False
        except OSError:
            return False
    return True


def _owned_names() -> set[str]:
    return {a.name for a in release.ARCHIVES} | {release.MD5SUMS, SAMPLE_JSON}


def _check_replaceable(cache_dir: Path) -> None:
    """Refuse to replace a folder that holds anything but a (stale) sample: it is not ours to delete."""
    if cache_dir.exists() and not cache_dir.is_dir():
        raise SampleError(
            f"{cache_dir}: exists and is not a folder; point the sample cache elsewhere or remove it"
        )
    if cache_dir.is_dir():
        owned = _owned_names()
        foreign = sorted(
            p.name for p in cache_dir.iterdir() if p.name not in owned and not fileio.is_temp_path(p)
        )
        if foreign:
            raise SampleError(
                f"{cache_dir}: holds files that are not part of the sample ({', '.join(foreign[:5])}); "
                f"the sample cache must be a folder of its own: move those files or choose another folder"
            )


def ensure_sample(
    cache_dir: Path,
    spec: SampleSpec = SampleSpec(),
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Generate the sample once and cache it in ``cache_dir``; return ``cache_dir`` (made absolute).

    A complete sample of this SAMPLE_VERSION and spec (see :func:`is_complete`) is reused as it is.
    Otherwise the sample is generated into a temporary sibling folder and renamed into place, so an
    interrupted generation never looks complete. Two processes may race: one rename wins, the
    other finds the winner's sample complete and removes its own temporary folder.
    """
    say = progress or (lambda message: None)
    cache_dir = Path(cache_dir).absolute()
    if is_complete(cache_dir, spec):
        say(f"sample: using the cached sample v{SAMPLE_VERSION} in {cache_dir}")
        return cache_dir
    _check_replaceable(cache_dir)  # fail before spending the time to generate
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir.with_name(f".{cache_dir.name}{fileio.TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        say(f"sample: generating sample v{SAMPLE_VERSION} (seed {spec.seed}) into {cache_dir}")
        write_release(tmp, spec, progress)
        _install(tmp, cache_dir, spec)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left once renamed; the loser's copy otherwise
    return cache_dir


def _install(tmp: Path, cache_dir: Path, spec: SampleSpec) -> None:
    """Rename the finished ``tmp`` to ``cache_dir``, moving a stale sample out of the way first."""
    for _ in range(5):
        if is_complete(cache_dir, spec):
            return  # another process installed the same sample meanwhile
        try:
            os.rename(tmp, cache_dir)  # atomic; replaces a missing or empty folder only
            return
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise SampleError(f"{cache_dir}: cannot move the generated sample into place ({e})") from e
        _check_replaceable(cache_dir)
        # A stale or partial sample is in the way: rename it aside (atomic, so only one process
        # does it) and delete it there, never in place where a reader could see it half-deleted.
        stale = cache_dir.with_name(
            f".{cache_dir.name}.stale{fileio.TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
        )
        try:
            os.rename(cache_dir, stale)
        except FileNotFoundError:
            continue  # someone else moved it
        shutil.rmtree(stale, ignore_errors=True)
    raise SampleError(
        f"{cache_dir}: could not install the generated sample after several attempts; "
        f"is another process replacing it? Try again"
    )


# --- The training boxes at the release's scale, for benchmarks -----------------------------------


# The release's training bounding-box archive holds this many XML files (one per annotated image).
FULL_SCALE_TRAIN_BBOX_FILES = 544_546


def write_train_boxes_at_scale(path: Path, files: int = FULL_SCALE_TRAIN_BBOX_FILES, seed: int = 2012) -> int:
    """Write a stand-in ``ILSVRC2012_bbox_train_v2.tar.gz`` with ``files`` XML files; return the boxes.

    For benchmarks of the bounding-box table at the release's scale: the files are spread evenly
    over the 1,000 synsets' folders, each an ordinary annotation (500 x 375 or so, 1 to 3 boxes)
    laid out like the release's. The images they name are not in any train archive.
    """
    rng = random.Random(f"{seed}:train boxes at scale")
    synsets = release.challenge_synsets()
    boxes = 0
    with _tar_writer(path, True, []) as tar:
        for n, wnid in enumerate(synsets):
            count = files // len(synsets) + (1 if n < files % len(synsets) else 0)
            _add_dir(tar, wnid)
            for k in range(count):
                frame = (rng.randint(300, 500), rng.randint(300, 500))
                objects = [
                    _Object(wnid, _box(_inside(rng, *frame)))
                    for _ in range(rng.choices((1, 2, 3), (70, 20, 10))[0])
                ]
                stem = f"{wnid}_{k + 1}"
                _add(tar, f"{wnid}/{stem}.xml", _xml(wnid, stem, frame, objects))
                boxes += len(objects)
    return boxes
