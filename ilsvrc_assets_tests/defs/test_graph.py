"""The whole graph on the built-in sample: every check evaluated and passing, outputs right."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterRunStatus
from PIL import Image

from ilsvrc_assets import archives, release, shard_plan, synsets, versions
from ilsvrc_assets.bounding_boxes import boxes_by_image, read_table
from ilsvrc_assets.definitions import JOB_NAMES
from ilsvrc_assets.formats.tfrecord import INDEX
from ilsvrc_assets.sources.official import ArchiveReader
from ilsvrc_assets_tests.helpers import ALL_CHECKS, build_all, discard_unpublished, evaluations, run_job

pytestmark = pytest.mark.long(seconds=300)  # conftest: the long files start first


@pytest.fixture(scope="module")
def built(built_sample_graph):
    return built_sample_graph


def test_every_stage_succeeds_and_every_check_passes(built):
    settings, instance, results, failed = built
    assert failed == []
    assert all(r.success for r in results)
    found = evaluations(*results)
    assert set(found) == ALL_CHECKS
    assert {name for name, e in found.items() if not e.passed} == set()


def test_history_is_kept_in_the_instance(built):
    settings, instance, results, failed = built
    for key in ["train_archive", "synsets", "validation_tree", "bounding_boxes", "dataset_manifest"]:
        assert instance.get_latest_materialization_event(AssetKey(key)) is not None, key
    materialized = instance.get_materialized_partitions(AssetKey("train_shards"))
    assert materialized == set(settings.shard_names("train"))
    # The build's own runs (other tests may add runs to this shared instance): inputs, train
    # shards, validation shards, manifest, publication; each one kept, with its outcome.
    assert len(results) == 5
    for result in results:
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and run.status == DagsterRunStatus.SUCCESS, result.run_id


def test_each_shard_partition_records_count_bytes_and_checksum(built):
    settings, instance, results, failed = built
    train_run = results[1]
    events = [e for e in train_run.get_asset_materialization_events()]
    by_partition = {e.partition: e.materialization.metadata for e in events}
    assert set(by_partition) == set(settings.shard_names("train"))
    total = 0
    for name, metadata in by_partition.items():
        path = settings.tfrecords_dir / name
        assert metadata["bytes"].value == path.stat().st_size
        assert len(metadata["md5"].value) == 32
        total += metadata["records"].value
    assert total == len(archives.read_index(settings.image_index("train")))


def test_synsets_table(built):
    settings = built[0]
    table = synsets.read_synsets(settings.synsets_csv)
    assert list(table["wnid"]) == list(release.challenge_synsets())
    assert list(table["label"]) == list(range(1, 1001))
    assert table.set_index("wnid").loc["n01440764", "text"] == "tench, Tinca tinca"
    # The devkit numbering is a different order from the TF labels.
    assert list(table["ilsvrc2012_id"]) != list(range(1, 1001))
    assert sorted(table["ilsvrc2012_id"]) == list(range(1, 1001))


def test_validation_tree_matches_the_label_file(built):
    settings = built[0]
    labels = release.validation_synsets()
    for number in (1, 2, 293, 50000):
        path = settings.validation_dir / labels[number - 1] / release.validation_filename(number)
        assert path.is_file(), path
    assert sum(1 for _ in settings.validation_dir.rglob("*.JPEG")) == 50000


def test_reference_csv_is_the_kept_training_boxes(built):
    settings = built[0]
    table = read_table(settings.bounding_boxes_parquet)
    lines = settings.bounding_boxes_csv.read_text().splitlines()
    kept = table[(table["split"] == "train") & table["kept"]]
    assert len(lines) == len(kept) > 0
    name, *coords = lines[0].split(",")
    assert name.endswith(".JPEG") and all(len(c.split(".")[1]) == 4 for c in coords)
    assert (~table["kept"]).sum() > 0  # the sample has boxes the reference drops


def _read_records(paths):
    import tensorflow as tf

    from ilsvrc_assets.tf_example import feature_spec

    for path in paths:
        for raw in tf.data.TFRecordDataset(str(path)):
            yield path.name, tf.io.parse_single_example(raw, feature_spec()), raw.numpy()


def _examples(paths):
    """(shard name, features) of every record, parsed by the protocol buffer itself: independent
    of the writer, and fast enough for every record (the model-zoo parse is the manifest's check)."""
    import tensorflow as tf

    for path in paths:
        for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            yield path.name, tf.train.Example.FromString(raw).features.feature


def test_records_hold_every_image_once_with_the_right_content(built):
    """Independent of the writer: every image in exactly one record, right label, text, size, boxes."""
    settings = built[0]
    table = synsets.read_synsets(settings.synsets_csv)
    label_of = dict(zip(table["wnid"], table["label"]))
    text_of = dict(zip(table["wnid"], table["text"]))
    boxes = read_table(settings.bounding_boxes_parquet)
    for split, archive in (("train", release.IMG_TRAIN), ("validation", release.IMG_VAL)):
        index = archives.read_index(settings.image_index(split)).set_index("filename")
        # Plain dicts: a pandas lookup per record would cost most of this test's time.
        synset_of = index["synset"].to_dict()
        span_of = dict(zip(index.index, zip(index["offset"].tolist(), index["size"].tolist())))
        kept = boxes_by_image(boxes[boxes["split"] == split])
        seen = Counter()
        paths = [settings.tfrecords_dir / n for n in settings.shard_names(split)]
        with open(settings.sample_dir / archive.name, "rb") as archive_file:
            for _shard, f in _examples(paths):
                filename = f["image/filename"].bytes_list.value[0].decode()
                seen[filename] += 1
                synset = synset_of[filename]
                assert f["image/class/synset"].bytes_list.value[0].decode() == synset
                label = f["image/class/label"].int64_list.value[0]
                assert label == label_of[synset] == release.tf_labels()[synset]
                assert f["image/class/text"].bytes_list.value[0].decode() == text_of[synset]
                encoded = f["image/encoded"].bytes_list.value[0]
                assert encoded[:2] == b"\xff\xd8", filename  # every record holds a JPEG
                with Image.open(io.BytesIO(encoded)) as image:
                    assert image.format == "JPEG" and image.mode in ("RGB", "L"), (filename, image.mode)
                    size = (f["image/width"].int64_list.value[0], f["image/height"].int64_list.value[0])
                    assert size == image.size
                offset, length = span_of[filename]
                archive_file.seek(offset)
                original = archive_file.read(length)
                if filename in release.png_train_files() or filename in release.cmyk_train_files():
                    assert encoded != original  # re-encoded as RGB JPEG
                else:
                    assert encoded == original  # stored as it is
                xmin = list(f["image/object/bbox/xmin"].float_list.value)
                expected = kept.get(filename, [])
                assert len(xmin) == len(expected)
                if expected:
                    assert xmin == pytest.approx([b[0] for b in expected], abs=1e-6)
                assert list(f["image/object/bbox/label"].int64_list.value) == [label] * len(expected)
        assert set(seen) == set(index.index), split
        assert set(seen.values()) == {1}, split


def test_shard_assignment_is_deterministic_and_mixes_classes(built):
    settings = built[0]
    index = archives.read_index(settings.image_index("train"))
    table = synsets.read_synsets(settings.synsets_csv)
    plan_a = shard_plan.plan_split("train", index, table, {}, ArchiveReader(Path("a")), Path("out"), 8)
    plan_b = shard_plan.plan_split(
        "train", index.sample(frac=1, random_state=1), table, {}, ArchiveReader(Path("a")), Path("out"), 8
    )
    assert {n: [r.filename for r in j.records] for n, j in plan_a.items()} == {
        n: [r.filename for r in j.records] for n, j in plan_b.items()
    }
    first = plan_a["train-00000-of-00008"].records
    assert len({r.synset for r in first}) > 100  # shuffled across shards, not class by class


def test_second_build_reuses_what_is_done(built_graph_copy):
    settings, instance = built_graph_copy  # the shared instance's history stays the first build's
    before = {p.name: p.stat().st_mtime_ns for p in settings.tfrecords_dir.iterdir()}
    # An index deleted since (or a build from before the indexes): made again from its shard's framing,
    # byte for byte, without writing the shard again.
    index = INDEX.path(settings.tfrecords_dir / "train-00003-of-00008")
    original = index.read_bytes()
    index.unlink()
    results2, failed2 = build_all(settings, instance)
    assert failed2 == []
    train_run = results2[1]
    reused = [
        e.materialization.metadata["unchanged_since_earlier_run"].value
        for e in train_run.get_asset_materialization_events()
    ]
    assert reused and all(reused)
    assert index.read_bytes() == original
    again = [e for e in train_run.get_asset_materialization_events() if e.partition == "train-00003-of-00008"]
    assert again[0].materialization.metadata["index_md5"].value == hashlib.md5(original).hexdigest()
    assert again[0].materialization.metadata["index_path"].value == str(index)
    tree_meta = results2[0].asset_materializations_for_node("validation_tree")[0].metadata
    assert tree_meta["written"].value == 0 and tree_meta["already_in_place"].value == 50000
    after = {
        p.name: p.stat().st_mtime_ns
        for p in settings.tfrecords_dir.iterdir()
        if p.name not in ("manifest.json", *versions.MARKER_FILES)  # written again by the publication
    }
    assert all(before[n] == m for n, m in after.items())


# --- The checks on outputs, made to fail by damaging what was built --------------------------
# Each test puts back what it damaged, and runs its jobs in a copy of the instance, so the shared
# graph is as built for the tests that run after it, in any order.


def _evaluate(settings, instance, job):
    return evaluations(run_job(settings, instance, job))


def test_audit_fails_when_a_validation_image_is_moved(built_graph_copy):
    settings, instance = built_graph_copy
    labels = release.validation_synsets()
    source = settings.validation_dir / labels[0] / release.validation_filename(1)
    wrong = settings.validation_dir / labels[-1] / source.name
    source.rename(wrong)
    try:
        found = _evaluate(settings, instance, JOB_NAMES["audit"])
        check = found["validation_tree:matches_validation_label_file"]
        assert not check.passed
        assert f"missing: {labels[0]}/{source.name}" in check.description
        # What readers see is no longer what was published: the listing's check says so too.
        listed = found["published_validation_tree:matches_its_listing"]
        assert f"missing: validation/{labels[0]}/{source.name}" in listed.description
        assert f"not in the listing: validation/{labels[-1]}/{source.name}" in listed.description
        failing = {
            "validation_tree:matches_validation_label_file",
            "published_validation_tree:matches_its_listing",
        }
        assert all(e.passed for n, e in found.items() if n not in failing)
    finally:
        wrong.rename(source)


@pytest.fixture
def restore_shards(built):
    """Put the published shards back as built, after a test that damages them, and drop the version
    its runs started (``check_dataset`` writes the manifest into a new, unpublished version)."""
    import shutil

    settings = built[0]
    published = settings.tfrecords_dir.resolve()
    backup = settings.data_dir.parent / "tfrecords-backup"
    shutil.copytree(published, backup, dirs_exist_ok=True)
    yield settings.tfrecords_dir
    shutil.rmtree(published)
    shutil.copytree(backup, published)
    discard_unpublished(settings, "tfrecords")


def _rewrite_shard(path, keep_or_replace):
    """Rewrite a shard record by record: keep_or_replace(raw, features) -> list of raw records, where
    features are the record's, parsed by the protocol buffer (an eager TensorFlow parse per record
    would cost a minute for a validation shard)."""
    import tensorflow as tf

    raws = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    with tf.io.TFRecordWriter(str(path)) as writer:
        for raw in raws:
            for out in keep_or_replace(raw, tf.train.Example.FromString(raw).features.feature):
                writer.write(out)


def test_missing_shard_fails_presence_and_totals(built_graph_copy, restore_shards):
    settings, instance = built_graph_copy
    (settings.tfrecords_dir / "validation-00002-of-00004").unlink()
    found = _evaluate(settings, instance, JOB_NAMES["manifest"])
    assert "validation-00002-of-00004: missing" in found["dataset_manifest:every_shard_present"].description
    assert not found["dataset_manifest:record_totals"].passed
    assert found["dataset_manifest:images_decode"].passed


def test_a_label_without_records_fails_every_label_in_each_split(built_graph_copy, restore_shards):
    settings, instance = built_graph_copy
    for path in settings.tfrecords_dir.glob("train-*"):
        _rewrite_shard(path, lambda raw, f: [] if f["image/class/label"].int64_list.value[0] == 1 else [raw])
    found = _evaluate(settings, instance, JOB_NAMES["manifest"])
    assert (
        "train: 1 labels have no record, e.g. [1]"
        in found["dataset_manifest:every_label_in_each_split"].description
    )
    assert not found["dataset_manifest:record_totals"].passed


def test_record_that_is_not_an_example_fails_records_parse(built_graph_copy, restore_shards):
    settings, instance = built_graph_copy
    path = settings.tfrecords_dir / "train-00001-of-00008"
    _rewrite_shard(path, lambda raw, f: [raw, b"\x08\x96\x01 this is not a tf.train.Example"])
    found = _evaluate(settings, instance, JOB_NAMES["manifest"])
    check = found["dataset_manifest:records_parse"]
    assert not check.passed and "train-00001-of-00008" in check.description


def test_png_in_image_encoded_fails_images_decode(built_graph_copy, restore_shards):
    import tensorflow as tf

    settings, instance = built_graph_copy
    path = settings.tfrecords_dir / "validation-00000-of-00004"
    png = io.BytesIO()
    Image.new("RGB", (9, 9)).save(png, "PNG")

    def swap_image(raw, f):
        example = tf.train.Example.FromString(raw)
        example.features.feature["image/encoded"].bytes_list.value[0] = png.getvalue()
        return [example.SerializeToString()]

    _rewrite_shard(path, swap_image)
    found = _evaluate(settings, instance, JOB_NAMES["manifest"])
    check = found["dataset_manifest:images_decode"]
    assert not check.passed and "validation-00000-of-00004" in check.description
    assert found["dataset_manifest:records_parse"].passed
