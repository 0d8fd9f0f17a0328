"""The model-zoo tf.train.Example: encoding, the parse spec, and reading a shard back."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ilsvrc_assets import images, release
from ilsvrc_assets.records import RecordSource, ShardScan, encode_example, feature_spec, scan_shard
from ilsvrc_assets_tests.helpers import cmyk_jpeg, gray_jpeg, png, rgb_jpeg

tf = pytest.importorskip("tensorflow")

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


def encode(source: RecordSource, data: bytes) -> bytes:
    return encode_example(source, data, images.probe(data, source.filename))


def write_records(path: Path, serialized: list[bytes]) -> Path:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in serialized:
            writer.write(record)
    return path


def edited(record: bytes, edit: Callable[[object], None]) -> bytes:
    """``record`` with its tf.train.Example changed by ``edit(features.feature)``."""
    example = tf.train.Example.FromString(record)
    edit(example.features.feature)
    return example.SerializeToString(deterministic=True)


# --- encode_example and feature_spec ---------------------------------------------------------


def test_encode_example_round_trips_through_the_model_zoo_spec() -> None:
    data = rgb_jpeg(40, 30)
    parsed = tf.io.parse_single_example(encode(TENCH, data), feature_spec())
    assert set(parsed) == set(release.FEATURE_KEYS)
    assert int(parsed["image/height"]) == 30 and int(parsed["image/width"]) == 40
    assert int(parsed["image/channels"]) == 3
    assert parsed["image/colorspace"].numpy() == b"RGB"
    assert parsed["image/format"].numpy() == b"JPEG"
    assert parsed["image/class/label"].numpy().tolist() == [1]
    assert parsed["image/class/synset"].numpy() == b"n01440764"
    assert parsed["image/class/text"].numpy().decode() == "tench, Tinca tinca"
    assert parsed["image/filename"].numpy() == b"n01440764_10026.JPEG"
    assert parsed["image/encoded"].numpy() == data
    expected = {"xmin": [0.1, 0.0], "ymin": [0.2, 0.0], "xmax": [0.5, 1.0], "ymax": [0.75, 1.0]}
    for key, values in expected.items():
        assert parsed[f"image/object/bbox/{key}"].values.numpy().tolist() == pytest.approx(values)
    assert parsed["image/object/bbox/label"].values.numpy().tolist() == [1, 1]


def test_encode_example_has_exactly_the_15_keys_and_the_label_as_given() -> None:
    record = encode(TOILET_TISSUE, gray_jpeg())
    example = tf.train.Example.FromString(record)
    assert sorted(example.features.feature) == sorted(release.FEATURE_KEYS)
    assert len(release.FEATURE_KEYS) == 15
    assert list(example.features.feature["image/class/label"].int64_list.value) == [
        1000
    ]  # 1-based, not shifted


def test_encode_example_allows_no_boxes() -> None:
    parsed = tf.io.parse_single_example(encode(TOILET_TISSUE, rgb_jpeg()), feature_spec())
    for key in ("xmin", "ymin", "xmax", "ymax", "label"):
        assert parsed[f"image/object/bbox/{key}"].values.numpy().size == 0


def _serialized_by_tensorflow(source: RecordSource, image: bytes, info: images.ImageInfo) -> bytes:
    """The same Example built with TensorFlow's message classes and serialized by them."""

    def int64s(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    def byte(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    b = source.boxes
    feature = {
        "image/height": int64s([info.height]),
        "image/width": int64s([info.width]),
        "image/colorspace": byte(b"RGB"),
        "image/channels": int64s([3]),
        "image/class/label": int64s([source.label]),
        "image/class/synset": byte(source.synset.encode()),
        "image/class/text": byte(source.text.encode()),
        "image/object/bbox/xmin": floats([x[0] for x in b]),
        "image/object/bbox/xmax": floats([x[2] for x in b]),
        "image/object/bbox/ymin": floats([x[1] for x in b]),
        "image/object/bbox/ymax": floats([x[3] for x in b]),
        "image/object/bbox/label": int64s([source.label] * len(b)),
        "image/format": byte(b"JPEG"),
        "image/filename": byte(source.filename.encode()),
        "image/encoded": byte(image),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


def test_encode_example_gives_tensorflows_own_bytes() -> None:
    import random

    rng = random.Random(7)
    cases = [(TENCH, rgb_jpeg(40, 30)), (TOILET_TISSUE, gray_jpeg())]
    for n in range(200):
        boxes = tuple(
            tuple(sorted(rng.random() for _ in range(2)) + sorted(rng.random() for _ in range(2)))
            for _ in range(rng.randrange(0, 5))
        )
        boxes = tuple((x0, y0, x1, y1) for x0, x1, y0, y1 in boxes) + ((0.0, 0.0, 1.0, 1.0),) * (n % 2)
        source = RecordSource(
            filename=f"n01440764_{rng.randrange(10**7)}.JPEG",
            synset="n01440764",
            label=rng.choice([1, 2, 127, 128, 129, 999, 1000]),
            text="tench, Tinca tinca" + "é" * (n % 3) + "x" * rng.randrange(300),
            offset=0,
            size=0,
            boxes=boxes,
        )
        cases.append((source, rng.randbytes(rng.choice([0, 1, 127, 128, 300, 20_000, 70_000]))))
    for source, image in cases:
        info = images.ImageInfo("JPEG", rng.randrange(1, 70_000), rng.randrange(1, 300), 3)
        assert encode_example(source, image, info) == _serialized_by_tensorflow(source, image, info), source


def test_encode_example_is_deterministic() -> None:
    data = rgb_jpeg()
    assert encode(TENCH, data) == encode(TENCH, data)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(label=0), "label 0 is outside 1..1000"),
        (dict(label=1001), "label 1001 is outside"),
        (dict(boxes=((0.1, 0.2, 1.5, 0.3),)), "bounding box"),
        (dict(boxes=((0.1, 0.2, 0.3),)), "bounding box"),
    ],
)
def test_encode_example_refuses_bad_labels_and_boxes(change: dict, message: str) -> None:
    source = RecordSource(**{**TENCH.__dict__, **change})
    with pytest.raises(ValueError, match=f"^n01440764_10026.JPEG: .*{message}"):
        encode(source, rgb_jpeg())


def test_modules_do_not_import_tensorflow_at_import_time() -> None:
    # A fresh interpreter, as the Dagster process would be.
    import subprocess

    code = "import sys, ilsvrc_assets.images, ilsvrc_assets.records, ilsvrc_assets.shards; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# --- scan_shard ------------------------------------------------------------------------------


def test_scan_shard_of_good_records(tmp_path: Path) -> None:
    path = write_records(
        tmp_path / "validation-00000-of-00001",
        [
            encode(TENCH, rgb_jpeg(40, 30)),
            encode(TOILET_TISSUE, gray_jpeg(7, 5)),
            encode(TENCH, rgb_jpeg(64, 48, progressive=True)),
        ],
    )
    scan = scan_shard(path)
    assert scan == ShardScan(
        name="validation-00000-of-00001",
        records=3,
        bytes=path.stat().st_size,
        md5=hashlib.md5(path.read_bytes()).hexdigest(),
        labels={1: 2, 1000: 1},
        synsets_ok=True,
        parse_errors=0,
        decode_errors=0,
        problems=[],
    )


def test_scan_shard_of_an_empty_file(tmp_path: Path) -> None:
    path = write_records(tmp_path / "train-00000-of-00001", [])
    assert path.stat().st_size == 0
    scan = scan_shard(path)
    assert (scan.records, scan.parse_errors, scan.decode_errors, scan.problems) == (0, 0, 0, [])


def test_scan_shard_counts_a_png_record_as_a_decode_error(tmp_path: Path) -> None:
    # tf.io.decode_jpeg itself decodes PNG bytes without complaint; the header check catches them.
    path = write_records(
        tmp_path / "train-00000-of-00001", [encode(TENCH, rgb_jpeg()), encode(TOILET_TISSUE, png())]
    )
    for decode in (True, False):
        scan = scan_shard(path, decode=decode)
        assert (scan.records, scan.parse_errors, scan.decode_errors) == (2, 0, 1)
        assert scan.problems == [
            "train-00000-of-00001: record 1 (ILSVRC2012_val_00000293.JPEG): image/encoded is a PNG, not a JPEG"
        ]


def test_scan_shard_finds_cmyk_wrong_size_and_damaged_jpegs(tmp_path: Path) -> None:
    good = rgb_jpeg(64, 48)
    wrong_size = encode_example(TENCH, good, images.ImageInfo("JPEG", 65, 48, 3))
    cut = good[: len(good) // 2]  # the header is intact, the scan data stops (no EOI)
    path = write_records(
        tmp_path / "train-00000-of-00001",
        [encode(TENCH, cmyk_jpeg()), wrong_size, encode_example(TENCH, cut, images.probe(cut, "cut"))],
    )
    scan = scan_shard(path)
    assert (scan.records, scan.parse_errors, scan.decode_errors) == (3, 0, 3)
    assert "record 0 (n01440764_10026.JPEG): image/encoded is a JPEG with 4 components" in scan.problems[0]
    assert (
        "record 1 (n01440764_10026.JPEG): the JPEG header says 64x48, the record says 65x48"
        in scan.problems[1]
    )
    assert "record 2 (n01440764_10026.JPEG): tf.io.decode_jpeg fails" in scan.problems[2]
    # Without decoding, only what the header shows is found.
    assert scan_shard(path, decode=False).decode_errors == 2


def test_scan_shard_finds_records_not_in_the_model_zoo_format(tmp_path: Path) -> None:
    good = encode(TENCH, rgb_jpeg())
    records = [
        edited(good, lambda f: f["image/extra"].int64_list.value.append(1)),
        edited(good, lambda f: f.pop("image/class/text")),
        edited(good, lambda f: f["image/class/label"].int64_list.value.append(2)),
        edited(good, lambda f: f["image/colorspace"].bytes_list.value.__setitem__(0, b"CMYK")),
        edited(good, lambda f: f["image/object/bbox/label"].int64_list.value.pop()),
        edited(good, lambda f: f["image/object/bbox/xmax"].float_list.value.__setitem__(0, 1.5)),
        b"this is not a tf.train.Example",
        good,
    ]
    scan = scan_shard(write_records(tmp_path / "train-00000-of-00001", records))
    assert (scan.records, scan.parse_errors, scan.decode_errors) == (8, 7, 0)
    problems = "\n".join(scan.problems)
    for expected in [
        "record 0 (n01440764_10026.JPEG): unexpected keys ['image/extra']",
        "record 1 (n01440764_10026.JPEG): parse_single_example fails",
        "missing keys ['image/class/text']",
        "record 2 (n01440764_10026.JPEG): parse_single_example fails",
        "record 3 (n01440764_10026.JPEG): image/colorspace is b'CMYK'",
        "record 4 (n01440764_10026.JPEG): bbox lists differ in length",
        "record 5 (n01440764_10026.JPEG): bbox coordinates outside [0, 1]",
        "record 6: not a tf.train.Example",
    ]:
        assert expected in problems
    assert all(p.startswith("train-00000-of-00001: record ") for p in scan.problems)


def test_scan_shard_checks_synset_label_and_text_agree(tmp_path: Path) -> None:
    good = encode(TENCH, rgb_jpeg())
    path = write_records(tmp_path / "a", [good, good])
    assert scan_shard(path).synsets_ok

    zero = edited(good, lambda f: f["image/class/label"].int64_list.value.__setitem__(0, 0))
    zero = edited(
        zero, lambda f: f["image/object/bbox/label"].int64_list.value.__setitem__(slice(None), [0, 0])
    )
    scan = scan_shard(write_records(tmp_path / "b", [good, zero]))
    assert not scan.synsets_ok and scan.labels == {1: 1, 0: 1}
    assert "record 1 (n01440764_10026.JPEG): label 0 is outside 1..1000" in scan.problems[0]

    other_text = edited(good, lambda f: f["image/class/text"].bytes_list.value.__setitem__(0, b"crane"))
    scan = scan_shard(write_records(tmp_path / "c", [good, other_text]))
    assert not scan.synsets_ok and "n01440764 has label 1 and text 'crane' here" in scan.problems[0]

    other_synset = encode(RecordSource(**{**TOILET_TISSUE.__dict__, "label": 1}), rgb_jpeg())
    scan = scan_shard(write_records(tmp_path / "d", [good, other_synset]))
    assert not scan.synsets_ok and "label 1 is n15075141 here but n01440764 earlier" in scan.problems[0]


def test_scan_shard_keeps_only_the_first_problems(tmp_path: Path) -> None:
    bad = encode(TENCH, png())
    scan = scan_shard(write_records(tmp_path / "train-00000-of-00001", [bad] * 25), decode=False)
    assert scan.decode_errors == 25
    assert len(scan.problems) == 21 and scan.problems[-1] == "train-00000-of-00001: ... and 5 more problems"


def test_scan_shard_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train-00000-of-00001: shard not found"):
        scan_shard(tmp_path / "train-00000-of-00001")


def test_scan_shard_counts_exactly_across_batches(tmp_path: Path) -> None:
    # More records than one checking batch, damage in a later batch, then a file cut inside
    # record 280: every count and index must still be exact.
    from ilsvrc_assets.records import BATCH

    good = encode(TENCH, rgb_jpeg(16, 16))
    cut = rgb_jpeg(64, 48)[:300]
    records = [good] * 300
    records[BATCH + 5] = encode(TOILET_TISSUE, png())
    records[2 * BATCH + 3] = encode_example(TENCH, cut, images.probe(cut, "cut"))
    path = write_records(tmp_path / "train-00000-of-00001", records)
    scan = scan_shard(path)
    assert (scan.records, scan.parse_errors, scan.decode_errors, scan.labels) == (
        300,
        0,
        2,
        {1: 299, 1000: 1},
    )
    assert f"record {BATCH + 5} (ILSVRC2012_val_00000293.JPEG): image/encoded is a PNG" in scan.problems[0]
    assert f"record {2 * BATCH + 3} (n01440764_10026.JPEG): tf.io.decode_jpeg fails" in scan.problems[1]

    # Cut inside record 280: in its length, its length's CRC, its data, its data's CRC. (A cut
    # inside the 12-byte header is one TFRecordDataset itself reads as a clean end of file.)
    start = sum(16 + len(r) for r in records[:280])
    for into in (1, 5, 8, 11, 12, 13, 16 + len(records[280]) - 2):
        cut_file = tmp_path / f"cut-{into}" / path.name
        cut_file.parent.mkdir()
        cut_file.write_bytes(path.read_bytes()[: start + into])
        scan = scan_shard(cut_file, decode=False)
        assert (scan.records, scan.parse_errors, scan.decode_errors) == (280, 1, 1), (
            into
        )  # the PNG; no decoding
        assert scan.problems[-1].startswith("train-00000-of-00001: record 280 and after: unreadable"), into


def _use_the_pools() -> None:
    """In a process started by multiprocessing: a pool used once, then one kept (start_workers)."""
    import os

    from ilsvrc_assets import records

    assert records.worker_pool(1).submit(os.getpid).result() != os.getpid()
    records.release_workers()
    records.start_workers(1, wait=True)


def test_a_process_started_by_multiprocessing_exits_though_it_keeps_workers() -> None:
    # Dagster's step processes are started by multiprocessing, which at exit waits for the
    # process's children before the pool's own exit hook would stop them.
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(target=_use_the_pools)
    child.start()
    child.join(180)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung and child.exitcode == 0, "the process did not exit (waiting for its idle workers)"


def test_pools_are_released_after_each_call_unless_kept(tmp_path: Path) -> None:
    from ilsvrc_assets import records

    records.stop_workers()
    shard = tmp_path / "train-00000-of-00001"
    shard.write_bytes(b"")
    assert [scan.records for scan in records.scan_shards([shard], workers=1)] == [0]
    assert not records._POOLS  # shut down after the call
