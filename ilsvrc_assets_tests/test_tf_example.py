"""The model-zoo tf.train.Example: its bytes and its parse spec."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ilsvrc_assets import images, release
from ilsvrc_assets.shard_plan import RecordSource
from ilsvrc_assets.tf_example import encode_example, feature_spec
from ilsvrc_assets_tests.helpers import TENCH, TOILET_TISSUE, encode_record
from ilsvrc_assets_tests.helpers import gray_jpeg, rgb_jpeg

tf = pytest.importorskip("tensorflow")


def test_encode_example_round_trips_through_the_model_zoo_spec() -> None:
    data = rgb_jpeg(40, 30)
    parsed = tf.io.parse_single_example(encode_record(TENCH, data), feature_spec())
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
    record = encode_record(TOILET_TISSUE, gray_jpeg())
    example = tf.train.Example.FromString(record)
    assert sorted(example.features.feature) == sorted(release.FEATURE_KEYS)
    assert len(release.FEATURE_KEYS) == 15
    assert list(example.features.feature["image/class/label"].int64_list.value) == [
        1000
    ]  # 1-based, not shifted


def test_encode_example_allows_no_boxes() -> None:
    parsed = tf.io.parse_single_example(encode_record(TOILET_TISSUE, rgb_jpeg()), feature_spec())
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


# One record with every kind of field (two boxes, a two-byte label, UTF-8 text, an image past 127
# bytes), built by the library alone. Every shard's bytes follow from these, so a change must be deliberate.
PINNED_RECORD = """
from ilsvrc_assets.images import ImageInfo
from ilsvrc_assets.shard_plan import RecordSource
from ilsvrc_assets.tf_example import encode_example
source = RecordSource("n01440764_10026.JPEG", "n01440764", 300, "tench, Tinca tinca \u00e9", 0, 0,
                      ((0.1, 0.2, 0.5, 0.75), (0.0, 0.0, 1.0, 1.0)))
record = encode_example(source, bytes(range(256)) * 3, ImageInfo("JPEG", 300, 200, 3))
"""
PINNED_MD5 = "559ebc3f59f1b75ab444482d946f100b"


def test_encode_example_bytes_are_pinned_whatever_the_hash_seed() -> None:
    # In fresh interpreters with different string hash seeds, as each worker process has.
    code = PINNED_RECORD + "import hashlib; print(hashlib.md5(record).hexdigest())"
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        )
        assert out.stdout.strip() == PINNED_MD5


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
        encode_record(source, rgb_jpeg())


def test_modules_do_not_import_tensorflow_at_import_time() -> None:
    # A fresh interpreter, as the Dagster process would be.
    code = (
        "import sys, ilsvrc_assets.images, ilsvrc_assets.tf_example, ilsvrc_assets.shard_scan, "
        "ilsvrc_assets.shards, ilsvrc_assets.formats.tfrecord, ilsvrc_assets.record_workers; "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
