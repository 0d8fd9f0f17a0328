"""The test suite's plain helpers, in one module: settings for a private output folder, damaged
variants of the sample release, running the graph, the fault-injection tools and small images.

Fixtures live in ``conftest.py`` (which imports what it needs from here); test files import helpers
from here only, never from ``conftest.py`` or from one another.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ilsvrc_assets import fileio, images, release
from ilsvrc_assets.download import archive_url
from ilsvrc_assets.formats import tfrecord
from ilsvrc_assets.release import DEVKIT
from ilsvrc_assets.settings import Settings
from ilsvrc_assets.shard_plan import RecordSource
from ilsvrc_assets.tf_example import encode_example

if TYPE_CHECKING:  # Dagster is imported where a graph runs: the plain-library tests stay light
    from dagster import DagsterInstance

# Small shard counts keep the graph tests fast; the shard names keep the real pattern.
TEST_SHARDS = {"train": 8, "validation": 4}

# --- Settings and variants of the sample release ---------------------------------------------


def make_settings(data_dir: Path, local_dir: Path | None, **overrides) -> Settings:
    """Settings for a local-folder source and a private output folder."""
    values = dict(
        source="local",
        data_dir=data_dir,
        local_dir=local_dir,
        http_url=None,
        sample_dir=data_dir / "sample",
        num_shards=dict(TEST_SHARDS),
        workers=2,
    )
    values.update(overrides)
    return Settings(**values)


def variant_release(
    sample_dir: Path, dest: Path, update_md5sums: bool = True, **replacements: Callable[[Path, Path], None]
) -> Path:
    """A copy of the sample in ``dest`` with some archives rewritten.

    Unchanged archives are symlinked (no copying of the large ones). ``replacements`` maps an
    archive key (``release.Archive.key``) to ``write(original, target)``. MD5SUMS lists the new
    digests when ``update_md5sums`` (so only the intended check fails), else the sample's.
    """
    dest.mkdir(parents=True, exist_ok=True)
    sums = fileio.read_md5sums(sample_dir / "MD5SUMS")
    for archive in release.ARCHIVES:
        target = dest / archive.name
        if archive.key in replacements:
            replacements[archive.key](sample_dir / archive.name, target)
            if update_md5sums:
                sums[archive.name] = fileio.md5_file(target)
        else:
            target.symlink_to(sample_dir / archive.name)
    (dest / "MD5SUMS").write_text(fileio.format_md5sums(sums))
    return dest


def rewrite_tar(
    original: Path,
    target: Path,
    edit: Callable[[tarfile.TarInfo, bytes], list[tuple[tarfile.TarInfo, bytes]]],
    compressed: bool = False,
) -> None:
    """Stream ``original`` into ``target``, passing each file member through ``edit``.

    ``edit(info, data)`` returns the members to write in its place ([] drops it).
    """
    mode_in, mode_out = ("r|gz", "w|gz") if compressed else ("r|", "w|")
    with tarfile.open(str(original), mode_in) as src, tarfile.open(str(target), mode_out) as out:
        for info in src:
            data = src.extractfile(info).read() if info.isreg() else b""
            for new_info, new_data in edit(info, data) if info.isreg() else [(info, b"")]:
                new_info.size = len(new_data)
                out.addfile(new_info, io.BytesIO(new_data) if new_info.isreg() else None)


def copy_file(src: Path, dst: Path) -> None:
    """A ``variant_release`` replacement that makes a real copy (a file the test may touch)."""
    shutil.copyfile(src, dst)


# --- Running the graph: the same stages as ``ilsvrc-assets build`` ----------------------------

ALL_CHECKS = {
    "train_archive:checksum",
    "validation_archive:checksum",
    "devkit_archive:checksum",
    "train_boxes_archive:checksum",
    "validation_boxes_archive:checksum",
    "synsets:one_thousand_synsets",
    "validation_labels:agrees_with_shipped_labels",
    "train_images:every_synset_has_training_images",
    "validation_images:fifty_per_synset",
    "validation_tree:matches_validation_label_file",
    "bounding_boxes:boxes_are_valid",
    "dataset_manifest:every_shard_present",
    "dataset_manifest:record_totals",
    "dataset_manifest:every_label_in_each_split",
    "dataset_manifest:records_parse",
    "dataset_manifest:images_decode",
    "dataset_manifest:every_index_matches_its_shard",
    "published_validation_tree:matches_its_listing",
    "published_tfrecords:matches_its_listing",
}
# The checks of the formats not built by default (defs/outputs.FORMAT_ASSETS: the training tree, the
# WebDataset tars, which have no DALI index), in the code location but built only when ILSVRC_FORMATS asks.
OPT_IN_CHECKS = {
    "train_tree:matches_train_index",
    "published_train_tree:matches_its_listing",
    "published_webdataset:matches_its_listing",
    *(
        check.replace("dataset_manifest:", "webdataset_manifest:")
        for check in ALL_CHECKS
        if check.startswith("dataset_manifest:") and check != "dataset_manifest:every_index_matches_its_shard"
    ),
}


def build_all(settings: Settings, instance: DagsterInstance):
    """All stages, as ``ilsvrc-assets build`` runs them: one pool of record workers for the whole build
    (each step would otherwise start its own, and each worker loads TensorFlow); returns (results, failed)."""
    from ilsvrc_assets.cli import run_stages
    from ilsvrc_assets.definitions import build_definitions
    from ilsvrc_assets.record_workers import RecordWorkers

    with RecordWorkers(settings.workers) as workers:
        definitions = build_definitions(settings, record_workers=workers)
        return run_stages(definitions, instance, log_level="WARNING", echo=lambda _m: None)


def build_plainly(settings: Settings, source, workers: int = 1) -> None:
    """Every stage as a plain library function, without the checks (a tiny hand-written copy fails the
    release's counts): the inputs, then each output of ``settings.formats`` (default the TFRecords),
    each published (``versions.make_published``) where readers look."""
    from ilsvrc_assets import bounding_boxes, formats, image_index, shards, synsets, train_tree, versions
    from ilsvrc_assets.record_workers import RecordWorkers

    synsets.make_synsets(settings, source)
    synsets.make_validation_labels(settings, source)
    image_index.make_train_images(settings, source)
    image_index.make_validation_images(settings, source)
    bounding_boxes.make_bounding_boxes(settings, source)
    with RecordWorkers(workers) as pool:
        for name in settings.formats:
            if name == "imagefolder":
                train_tree.make_train_tree(settings, source)
                continue
            for split in release.SPLITS:
                shards.write_split_shards(settings, split, source, pool, record_format=formats.by_name(name))
    for name in settings.formats:
        versions.make_published(
            settings, "train_tree" if name == "imagefolder" else formats.by_name(name).folder
        )


def build_in_new_instance(root: Path, local_dir: Path, source: str, **settings: object):
    """All stages from ``local_dir`` read as ``source``, into ``root/data`` with a Dagster instance of
    its own in ``root/dagster_home``: (settings, results, failed)."""
    from dagster import DagsterInstance

    built = make_settings(root / "data", local_dir, source=source, **settings)
    (root / "dagster_home").mkdir()
    with DagsterInstance.local_temp(str(root / "dagster_home")) as instance:
        results, failed = build_all(built, instance)
    return built, results, failed


def run_job(
    settings: Settings, instance: DagsterInstance, job: str, assets: list[str] | None = None, tags=None
):
    """One job of the code location (optionally a subset of its assets), not raising on failure. Its
    steps share one pool of record workers, started only if one of them needs it (as in ``build_all``)."""
    from dagster import AssetKey

    from ilsvrc_assets.definitions import build_definitions
    from ilsvrc_assets.record_workers import RecordWorkers

    with RecordWorkers(settings.workers, eager=False) as workers:
        definitions = build_definitions(settings, record_workers=workers)
        selection = [AssetKey(a) for a in assets] if assets else None
        return definitions.resolve_job_def(job).execute_in_process(
            instance=instance, raise_on_error=False, asset_selection=selection, tags=tags or {}
        )


def evaluations(*results) -> dict[str, object]:
    """Check name -> evaluation, over several run results."""
    found = {}
    for result in results:
        for e in result.get_asset_check_evaluations():
            found[f"{e.asset_key.to_user_string()}:{e.check_name}"] = e
    return found


def materialized(result) -> set[str]:
    """The names of the assets a run materialised."""
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


# --- Fault injection: the main command in a child process the test can kill ------------------


def build_env(settings: Settings, dagster_home: Path, **extra: str) -> dict[str, str]:
    """The environment that makes ``ilsvrc-assets build`` use ``settings`` (sample source)."""
    env = dict(os.environ)
    env.update(
        ILSVRC_SOURCE="sample",
        ILSVRC_SAMPLE_DIR=str(settings.sample_dir),
        ILSVRC_DATA_DIR=str(settings.data_dir),
        ILSVRC_TRAIN_SHARDS=str(TEST_SHARDS["train"]),
        ILSVRC_VALIDATION_SHARDS=str(TEST_SHARDS["validation"]),
        ILSVRC_WORKERS=str(settings.workers),
        DAGSTER_HOME=str(dagster_home),
        **extra,
    )
    return env


def start_build(env: dict[str, str], log: Path) -> subprocess.Popen:
    """``ilsvrc-assets build`` in its own process group (so a kill reaches its worker processes)."""
    return subprocess.Popen(
        [sys.executable, "-m", "ilsvrc_assets.cli", "build", "--log-level", "WARNING"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def build_to_the_end(env: dict[str, str], log: Path) -> None:
    """``ilsvrc-assets build`` run to its end; fail (with the end of its log) unless every check passed."""
    finished = subprocess.run(
        [sys.executable, "-m", "ilsvrc_assets.cli", "build", "--log-level", "WARNING"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        timeout=600,
    )
    assert finished.returncode == 0, log.read_text()[-4000:]
    assert "every check passed" in log.read_text()


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float, log: Path) -> None:
    """SIGKILL the process group of ``process`` as soon as ``ready()``; fail if it never is."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                raise AssertionError(
                    f"the build ended (exit {process.returncode}) before the moment to kill it:\n"
                    + log.read_text()[-3000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for the moment to kill the build:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.02)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)
        _wait_group_gone(process.pid)


def _wait_group_gone(pgid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes of group {pgid} still alive after SIGKILL")


# --- Comparing output folders ----------------------------------------------------------------


def final_files(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` by relative path, temp files and a published version's completeness
    marker (``versions.MARKER_FILES``) excluded."""
    from ilsvrc_assets import versions

    return {
        str(p.relative_to(folder)): p
        for p in folder.rglob("*")
        if p.is_file()
        and not fileio.is_temp_path(p)
        and not (p.parent == folder and p.name in versions.MARKER_FILES)
    }


def discard_unpublished(settings: Settings, output: str) -> None:
    """Remove the unpublished version of ``output`` a test's runs started (if any)."""
    from ilsvrc_assets import versions

    staged = versions.staging_version(settings, versions.OUTPUTS[output])
    if staged is not None:
        (staged.parent / versions.STAGING).unlink()
        shutil.rmtree(staged)


def temp_files(folder: Path) -> list[Path]:
    """The temporary files (``fileio.is_temp_path``) left under ``folder``."""
    return [p for p in folder.rglob("*") if p.is_file() and fileio.is_temp_path(p)]


def differing(folder: Path, reference: Path, names: list[str] | None = None) -> list[str]:
    """Relative paths under ``folder`` whose bytes differ from ``reference`` (or are missing there)."""
    names = sorted(final_files(folder)) if names is None else names
    bad = []
    for name in names:
        ours, theirs = folder / name, reference / name
        if not theirs.is_file() or not ours.is_file() or ours.read_bytes() != theirs.read_bytes():
            bad.append(name)
    return bad


# --- Small images of each kind the release holds ---------------------------------------------


def encode(image: Image.Image, format: str = "JPEG", **options) -> bytes:
    """``image`` saved in ``format`` (Pillow's options), as bytes."""
    out = io.BytesIO()
    image.save(out, format=format, **options)
    return out.getvalue()


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Random pixels (reproducible from ``seed``): nothing compresses them away."""
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    array = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(array[:, :, 0] if channels == 1 else array, mode)


def rgb_jpeg(width: int = 40, height: int = 30, **options) -> bytes:
    return encode(noise(width, height), "JPEG", **options)


def gray_jpeg(width: int = 40, height: int = 30) -> bytes:
    return encode(noise(width, height, "L"), "JPEG")


def cmyk_jpeg(width: int = 40, height: int = 30) -> bytes:
    return encode(Image.new("CMYK", (width, height), (0, 255, 255, 0)), "JPEG")  # red, in CMYK


def png(width: int = 40, height: int = 30, mode: str = "RGB") -> bytes:
    return encode(noise(width, height, mode), "PNG")


# --- Records: two sources, and writing, encoding and editing records ---------------------------

TENCH = RecordSource(
    filename="n01440764_10026.JPEG",
    synset="n01440764",
    label=1,
    text="tench, Tinca tinca",
    offset=0,
    size=0,
    boxes=((0.1, 0.2, 0.5, 0.75), (0.0, 0.0, 1.0, 1.0)),
)
TOILET_TISSUE = RecordSource(
    filename="ILSVRC2012_val_00000293.JPEG",
    synset="n15075141",
    label=1000,
    text="toilet tissue, toilet paper, bathroom tissue",
    offset=0,
    size=0,
)


def encode_record(source: RecordSource, data: bytes) -> bytes:
    return encode_example(source, data, images.probe(data, source.filename))


def write_records(path: Path, serialized: list[bytes]) -> Path:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in serialized:
            writer.write(record)
    return path


def tfrecord2idx(shard: Path, index: Path) -> bytes:
    """What NVIDIA DALI's own ``tfrecord2idx`` (the script its wheel installs beside ``python``) writes as
    ``index`` for ``shard``; run in this process (it is a plain script), so TensorFlow loads only once."""
    import runpy

    tool = Path(sys.executable).parent / "tfrecord2idx"
    argv = sys.argv
    sys.argv = [str(tool), str(shard), str(index)]
    try:
        runpy.run_path(str(tool), run_name="__main__")
    finally:
        sys.argv = argv
    return index.read_bytes()


DALI_BATCH = 512


def records_by_tensorflow(paths: list[Path]) -> list[tuple[str, int, str, tuple[int, int]]]:
    """(file name, label, MD5 of the image bytes, (height, width)) of every record, in file order."""
    found = []
    import tensorflow as tf

    for path in paths:
        for raw in tf.compat.v1.io.tf_record_iterator(str(path)):
            f = tf.train.Example.FromString(raw).features.feature
            found.append(
                (
                    f["image/filename"].bytes_list.value[0].decode(),
                    f["image/class/label"].int64_list.value[0],
                    hashlib.md5(f["image/encoded"].bytes_list.value[0]).hexdigest(),
                    (f["image/height"].int64_list.value[0], f["image/width"].int64_list.value[0]),
                )
            )
    return found


def records_by_dali(paths: list[Path]) -> list[tuple[str, int, str, tuple[int, int]]]:
    """The same, read by DALI's ``fn.readers.tfrecord`` with our index files, each image decoded on the CPU."""
    from nvidia.dali import fn, pipeline_def
    from nvidia.dali import tfrecord as tfrec

    @pipeline_def(batch_size=DALI_BATCH, num_threads=2, device_id=None)
    def every_record():
        r = fn.readers.tfrecord(
            path=[str(p) for p in paths],
            index_path=[str(tfrecord.INDEX.path(p)) for p in paths],
            features={
                "image/encoded": tfrec.FixedLenFeature((), tfrec.string, ""),
                "image/class/label": tfrec.FixedLenFeature([1], tfrec.int64, -1),
                "image/filename": tfrec.FixedLenFeature((), tfrec.string, ""),
            },
            random_shuffle=False,
            pad_last_batch=True,  # the last batch repeats the last record instead of starting over
            name="reader",
        )
        decoded = fn.decoders.image(r["image/encoded"], device="cpu")
        return r["image/filename"], r["image/class/label"], r["image/encoded"], decoded.shape()

    pipe = every_record()
    pipe.build()
    total = pipe.epoch_size("reader")
    found = []
    for _ in range(math.ceil(total / DALI_BATCH)):
        names, labels, encoded, shapes = pipe.run()
        for i in range(len(names)):
            height, width, channels = (int(x) for x in shapes.at(i))
            assert channels == 3
            found.append(
                (
                    names.at(i).tobytes().decode(),
                    int(labels.at(i)[0]),
                    hashlib.md5(encoded.at(i).tobytes()).hexdigest(),
                    (height, width),
                )
            )
    return found[:total]


def edited(record: bytes, edit: Callable[[object], None]) -> bytes:
    """``record`` with its tf.train.Example changed by ``edit(features.feature)``."""
    import tensorflow as tf

    example = tf.train.Example.FromString(record)
    edit(example.features.feature)
    return example.SerializeToString(deterministic=True)


# --- Comparing a build with the golden (official sample) build --------------------------------

GOLDEN_JSON = Path(__file__).with_name("golden_outputs.json")


def golden_values() -> dict:
    """What the official layout's build of the sample gives (recorded; test_golden_outputs checks
    that the official build still gives it): shard MD5s, CSV MD5s, the validation tree's digest."""
    import json

    return json.loads(GOLDEN_JSON.read_text())


def tree_digest(folder: Path) -> tuple[str, int]:
    """(one MD5 over every file's relative path and MD5, in sorted order; the number of files); the
    completeness marker of a published version left out."""
    from ilsvrc_assets import versions

    paths = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not (p.parent == folder and p.name in versions.MARKER_FILES)
    )
    lines = "".join(f"{p.relative_to(folder).as_posix()}\t{fileio.md5_file(p)}\n" for p in paths)
    return hashlib.md5(lines.encode()).hexdigest(), len(paths)


def shard_md5s(settings: Settings) -> dict[str, str]:
    """{shard name: MD5} of every shard of both splits under ``settings``."""
    return {
        name: fileio.md5_file(settings.tfrecords_dir / name)
        for split in release.SPLITS
        for name in settings.shard_names(split)
    }


BOX_KEYS = ("xmin", "xmax", "ymin", "ymax", "label")


def read_examples(folder: Path, split: str) -> dict[str, dict]:
    """{image/filename: {feature key: values}} of every record of ``split``'s shards in ``folder``."""
    import tensorflow as tf

    found = {}
    for path in sorted(folder.glob(f"{split}-*")):
        for raw in tf.compat.v1.io.tf_record_iterator(str(path)):
            feature = tf.train.Example.FromString(raw).features.feature
            values = {}
            for key, value in feature.items():
                kind = value.WhichOneof("kind")
                values[key] = tuple(getattr(value, kind).value) if kind else ()
            values["shard"] = path.name
            found[values["image/filename"][0].decode()] = values
    return found


# --- Copies of a few images in other layouts, written by hand (not by the sample generator) ------


@dataclass(frozen=True)
class TinyImage:
    """One image of a hand-written copy, with what its record must say."""

    split: str
    filename: str  # the official file name
    synset: str
    data: bytes
    size: tuple[int, int]  # width, height as stored (converted images keep their size)


def tiny_images(synsets: list[str]) -> list[TinyImage]:
    """One training image per synset in ``synsets`` (a few kinds: RGB, grayscale, CMYK, PNG, each a
    distinct size) and three validation images, labelled with the first three synsets."""
    makers = [rgb_jpeg, gray_jpeg, cmyk_jpeg, png]
    found = []
    for i, wnid in enumerate(synsets):
        width, height = 16 + i % 7, 12 + i % 5
        found.append(
            TinyImage("train", f"{wnid}_{i + 1}.JPEG", wnid, makers[i % 4](width, height), (width, height))
        )
    for number in (1, 2, 3):
        width, height = 20 + number, 10 + number
        found.append(
            TinyImage(
                "validation",
                release.validation_filename(number),
                synsets[number - 1],
                rgb_jpeg(width, height),
                (width, height),
            )
        )
    return found


def write_kaggle_zip(
    path: Path,
    images_: list[TinyImage],
    extra: dict[str, bytes] | None = None,
    val_rows: list[str] | None = None,
    mapping: str | None = None,
) -> Path:
    """A Kaggle-layout zip written with ``zipfile`` from ``images_`` (deflated), the mapping file
    (every challenge synset), the two solution CSVs and ``extra`` members as given."""
    import zipfile

    texts = release.synset_texts()
    train = [i for i in images_ if i.split == "train"]
    validation = [i for i in images_ if i.split == "validation"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of a duplicate name: some tests want one
        z.writestr(
            "LOC_synset_mapping.txt",
            mapping or "".join(f"{w} {texts[w]}\n" for w in release.challenge_synsets()),
        )
        rows = val_rows or [f"{i.filename[:-5]},{i.synset} 1 1 5 5 {i.synset} 2 2 6 6" for i in validation]
        z.writestr("LOC_val_solution.csv", "ImageId,PredictionString\n" + "\n".join(rows) + "\n")
        z.writestr("LOC_train_solution.csv", "ImageId,PredictionString\n")
        for image in train:
            z.writestr(f"ILSVRC/Data/CLS-LOC/train/{image.synset}/{image.filename}", image.data)
        for image in validation:
            z.writestr(f"ILSVRC/Data/CLS-LOC/val/{image.filename}", image.data)
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return path


def write_kaggle_tarball(folder: Path, zip_path: Path) -> Path:
    """The older Kaggle layout of the copy in ``zip_path`` (:func:`write_kaggle_zip`): its top-level
    files written into ``folder``, its ``ILSVRC/`` tree (members in the zip's order) as
    ``imagenet_object_localization_patched2019.tar.gz`` beside them. Returns the tarball."""
    import io
    import tarfile
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    tarball = folder / "imagenet_object_localization_patched2019.tar.gz"
    with zipfile.ZipFile(zip_path) as z, tarfile.open(tarball, "w:gz") as tar:
        for info in z.infolist():
            data = z.read(info)
            if "/" not in info.filename:
                (folder / info.filename).write_bytes(data)
                continue
            member = tarfile.TarInfo(info.filename)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return tarball


def write_folder_copy(root: Path, images_: list[TinyImage], sorted_val: bool = False) -> Path:
    """An extracted copy, ``train/<wnid>/`` and ``val/`` (flat or sorted), written file by file."""
    for image in images_:
        if image.split == "train":
            target = root / "train" / image.synset / image.filename
        else:
            target = root / "val" / (image.synset if sorted_val else "") / image.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(image.data)
    return root


def check_records(tfrecords: Path, images_: list[TinyImage]) -> None:
    """Every record against what the copy says, independently of the code that wrote it: the
    label (1 + the synset's position in the shipped sorted list), synset, text, size, file name,
    and a decodable RGB JPEG of that size."""
    from PIL import Image

    labels, texts = release.tf_labels(), release.synset_texts()
    for split in release.SPLITS:
        records = read_examples(tfrecords, split)
        expected = {i.filename: i for i in images_ if i.split == split}
        assert set(records) == set(expected), f"{split}: records for other images than the copy's"
        for filename, image in expected.items():
            record = records[filename]
            assert record["image/class/label"] == (labels[image.synset],), filename
            assert record["image/class/synset"] == (image.synset.encode(),), filename
            assert record["image/class/text"] == (texts[image.synset].encode(),), filename
            assert (record["image/width"], record["image/height"]) == ((image.size[0],), (image.size[1],))
            with Image.open(io.BytesIO(record["image/encoded"][0])) as decoded:
                assert decoded.format == "JPEG" and decoded.size == image.size, filename
                assert decoded.mode in ("RGB", "L"), filename


# --- A loopback HTTP file server with injectable faults (the download and HTTP source tests) ------

NAME = DEVKIT.name
PATH = f"/data/ILSVRC/2012/{NAME}"
# A few MB of deterministic random bytes, an odd size so that no chunk boundary lines up.
DATA = random.Random(2012).randbytes(3 * 1024 * 1024 + 4321)
DATA_MD5 = hashlib.md5(DATA).hexdigest()
ETAG = '"ilsvrc-test-etag"'
LAST_MODIFIED = "Tue, 01 May 2012 00:00:00 GMT"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Faults:
    cut_first_get_after: int | None = None  # first GET: promise the full length, send only N bytes, hang up
    ignore_range: bool = False  # answer every GET with the whole file (200)
    fail_first_gets: list[int] = field(default_factory=list)  # statuses for the first GETs, in order
    stall_first_get: bool = False  # first GET: say nothing until the client gives up
    basic: tuple[str, str] | None = None  # require these basic credentials
    bearer: str | None = None  # require this bearer token
    content_type: str = "application/x-tar"
    refuse_head: bool = False  # 405 for HEAD
    claimed_total: int | None = None  # lie about the total in Content-Range


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {PATH: DATA}
        self.redirects: dict[str, str] = {}
        self.faults = Faults()
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.release = threading.Event()  # ends a stalled answer at shutdown

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/data/ILSVRC/2012"

    @property
    def url(self) -> str:
        return archive_url(self.base_url, NAME)

    def gets(self) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.method == "GET"]

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        pass  # clients hanging up on purpose are expected here; keep test output clean


class Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.serve(head=True)

    def do_GET(self) -> None:
        self.serve(head=False)

    def serve(self, head: bool) -> None:
        srv, faults = self.server, self.server.faults
        with srv.lock:
            srv.seen.append(Seen(self.command, self.path, dict(self.headers)))
            get_number = sum(1 for s in srv.seen if s.method == "GET")
        if head and faults.refuse_head:
            return self.send_error(405)
        if not head and faults.stall_first_get and get_number == 1:
            srv.release.wait(5)
            return
        if not head and get_number <= len(faults.fail_first_gets):
            return self.send_error(faults.fail_first_gets[get_number - 1])
        if not self.authorized():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="ilsvrc"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path in srv.redirects:
            self.send_response(302)
            self.send_header("Location", srv.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = srv.files.get(self.path)
        if data is None:
            return self.send_error(404)

        start, end = 0, len(data) - 1
        wanted = self.headers.get("Range")
        if wanted and not faults.ignore_range:
            first, _, last = wanted.removeprefix("bytes=").partition("-")
            start, end = int(first), min(int(last) if last else end, end)
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            total = faults.claimed_total if faults.claimed_total is not None else len(data)
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        else:
            self.send_response(200)
        body = data[start : end + 1]
        self.send_header("Content-Type", faults.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", ETAG)
        self.send_header("Last-Modified", LAST_MODIFIED)
        self.end_headers()
        if head:
            return
        if faults.cut_first_get_after is not None and get_number == 1:
            self.wfile.write(body[: faults.cut_first_get_after])
            self.wfile.flush()
            # Half-close after the bytes so that they all arrive, then the client sees a short body.
            self.connection.shutdown(socket.SHUT_WR)
            self.close_connection = True
            return
        self.wfile.write(body)

    def authorized(self) -> bool:
        faults = self.server.faults
        given = self.headers.get("Authorization")
        if faults.basic is not None:
            pair = base64.b64encode(f"{faults.basic[0]}:{faults.basic[1]}".encode()).decode()
            return given == f"Basic {pair}"
        if faults.bearer is not None:
            return given == f"Bearer {faults.bearer}"
        return True


class HubServer:
    """A loopback server speaking the Hugging Face hub's file-resolve protocol for one dataset.

    ``HEAD``/``GET /datasets/<repo>/resolve/<revision>/<path>`` of the files under ``folder``: a
    gated repository (401 without ``Authorization: Bearer <token>``), answered as the hub answers
    for a large file: 302 to ``/cdn/<sha256>`` with ``X-Repo-Commit``, ``X-Linked-Etag`` and
    ``X-Linked-Size``; the CDN path serves the bytes with ``Range`` support. ``cut_once[path]``:
    bytes to send of the next transfer of ``path`` before dropping the connection. ``requests``
    records (method, path, Range) of each request; ``authorizations`` every Authorization sent.
    Use as a context manager; ``endpoint`` is its base URL (``HF_ENDPOINT``).
    """

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, folder: Path, repo: str, token: str) -> None:
        hub = self
        self.folder, self.repo, self.token = folder, repo, token
        self.cut_once: dict[str, int] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.authorizations: list[str | None] = []
        self.sha = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            self.sha[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _empty(self, status: int, **headers: str) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key.replace("_", "-"), value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _handle(self, head: bool) -> None:
                hub.requests.append((self.command, self.path, self.headers.get("Range")))
                hub.authorizations.append(self.headers.get("Authorization"))
                resolve = f"/datasets/{hub.repo}/resolve/"
                if self.path.startswith(resolve):
                    if self.headers.get("Authorization") != f"Bearer {hub.token}":
                        self._empty(
                            401, X_Error_Code="GatedRepo", X_Error_Message="Access to this repo is restricted"
                        )
                        return
                    _revision, _, name = self.path.removeprefix(resolve).partition("/")
                    if name not in hub.sha:
                        self._empty(404, X_Error_Code="EntryNotFound", X_Repo_Commit=hub.COMMIT)
                        return
                    port = self.server.server_address[1]
                    self._empty(
                        302,
                        Location=f"http://localhost:{port}/cdn/{hub.sha[name]}",  # another host, as a CDN
                        X_Repo_Commit=hub.COMMIT,
                        X_Linked_Etag=f'"{hub.sha[name]}"',
                        X_Linked_Size=str((hub.folder / name).stat().st_size),
                        ETag=f'"{hub.sha[name]}"',
                    )
                    return
                names = {sha: name for name, sha in hub.sha.items()}
                name = names.get(self.path.removeprefix("/cdn/"))
                if not self.path.startswith("/cdn/") or name is None:
                    self._empty(404)
                    return
                path = hub.folder / name
                size = path.stat().st_size
                start = 0
                if (header := self.headers.get("Range")) and header.startswith("bytes="):
                    start = int(header[6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size - start))
                self.send_header("ETag", f'"{hub.sha[name]}"')
                self.end_headers()
                if head:
                    return
                limit = hub.cut_once.pop(name, None)
                with open(path, "rb") as f:
                    f.seek(start)
                    sent = 0
                    while chunk := f.read(1 << 16):
                        if limit is not None and sent + len(chunk) > limit:
                            self.wfile.write(chunk[: limit - sent])
                            self.wfile.flush()
                            self.close_connection = True
                            return  # the client sees a body shorter than Content-Length
                        self.wfile.write(chunk)
                        sent += len(chunk)

            def do_GET(self) -> None:
                self._handle(head=False)

            def do_HEAD(self) -> None:
                self._handle(head=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


def assert_synsets_as_official_but_the_devkit_ids(csv_path: Path, sample_dir: Path) -> None:
    """The synset table of a copy without the devkit: the official sample's table, every column but
    ``ilsvrc2012_id``, which is empty (only the devkit's meta.mat has the IDs)."""
    import pandas as pd

    from ilsvrc_assets import synsets

    ours = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    assert (ours["ilsvrc2012_id"] == "").all(), "a copy without the devkit has no ILSVRC2012_IDs"
    official = synsets.synset_table(synsets.read_devkit(sample_dir / DEVKIT.name)).astype(str)
    columns = [c for c in synsets.SYNSET_COLUMNS if c != "ilsvrc2012_id"]
    assert list(ours.columns) == list(synsets.SYNSET_COLUMNS)
    assert ours[columns].equals(official[columns].reset_index(drop=True))
