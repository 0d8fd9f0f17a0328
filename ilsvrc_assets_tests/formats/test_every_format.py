"""Every output format from one independent stand-in: a copy written here by hand, file by file (not by
the sample generator), in the extracted-folder layout, built with ``ILSVRC_FORMATS=tfrecord,webdataset,
imagefolder``, then read by the readers users run: NVIDIA DALI through our index files, the
``webdataset`` library, and the training tree as ``ImageFolder`` lays it out.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

from ilsvrc_assets import formats, release, versions
from ilsvrc_assets import settings as settings_module
from ilsvrc_assets.settings import Settings
from ilsvrc_assets.sources import folder
from ilsvrc_assets_tests.helpers import (
    TinyImage,
    build_plainly,
    make_settings,
    records_by_dali,
    records_by_tensorflow,
    tiny_images,
    write_folder_copy,
)

dali = pytest.importorskip("nvidia.dali")
wds = pytest.importorskip("webdataset")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, list[TinyImage]]:
    """One training image per synset (RGB, grayscale, CMYK and PNG) and three validation images,
    written by hand; every stage and every format built from them."""
    tmp = tmp_path_factory.mktemp("every-format")
    shipped = release.validation_synsets()  # a flat val/: its labels are the shipped file's
    copy = [
        i if i.split == "train" else replace(i, synset=shipped[release.validation_number(i.filename) - 1])
        for i in tiny_images(list(release.challenge_synsets()))
    ]
    root = write_folder_copy(tmp / "copy", copy)
    chosen = settings_module.load({"ILSVRC_FORMATS": "tfrecord,webdataset,imagefolder"}).formats
    settings = make_settings(
        tmp / "data",
        root,
        source="folder",
        formats=chosen,
        num_shards={"train": 3, "validation": 2},
        webdataset_shards={"train": 2, "validation": 1},
    )
    build_plainly(settings, folder.FolderSource(root), workers=2)
    return settings, copy


@pytest.mark.parametrize("split", release.SPLITS)
def test_dali_reads_every_record_with_our_index_files(built, split: str) -> None:
    settings, copy = built
    paths = [settings.tfrecords_dir / n for n in settings.shard_names(split)]
    expected = records_by_tensorflow(paths)
    assert sorted(name for name, *_ in expected) == sorted(i.filename for i in copy if i.split == split)
    assert records_by_dali(paths) == expected  # count, order, labels, image bytes, decoded sizes


@pytest.mark.parametrize("split", release.SPLITS)
def test_webdataset_reads_every_sample_as_the_tfrecords_hold_it(built, split: str) -> None:
    settings, copy = built
    tars = [
        str(settings.data_dir / "webdataset" / formats.by_name("webdataset").file_name(n))
        for n in settings.shard_names(split, "webdataset")
    ]
    samples = list(wds.WebDataset(tars, shardshuffle=False).to_tuple("__key__", "jpg", "cls", "json"))
    tfrecords = [settings.tfrecords_dir / n for n in settings.shard_names(split)]
    records = records_by_tensorflow(tfrecords)  # the same shuffle, cut into other shard counts
    sorted_wnids = sorted(release.challenge_synsets())
    synset_of = {i.filename: i.synset for i in copy}
    assert len(samples) == len(records) == sum(i.split == split for i in copy)
    for (key, jpg, cls, meta), (filename, label, md5, _shape) in zip(samples, records):
        assert key + ".JPEG" == filename
        assert int(cls) == label - 1 == sorted_wnids.index(synset_of[filename])  # 0-based, sorted WNIDs
        assert json.loads(meta)["wnid"] == synset_of[filename]
        assert hashlib.md5(jpg).hexdigest() == md5  # the TFRecord's image bytes
    if split == "train":
        assert {int(cls) for _, _, cls, _ in samples} == set(range(1000))


def test_the_training_tree_has_every_image_once_in_its_synset_folder(built) -> None:
    settings, copy = built
    tree = settings.train_dir
    found = sorted(
        p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file() and p.parent != tree
    )
    # At the top, only the published version's completeness marker (ImageFolder reads folders only).
    assert sorted(p.name for p in tree.iterdir() if not p.is_dir()) == sorted(versions.MARKER_FILES)
    train = [i for i in copy if i.split == "train"]
    assert found == sorted(f"{i.synset}/{i.filename}" for i in train)
    for image in train:
        assert (settings.train_dir / image.synset / image.filename).read_bytes() == image.data
    assert sorted(p.name for p in tree.iterdir() if p.is_dir()) == sorted(release.challenge_synsets())
