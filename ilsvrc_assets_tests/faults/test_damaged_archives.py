"""Damaged archives: each fault reported with the archive and member named, and the policy (fail,
or skip and report in a check) as the README's "What happens when things go wrong" says.

Covered elsewhere and listed in the README: a truncated tar (test_archives, test_validation_tree,
defs/test_check_failures), an inner tar that is not a tar and a member that is not an image
(test_archives, test_validation_tree), duplicate members (test_archives), damaged scan data inside
a JPEG (test_records: the images_decode check).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from dagster import DagsterInstance
from PIL import Image

from ilsvrc_assets import archives, fileio, images, release, shards, validation_tree
from ilsvrc_assets.definitions import JOB_NAMES
from ilsvrc_assets.formats.tfrecord import FORMAT as TFRECORD
from ilsvrc_assets.shard_plan import RecordSource, ShardJob
from ilsvrc_assets.sources.official import ArchiveReader
from ilsvrc_assets_tests.helpers import evaluations, rewrite_tar, run_job, temp_files, variant_release


def _jpeg(seed: int, size=(48, 32)) -> bytes:
    out = io.BytesIO()
    Image.effect_noise(size, 40 + seed).convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _cut(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


def test_truncated_jpeg_in_the_validation_archive_stops_the_tree_naming_it(tmp_path):
    good, bad = _jpeg(1), _cut(_jpeg(2))
    archive = _tar(
        tmp_path / release.IMG_VAL.name,
        {"ILSVRC2012_val_00000001.JPEG": good, "ILSVRC2012_val_00000002.JPEG": bad},
    )
    index = archives.index_validation_archive(archive, ["n01440764", "n01443537"])
    dest = tmp_path / "data" / "validation"
    with pytest.raises(images.ImageError) as caught:
        validation_tree.build(ArchiveReader(archive), index, dest)
    message = str(caught.value)
    assert message.startswith(
        f"{release.IMG_VAL.name} member ILSVRC2012_val_00000002.JPEG: the JPEG data is truncated"
    )
    assert not (dest / "n01443537" / "ILSVRC2012_val_00000002.JPEG").exists()
    assert temp_files(tmp_path) == []
    # The image before it is whole and stays; a repaired archive then completes the tree.
    assert (dest / "n01440764" / "ILSVRC2012_val_00000001.JPEG").read_bytes() == good


def test_truncated_jpeg_in_the_train_archive_fails_its_shard_naming_it(tmp_path):
    data = {"n01440764_7.JPEG": _jpeg(3), "n01440764_9.JPEG": _cut(_jpeg(4))}
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as tar:
        for name, payload in data.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    archive = _tar(tmp_path / release.IMG_TRAIN.name, {"n01440764.tar": inner.getvalue()})
    index = archives.index_train_archive(archive, {"n01440764"})
    records = tuple(
        RecordSource(
            filename=f, synset=s, label=1, text="tench, Tinca tinca", offset=int(o), size=int(n), boxes=()
        )
        for f, s, o, n in zip(index["filename"], index["synset"], index["offset"], index["size"])
    )
    name = "train-00000-of-00001"
    job = ShardJob(
        name=name, path=tmp_path / "tfrecords" / name, reader=ArchiveReader(archive), records=records
    )
    with pytest.raises(shards.ShardError) as caught:
        shards.write_shard(job, TFRECORD)
    assert str(caught.value).startswith(
        f"{name}: {release.IMG_TRAIN.name} member n01440764_9.JPEG: the JPEG data is truncated"
    )
    assert not job.path.exists() and temp_files(tmp_path) == []


def test_trailing_bytes_after_a_complete_image_are_not_mistaken_for_damage():
    whole = _jpeg(5)
    info = images.probe(whole + b"\0" * 500, "x")
    images.check_complete(whole + b"\0" * 500, info, "x")  # decodes fine: accepted
    with pytest.raises(images.ImageError, match="x: the JPEG data is truncated or damaged"):
        images.check_complete(_cut(whole), info, "x")
    png = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(png, format="PNG")
    png_info = images.probe(png.getvalue(), "p")
    images.check_complete(png.getvalue(), png_info, "p")
    with pytest.raises(images.ImageError, match="p: the PNG data is truncated"):
        images.check_complete(_cut(png.getvalue()), png_info, "p")


def test_an_empty_synset_is_reported_by_its_check_and_blocks_the_shards(
    sample_release, tmp_path, settings_for
):
    empty = "n01440764"

    def empty_inner_tar(info: tarfile.TarInfo, data: bytes):
        if info.name.removeprefix("./") == f"{empty}.tar":
            blank = io.BytesIO()
            tarfile.open(fileobj=blank, mode="w").close()
            return [(info, blank.getvalue())]
        return [(info, data)]

    local = variant_release(
        sample_release,
        tmp_path / "release",
        img_train=lambda src, dst: rewrite_tar(src, dst, empty_inner_tar),
    )
    settings = settings_for(local)
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        result = run_job(
            settings,
            instance,
            JOB_NAMES["inputs"],
            ["train_archive", "devkit_archive", "synsets", "train_images"],
        )
        check = evaluations(result)["train_images:every_synset_has_training_images"]
        assert not check.passed and f"1 synsets have no training images, e.g. {empty}" in check.description
        assert (
            archives.read_index(settings.image_index("train"))["synset"].nunique() == release.NUM_SYNSETS - 1
        )
        blocked = run_job(
            settings,
            instance,
            JOB_NAMES["train"],
            tags={"dagster/partition": settings.shard_names("train")[0]},
        )
        assert not blocked.success
    assert not settings.tfrecords_dir.exists() or not list(settings.tfrecords_dir.glob("train-*"))
    assert fileio.md5_file(local / release.IMG_TRAIN.name) != fileio.md5_file(
        sample_release / release.IMG_TRAIN.name
    )
