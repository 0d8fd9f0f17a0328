"""The TF/TPU model zoo's ``tf.train.Example``: its bytes, written directly, and its parse spec.

Each record holds exactly the 15 features of ``release.FEATURE_KEYS`` (see
``shared/ILSVRC2012.md``, "The TFRecord format the TF model zoo reads"). :func:`encode_example`
writes TensorFlow's own deterministic serialization without building the message objects;
:func:`feature_spec` is how the model zoo's readers parse it (``shard_scan`` reads shards back
with it). The TFRecord format (``formats/tfrecord.py``) writes one of these per image.

TensorFlow is imported only inside :func:`feature_spec`: encoding needs none, and the Dagster
process must not load it.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from typing import Any

from ilsvrc_assets import images, release
from ilsvrc_assets.shard_plan import Box, RecordSource


def encode_example(source: RecordSource, image: bytes, info: images.ImageInfo) -> bytes:
    """The serialized ``tf.train.Example`` of one image, with exactly the 15 model-zoo features.

    ``image`` is stored as given (callers pass the output of ``images.prepare``) and ``info``
    gives its height and width. The bytes are those of TensorFlow's own deterministic
    serialization (map keys sorted; a test compares the two), written directly in the protocol
    buffer wire format: building the message objects costs more than everything else done per
    image. Raises ValueError naming the file for a label outside 1..1000 or a box that is not four
    numbers in [0, 1].
    """
    if not 1 <= source.label <= release.NUM_SYNSETS:
        raise ValueError(
            f"{source.filename}: label {source.label} is outside 1..{release.NUM_SYNSETS} "
            "(records use the 1-based model-zoo label)"
        )
    for box in source.boxes:
        if len(box) != 4 or not all(0.0 <= v <= 1.0 for v in box):
            raise ValueError(
                f"{source.filename}: bounding box {box!r} is not (xmin, ymin, xmax, ymax) within [0, 1]"
            )
    # The entries in key order (Features.feature is map<string, Feature>: each entry a message of
    # key, field 1, and value, field 2, as field 1 of Features; sorted by key, as deterministic
    # serialization does). The image is not copied into nested messages: its entry is a header
    # computed from its length, followed by the image itself, and everything is joined once.
    parts = [
        _synset_entries(source.label, source.synset, source.text),
        _list_entry_header("image/encoded", BYTES, len(image)),
        image,
        _list_entry("image/filename", BYTES, source.filename.encode()),
        _FORMAT_ENTRY,
        _list_entry("image/height", INT64S, _varint(info.height)),
        _box_entries(source.label, source.boxes),
        _list_entry("image/width", INT64S, _varint(info.width)),
    ]
    return b"".join([b"\x0a", _varint(sum(map(len, parts))), *parts])  # Example.features


_SMALL_VARINTS = [bytes((n,)) for n in range(0x80)]


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): tag, length, bytes."""
    return _SMALL_VARINTS[number << 3 | 2] + _varint(len(payload)) + payload


_SORTED_KEYS = tuple(sorted(release.FEATURE_KEYS))
_ENTRY_KEYS = {key: _field(1, key.encode()) for key in _SORTED_KEYS}  # a map entry's key field


# Feature's oneof: bytes_list = 1, float_list = 2, int64_list = 3; each list's values are field 1
# (packed for numbers, omitted when empty).
def _byte(value: bytes) -> bytes:
    return _field(1, _field(1, value))


def _floats(values: Sequence[float]) -> bytes:
    return _field(2, _field(1, struct.pack(f"<{len(values)}f", *values)) if values else b"")


def _int64s(values: Sequence[int]) -> bytes:
    if any(v < 0 for v in values):
        raise ValueError(f"negative int64 values are not written here: {values!r}")
    return _field(3, _field(1, b"".join(_varint(v) for v in values)) if values else b"")


def _entry(key: str, feature: bytes) -> bytes:
    """One entry of the Features map, as a field of Features."""
    return _field(1, _ENTRY_KEYS[key] + _field(2, feature))


BYTES, FLOATS, INT64S = 1, 2, 3  # Feature's oneof: bytes_list, float_list, int64_list


@functools.lru_cache(maxsize=1 << 16)  # most lengths recur: names, sizes, box counts
def _list_entry_header(key: str, kind: int, length: int) -> bytes:
    """The bytes of ``_entry(key, <kind list of one field of length bytes>)`` before that field's
    value: a bytes_list of one value, or a packed float/int64 list. Lets an entry be written
    without copying its value into each nested message in turn."""
    values = 1 + len(_varint(length)) + length  # the list message: its field 1
    feature = 1 + len(_varint(values)) + values  # Feature: the list as field `kind`
    key_field = _ENTRY_KEYS[key]
    entry = len(key_field) + 1 + len(_varint(feature)) + feature  # map entry: key 1, value 2
    return b"".join(
        (b"\x0a", _varint(entry), key_field, b"\x12", _varint(feature), _SMALL_VARINTS[kind << 3 | 2],
         _varint(values), b"\x0a", _varint(length))
    )  # fmt: skip


def _list_entry(key: str, kind: int, value: bytes) -> bytes:
    return _list_entry_header(key, kind, len(value)) + value


@functools.lru_cache(maxsize=2048)
def _synset_entries(label: int, synset: str, text: str) -> bytes:
    """The entries before image/encoded: the same for every image of a synset."""
    return b"".join(
        [
            _entry("image/channels", _int64s([3])),
            _entry("image/class/label", _int64s([label])),
            _entry("image/class/synset", _byte(synset.encode())),
            _entry("image/class/text", _byte(text.encode("utf-8"))),
            _entry("image/colorspace", _byte(b"RGB")),
        ]
    )


def _box_entries(label: int, boxes: Sequence[Box]) -> bytes:
    """The entries of the box lists (label, xmax, xmin, ymax, ymin: key order)."""
    if not boxes:
        return _NO_BOX_ENTRIES
    floats = struct.Struct(f"<{len(boxes)}f").pack
    return b"".join(
        (
            _list_entry("image/object/bbox/label", INT64S, _varint(label) * len(boxes)),
            _list_entry("image/object/bbox/xmax", FLOATS, floats(*[b[2] for b in boxes])),
            _list_entry("image/object/bbox/xmin", FLOATS, floats(*[b[0] for b in boxes])),
            _list_entry("image/object/bbox/ymax", FLOATS, floats(*[b[3] for b in boxes])),
            _list_entry("image/object/bbox/ymin", FLOATS, floats(*[b[1] for b in boxes])),
        )
    )


_FORMAT_ENTRY = _entry("image/format", _byte(b"JPEG"))
_NO_BOX_ENTRIES = b"".join(
    _entry(f"image/object/bbox/{name}", empty)
    for name, empty in (
        ("label", _int64s([])), ("xmax", _floats([])), ("xmin", _floats([])),
        ("ymax", _floats([])), ("ymin", _floats([])),
    )
)  # fmt: skip
# The order encode_example writes the entries in must be the sorted order of the keys.
assert _SORTED_KEYS == (
    "image/channels", "image/class/label", "image/class/synset", "image/class/text",
    "image/colorspace", "image/encoded", "image/filename", "image/format", "image/height",
    "image/object/bbox/label", "image/object/bbox/xmax", "image/object/bbox/xmin",
    "image/object/bbox/ymax", "image/object/bbox/ymin", "image/width",
), _SORTED_KEYS  # fmt: skip


def feature_spec() -> dict[str, Any]:
    """The parse spec of the model zoo's readers, for ``tf.io.parse_single_example``.

    ``image/class/label`` is ``FixedLenFeature([1], int64)`` as in the inception reader, so a
    record with no label or several labels fails to parse; the bbox keys are ``VarLenFeature``.
    """
    import tensorflow as tf

    spec: dict[str, Any] = {
        "image/height": tf.io.FixedLenFeature([], tf.int64),
        "image/width": tf.io.FixedLenFeature([], tf.int64),
        "image/channels": tf.io.FixedLenFeature([], tf.int64),
        "image/class/label": tf.io.FixedLenFeature([1], tf.int64),
        "image/object/bbox/label": tf.io.VarLenFeature(tf.int64),
    }
    for key in (
        "image/colorspace",
        "image/class/synset",
        "image/class/text",
        "image/format",
        "image/filename",
        "image/encoded",
    ):
        spec[key] = tf.io.FixedLenFeature([], tf.string)
    for key in (
        "image/object/bbox/xmin",
        "image/object/bbox/xmax",
        "image/object/bbox/ymin",
        "image/object/bbox/ymax",
    ):
        spec[key] = tf.io.VarLenFeature(tf.float32)
    return spec
