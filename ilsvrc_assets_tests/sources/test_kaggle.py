"""``ILSVRC_SOURCE=kaggle``: the sample as Kaggle's zip gives the official build's outputs byte for
byte; its extracted folder reads the same; a hand-written copy passes an independent check of
every record; bad copies fail naming the file."""

from __future__ import annotations

import dataclasses
import shutil
import zipfile
from pathlib import Path

import pytest

from ilsvrc_assets import archives, bounding_boxes, fileio, image_index, release, synsets
from ilsvrc_assets.sample import kaggle as kaggle_layout
from ilsvrc_assets.sources import SourceError, kaggle, trees
from ilsvrc_assets_tests.helpers import (
    build_plainly,
    assert_synsets_as_official_but_the_devkit_ids,
    build_in_new_instance,
    check_records,
    evaluations,
    golden_values,
    make_settings,
    shard_md5s,
    temp_files,
    tiny_images,
    tree_digest,
    write_kaggle_tarball,
    write_kaggle_zip,
)

pytestmark = pytest.mark.long(seconds=300)  # conftest: the long files start first


def say(_message: str) -> None:
    pass


@pytest.fixture(scope="module")
def kaggle_copy(sample_release, tmp_path_factory) -> Path:
    """The sample written as Kaggle's zip (the folder holding it)."""
    return kaggle_layout.write_layout(sample_release, tmp_path_factory.mktemp("kaggle"), say)


@pytest.fixture(scope="module")
def kaggle_build(kaggle_copy, tmp_path_factory):
    """The whole graph built from the Kaggle zip, once for the module: (settings, results, failed)."""
    return build_in_new_instance(tmp_path_factory.mktemp("kaggle-build"), kaggle_copy, "kaggle")


def test_the_kaggle_zip_builds_the_official_builds_outputs_byte_for_byte(kaggle_build, sample_release):
    settings, results, failed = kaggle_build
    assert failed == []
    checks = evaluations(*results)
    assert checks["kaggle_copy:checksum"].passed
    assert not any(name.startswith(("train_archive", "devkit_archive")) for name in checks)
    assert all(e.passed for e in checks.values()), [n for n, e in checks.items() if not e.passed]
    golden = golden_values()
    assert shard_md5s(settings) == golden["shards"]  # the same boxes, labels, bytes
    for name, md5 in golden["files"].items():  # labels, reference box CSVs
        if name != "synsets.csv":
            assert fileio.md5_file(settings.data_dir / name) == md5, name
    assert_synsets_as_official_but_the_devkit_ids(settings.synsets_csv, sample_release)
    assert tree_digest(settings.validation_dir) == (
        golden["validation_tree"]["digest"],
        golden["validation_tree"]["files"],
    )


def test_the_stages_depend_on_the_kaggle_input(kaggle_build):
    from dagster import AssetKey

    from ilsvrc_assets.definitions import build_definitions

    settings, _, _ = kaggle_build
    graph = build_definitions(settings).resolve_asset_graph()
    for stage in ("synsets", "validation_labels", "train_images", "validation_images", "bounding_boxes"):
        parents = {key.to_user_string() for key in graph.get(AssetKey(stage)).parent_keys}
        assert kaggle.ASSET in parents and not parents & {"train_archive", "devkit_archive"}, stage


def test_observation_changes_with_the_zip_only(kaggle_copy, tmp_path):
    zip_path = tmp_path / kaggle.ZIP_NAME
    zip_path.symlink_to(kaggle_copy / kaggle.ZIP_NAME)  # the zip named directly
    source = kaggle.KaggleSource(zip_path)
    (item,) = source.inputs()
    first = source.observe(item, say)
    assert source.observe(item, say) == first
    assert kaggle.KaggleSource(kaggle_copy).observe(item, say) == first  # via the folder holding it
    copy = tmp_path / "copy" / kaggle.ZIP_NAME
    copy.parent.mkdir()
    shutil.copyfile(kaggle_copy / kaggle.ZIP_NAME, copy)
    assert kaggle.KaggleSource(copy).observe(item, say) != first


def test_the_extracted_folder_reads_as_the_zip(kaggle_copy, tmp_path):
    with zipfile.ZipFile(kaggle_copy / kaggle.ZIP_NAME) as z:
        z.extractall(tmp_path / "extracted")
    in_zip, extracted = kaggle.KaggleSource(kaggle_copy), kaggle.KaggleSource(tmp_path / "extracted")
    assert extracted.inputs()[0].kind == "folder" and in_zip.inputs()[0].kind == "zip"
    kit = extracted.read_devkit(say)
    assert synsets.synset_table(kit).equals(synsets.synset_table(in_zip.read_devkit(say)))
    known = release.challenge_synsets()
    labels = synsets.validation_labels(kit, kit.leaves)
    for split in release.SPLITS:
        a = in_zip.index_images(split, known, labels, say).sort_values("filename", ignore_index=True)
        b = extracted.index_images(split, known, labels, say).sort_values("filename", ignore_index=True)
        assert a.drop(columns=["offset", "size"]).equals(b.drop(columns=["offset", "size"]))
        with (
            in_zip.image_reader(split, say).open() as zipped,
            extracted.image_reader(split, say).open() as files,
        ):
            for row_a, row_b in zip(a.head(500).itertuples(), b.head(500).itertuples()):
                assert zipped.read(row_a.filename, row_a.offset, row_a.size) == files.read(
                    row_b.filename, row_b.offset, row_b.size
                )
    tables = [
        bounding_boxes.table_of_box_files(s.box_files(say).files, known, labels, workers=1)
        for s in (in_zip, extracted)
    ]
    assert len(tables[0]) > 1000 and tables[0].equals(tables[1])


# --- A copy written by hand ----------------------------------------------------------------------


def test_a_hand_written_zip_passes_an_independent_check_of_every_record(tmp_path):
    images = tiny_images(list(release.challenge_synsets()))
    # Labels of the three validation images from the CSV's first WNID, not the shipped file.
    images[-1] = dataclasses.replace(images[-1], synset="n15075141")
    path = write_kaggle_zip(tmp_path / "copy" / kaggle.ZIP_NAME, images)
    settings = make_settings(
        tmp_path / "data", path, source="kaggle", num_shards={"train": 2, "validation": 1}
    )
    build_plainly(settings, kaggle.KaggleSource(path))
    check_records(settings.tfrecords_dir, images)
    assert list(synsets.read_validation_labels(settings.validation_labels_csv)) == [
        i.synset for i in images if i.split == "validation"
    ]


# --- Bad copies: a clear error naming the file, nothing half-written -----------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_images(list(release.challenge_synsets()))


def _source(tmp_path, images, **kwargs) -> kaggle.KaggleSource:
    return kaggle.KaggleSource(write_kaggle_zip(tmp_path / kaggle.ZIP_NAME, images, **kwargs))


def test_a_csv_row_naming_an_unknown_wnid_is_refused_naming_file_and_line(tmp_path, tiny):
    rows = ["ILSVRC2012_val_00000001,n01751748 1 1 5 5", "ILSVRC2012_val_00000002,n99999999 1 1 5 5"]
    with pytest.raises(SourceError, match=r"LOC_val_solution\.csv line 3: 'n99999999' is not one of"):
        _source(tmp_path, tiny, val_rows=rows).read_devkit(say)


def test_a_missing_class_folder_is_refused_naming_it(tmp_path, tiny):
    source = _source(tmp_path, [i for i in tiny if i.synset != "n01440764" or i.split != "train"])
    with pytest.raises(archives.ArchiveError, match=r"no .*member ILSVRC/Data/CLS-LOC/train/n01440764"):
        source.index_images("train", release.challenge_synsets(), (), say)


def test_a_duplicate_image_is_refused_naming_it(tmp_path, tiny):
    twice = {f"ILSVRC/Data/CLS-LOC/train/n01440764/{tiny[0].filename}": tiny[0].data}
    with pytest.raises(
        archives.ArchiveError, match=rf"train/n01440764/{tiny[0].filename}: image .* appears twice"
    ):
        _source(tmp_path, tiny, extra=twice).index_images("train", release.challenge_synsets(), (), say)
    elsewhere = {f"ILSVRC/Data/CLS-LOC/train/n01443537/{tiny[0].filename}": tiny[0].data}
    with pytest.raises(
        archives.ArchiveError, match=r"train/n01443537/n01440764_1.JPEG: not a training image of its"
    ):
        _source(tmp_path / "e", tiny, extra=elsewhere).index_images(
            "train", release.challenge_synsets(), (), say
        )
    again = {f"ILSVRC/Data/CLS-LOC/val/{tiny[-1].filename}": tiny[-1].data}
    with pytest.raises(archives.ArchiveError, match=r"ILSVRC2012_val_00000003\.JPEG' appears twice"):
        _source(tmp_path / "v", tiny, extra=again).index_images("validation", (), ["n01440764"] * 3, say)


def test_a_member_escaping_the_root_is_refused(tmp_path, tiny):
    source = _source(tmp_path, tiny, extra={"ILSVRC/Data/CLS-LOC/train/../../../evil.JPEG": b"x"})
    with pytest.raises(
        SourceError, match=r"member 'ILSVRC/Data/CLS-LOC/train/../../../evil.JPEG' would leave"
    ):
        source.index_images("train", release.challenge_synsets(), (), say)


def test_a_truncated_zip_fails_naming_it_and_leaves_no_index(tmp_path, tiny):
    path = write_kaggle_zip(tmp_path / "copy" / kaggle.ZIP_NAME, tiny)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # an interrupted download
    source = kaggle.KaggleSource(path)
    fetched = source.fetch(source.inputs()[0], None, say)
    assert fetched.problems and "cut short" in fetched.problems[0] and str(path) in fetched.problems[0]
    settings = make_settings(tmp_path / "data", path, source="kaggle")
    synsets.write_csv(
        synsets.synset_table(synsets.reference_devkit(None, "", None, "")), settings.synsets_csv
    )
    with pytest.raises(SourceError, match=rf"{path}: no end-of-central-directory record"):
        image_index.make_train_images(settings, source)
    assert not settings.image_index("train").exists() and temp_files(settings.data_dir) == []


def test_a_damaged_member_fails_naming_it(tmp_path, tiny):
    path = write_kaggle_zip(tmp_path / kaggle.ZIP_NAME, tiny)
    source = kaggle.KaggleSource(path)
    index = source.index_images("train", release.challenge_synsets(), (), say)
    row = index.iloc[0]
    data = bytearray(path.read_bytes())
    data[row.offset + 30 + 60 : row.offset + 30 + 64] = b"\x00\x00\x00\x00"  # inside its data
    path.write_bytes(bytes(data))
    with (
        source.image_reader("train", say).open() as reading,
        pytest.raises(archives.ArchiveError, match=rf"{path} member for {row.filename}"),
    ):
        reading.read(row.filename, row.offset, row.size)


# --- The older copy: the tree as a gzip-compressed tar beside the CSVs -----------------------------


def _voc(filename: str, size: tuple[int, int], wnid: str) -> bytes:
    return (
        f"<annotation><folder>x</folder><filename>{filename[:-5]}</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height><depth>3</depth></size><object><name>{wnid}</name><bndbox>"
        f"<xmin>1</xmin><ymin>1</ymin><xmax>{size[0] - 1}</xmax><ymax>{size[1] - 1}</ymax></bndbox>"
        f"</object></annotation>"
    ).encode()


def _box_members(images) -> dict[str, bytes]:
    boxes = {}
    for i in images:
        folder = f"train/{i.synset}" if i.split == "train" else "val"
        boxes[f"ILSVRC/Annotations/CLS-LOC/{folder}/{i.filename[:-5]}.xml"] = _voc(
            i.filename, i.size, i.synset
        )
    return boxes


def test_the_older_tarball_is_read_in_place_as_the_zip(tmp_path, tiny, monkeypatch):
    zip_path = write_kaggle_zip(tmp_path / "zip" / kaggle.ZIP_NAME, tiny, extra=_box_members(tiny))
    folder = tmp_path / "old"
    tarball = write_kaggle_tarball(folder, zip_path)
    in_zip = kaggle.KaggleSource(zip_path)
    in_tar = kaggle.KaggleSource(folder, tmp_path / "index")
    assert in_tar.tarball == tarball and in_tar.inputs()[0].kind == "folder"
    fetched = in_tar.fetch(in_tar.inputs()[0], None, say)  # the one pass: listing and seek-point index
    assert fetched.problems == ()
    kit = in_tar.read_devkit(say)
    assert synsets.synset_table(kit).equals(synsets.synset_table(in_zip.read_devkit(say)))
    known = release.challenge_synsets()
    labels = [i.synset for i in tiny if i.split == "validation"]
    for split in release.SPLITS:
        a = in_zip.index_images(split, known, labels, say)
        b = in_tar.index_images(split, known, labels, say)
        assert len(a) == len([i for i in tiny if i.split == split])
        # The same rows in the same order; offsets (and the zip's compressed sizes) differ.
        assert a.drop(columns=["offset", "size"]).equals(b.drop(columns=["offset", "size"]))
        with (
            in_zip.image_reader(split, say).open() as zipped,
            in_tar.image_reader(split, say).open() as tarred,
        ):
            for row_a, row_b in zip(a.itertuples(), b.itertuples(), strict=True):
                data = tarred.read(row_b.filename, row_b.offset, row_b.size)
                assert data == zipped.read(row_a.filename, row_a.offset, row_a.size), row_a.filename
    tables = [bounding_boxes.table_of_box_files(in_zip.box_files(say).files, known, labels, workers=1)]
    for span in (trees.GzipTarTree._SPAN, 2048):  # XML files read a span at a time, one span or many
        monkeypatch.setattr(trees.GzipTarTree, "_SPAN", span)
        tables.append(
            bounding_boxes.table_of_box_files(in_tar.box_files(say).files, known, labels, workers=1)
        )
    assert len(tables[0]) == len(tiny) and tables[0].equals(tables[1]) and tables[0].equals(tables[2])
    # Nothing extracted: the folder holds what it held; the tarball named directly reads the same.
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [kaggle.MAPPING, kaggle.VAL_SOLUTION, kaggle.TRAIN_SOLUTION, kaggle.OLD_TARBALL]
    )
    direct = kaggle.KaggleSource(tarball, tmp_path / "index")
    assert direct.index_images("train", known, labels, say).equals(
        in_tar.index_images("train", known, labels, say)
    )


def test_a_truncated_tarball_fails_naming_it_and_leaves_no_index(tmp_path, tiny):
    folder = tmp_path / "old"
    tarball = write_kaggle_tarball(folder, write_kaggle_zip(tmp_path / "zip" / kaggle.ZIP_NAME, tiny))
    data = tarball.read_bytes()
    tarball.write_bytes(data[: len(data) * 2 // 3])  # an interrupted download
    settings = make_settings(tmp_path / "data", folder, source="kaggle")
    source = kaggle.make(settings)
    fetched = source.fetch(source.inputs()[0], None, say)
    assert len(fetched.problems) == 1 and str(tarball) in fetched.problems[0], fetched.problems
    synsets.write_csv(
        synsets.synset_table(synsets.reference_devkit(None, "", None, "")), settings.synsets_csv
    )
    with pytest.raises(SourceError, match=rf"{tarball}: .*truncated"):
        image_index.make_train_images(settings, source)
    assert not settings.image_index("train").exists() and temp_files(settings.data_dir) == []
    assert not list((settings.index_dir / "kaggle").glob("*.tsv*"))
