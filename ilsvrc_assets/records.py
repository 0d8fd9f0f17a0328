"""The TF/TPU model zoo's ``tf.train.Example``: writing one, and reading a whole shard back.

Each record holds exactly the 15 features of ``release.FEATURE_KEYS`` (see
``shared/ILSVRC2012.md``, "The TFRecord format the TF model zoo reads"). :func:`scan_shard`
reads a written shard the way the model zoo's readers do (parsing with :func:`feature_spec`,
JPEG decoding with ``channels=3``) and reports what it found rather than failing on the first
bad record. It parses and decodes in batches (``tf.io.parse_example``, ``map_fn`` over
``decode_jpeg``) and falls back to ``parse_single_example``/``decode_jpeg`` one record at a time
only for a batch that fails, since each TensorFlow call from Python costs far more than the work.

TensorFlow is imported only inside the functions that build, write or read records: the Dagster
process imports this module for :class:`RecordSource` and must not load TensorFlow; the work that
needs it runs in worker processes (:func:`scan_shards`, ``shards.write_shards``).
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import multiprocessing.util
import os
import struct
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ilsvrc_assets import fileio, images, release

Box = tuple[float, float, float, float]  # xmin, ymin, xmax, ymax, normalised to [0, 1]

# How many problem descriptions a ShardScan keeps; the counts cover all of them.
MAX_PROBLEMS = 20


@dataclass(frozen=True)
class RecordSource:
    """One image to write into a shard: where its bytes are and what the record says about it.

    Small and picklable, so a shard's worth travels cheaply to a worker process.
    """

    filename: str  # basename, e.g. "n01440764_10026.JPEG" or "ILSVRC2012_val_00000293.JPEG"
    synset: str  # WNID, e.g. "n01440764"
    label: int  # 1..1000, the model zoo's 1-based label
    text: str  # e.g. "tench, Tinca tinca"
    offset: int  # of the image's bytes inside the (uncompressed) archive file
    size: int
    boxes: tuple[Box, ...] = ()


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


@dataclass
class ShardScan:
    """What reading one shard back found.

    ``parse_errors`` counts records that are not in the model-zoo format: not a
    ``tf.train.Example``, failing ``parse_single_example`` with :func:`feature_spec`, keys other
    than the 15, wrong colorspace/channels/format, inconsistent or out-of-range boxes; an
    unreadable (corrupt or truncated) rest of the file counts as one more. ``decode_errors``
    counts records whose ``image/encoded`` is not an RGB/grayscale JPEG of the recorded size
    that decodes. ``synsets_ok`` is False if any record's label is outside 1..1000 or its
    synset/label/text disagree with each other or with other records of the shard.
    """

    name: str
    records: int
    bytes: int
    md5: str
    labels: dict[int, int] = field(default_factory=dict)  # label -> number of records
    synsets_ok: bool = True
    parse_errors: int = 0
    decode_errors: int = 0
    problems: list[str] = field(
        default_factory=list
    )  # the first MAX_PROBLEMS, each naming shard, record, file


# Records are checked in batches: one TensorFlow call per batch instead of one per record, since
# each call from Python costs a few hundred microseconds. A batch that fails is checked again one
# record at a time to find the culprits, which only happens in damaged shards.
BATCH = 128
# Each TFRecord is framed by its length (8 bytes) and two CRCs (4 bytes each).
_FRAMING = 16


@dataclass(frozen=True)
class _Checks:
    """The TensorFlow side of the checks, built once per process."""

    parse_batch: Any  # raw records [N] -> parse_example with feature_spec() (compiled)
    decode_batch: Any  # JPEG bytes [N] -> decoded shapes [N, 3] at ratio 8 (compiled)
    parse_one: Any  # raw record -> parse_single_example (eager: rare, and its errors read better)
    decode_one: Any  # (JPEG bytes, ratio) -> decoded shape (eager)


@functools.cache
def _tf_checks() -> _Checks:
    import tensorflow as tf

    spec = feature_spec()
    many = [tf.TensorSpec([None], tf.string)]

    def shape_at(encoded: Any, ratio: int) -> Any:
        # The cast keeps map_fn's type inference quiet (it logs a warning about shape tensors).
        return tf.cast(tf.shape(tf.io.decode_jpeg(encoded, channels=3, ratio=ratio)), tf.int64)

    @tf.function(input_signature=many)
    def parse_batch(records: Any) -> Any:
        return tf.io.parse_example(records, spec)["image/height"]

    @tf.function(input_signature=many)
    def decode_batch(encoded: Any) -> Any:
        return tf.map_fn(lambda e: shape_at(e, 8), encoded, fn_output_signature=tf.TensorSpec([3], tf.int64))

    def parse_one(record: bytes) -> Any:
        return tf.io.parse_single_example(record, spec)

    return _Checks(parse_batch, decode_batch, parse_one, shape_at)


def _first_line(error: BaseException) -> str:
    """The useful part of a (TensorFlow) error message: no node prefix, op suffix or graph trace."""
    text = (getattr(error, "message", None) or str(error)).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    if line.startswith("{{function_node") and "}} " in line:
        line = line.split("}} ", 1)[1]
    return line.split(" [Op:", 1)[0][:300]


def _record_batches(path: Path, size: int) -> Iterator[tuple[list[bytes], str | None]]:
    """The shard's records in batches; the last batch comes with a message if the file is damaged.

    Read with TensorFlow's own record reader (which checks each record's CRCs, so flipped bytes
    or a cut-off end stop it) through its plain iterator: a ``tf.data.TFRecordDataset`` costs
    about 12 ms to set up, which for a thousand small shards is most of the read-back.
    """
    import tensorflow as tf

    batch: list[bytes] = []
    try:
        for raw in tf.compat.v1.io.tf_record_iterator(str(path)):
            batch.append(raw)
            if len(batch) == size:
                yield batch, None
                batch = []
    except (tf.errors.OpError, UnicodeDecodeError) as e:  # TF may fail to decode its own message
        yield batch, _first_line(e)
        return
    if batch:
        yield batch, None


@dataclass
class _Checked:
    """What the checks found in one record."""

    where: str  # "record 12 (n01440764_10026.JPEG)"
    example: Any = None  # the parsed tf.train.Example, None if the bytes are not one
    format_issues: list[str] = field(default_factory=list)
    image_issue: str | None = None
    to_decode: tuple[bytes, int, tuple[int, int, int]] | None = None  # JPEG, ratio, expected shape


def _check_batch(raws: list[bytes], first_index: int, decode: bool) -> list[_Checked]:
    """Format and image checks of consecutive records (synset consistency is left to the caller)."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    if not raws:
        return []
    checks = _tf_checks()
    checked = []
    for offset, raw in enumerate(raws):
        index = first_index + offset
        try:
            example = tf.train.Example.FromString(raw)
        except DecodeError as e:
            checked.append(_Checked(f"record {index}", format_issues=[f"not a tf.train.Example ({e})"]))
            continue
        feature = example.features.feature
        filename = _bytes_value(feature, "image/filename")
        name = filename.decode("utf-8", "replace") if filename is not None else "no filename"
        record = _Checked(f"record {index} ({name})", example, _format_issues(feature))
        record.image_issue, record.to_decode = _image_issue(feature, decode)
        checked.append(record)

    # The model zoo's parse; per record only if the batch fails.
    try:
        checks.parse_batch(raws)
    except (tf.errors.OpError, UnicodeDecodeError):
        for raw, record in zip(raws, checked):
            if record.example is None:
                continue  # already reported as not a tf.train.Example
            try:
                checks.parse_one(raw)
            except (tf.errors.OpError, UnicodeDecodeError) as e:  # TF may fail to decode its own message
                record.format_issues.insert(0, f"parse_single_example fails: {_first_line(e)}")

    if decode:
        pending = [r for r in checked if r.to_decode is not None]
        batched = [r for r in pending if r.to_decode[1] == 8]
        try:
            shapes = checks.decode_batch([r.to_decode[0] for r in batched]).numpy() if batched else []
            _compare_shapes(batched, shapes)
            single = [r for r in pending if r.to_decode[1] != 8]
        except (tf.errors.OpError, UnicodeDecodeError):
            single = pending
        for record in single:
            data, ratio, _ = record.to_decode
            try:
                shape = checks.decode_one(data, ratio).numpy()
            except (tf.errors.OpError, UnicodeDecodeError) as e:  # TF may fail to decode its own message
                record.image_issue = f"tf.io.decode_jpeg fails: {_first_line(e)}"
                continue
            _compare_shapes([record], [shape])
    return checked


def _compare_shapes(records: list[_Checked], shapes: Any) -> None:
    for record, shape in zip(records, shapes):
        _, ratio, expected = record.to_decode
        actual = tuple(int(x) for x in shape)
        if actual != expected:
            record.image_issue = f"decoded at 1/{ratio} scale to {actual}, expected {expected}"


def scan_shard(path: Path, decode: bool = True) -> ShardScan:
    """Read a TFRecord shard back and check every record; see :class:`ShardScan` for what is counted.

    Each record is parsed with the model zoo's spec (:func:`feature_spec`), and its raw
    ``tf.train.Example`` is checked for exactly the 15 keys and consistent values. The image
    header is checked to be an RGB or grayscale JPEG of the recorded size; with ``decode`` it is
    also decoded with ``tf.io.decode_jpeg(channels=3)`` at 1/8 scale (which still entropy-decodes
    every block, so damaged data is found). A corrupt or truncated file is reported in the
    result, not raised; a missing file raises FileNotFoundError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard not found")
    scan = ShardScan(name=path.name, records=0, bytes=path.stat().st_size, md5=fileio.md5_file(path))
    extra_problems = 0
    synset_of_label: dict[int, str] = {}
    seen: dict[str, tuple[int, str]] = {}  # synset -> (label, text) where first seen

    def problem(text: str) -> None:
        nonlocal extra_problems
        if len(scan.problems) < MAX_PROBLEMS:
            scan.problems.append(f"{scan.name}: {text}")
        else:
            extra_problems += 1

    consumed = 0  # bytes of the complete records read, framing included
    for raws, error in _record_batches(path, BATCH):
        consumed += sum(_FRAMING + len(raw) for raw in raws)
        for record in _check_batch(raws, scan.records, decode):
            if record.format_issues:
                scan.parse_errors += 1
                problem(f"{record.where}: {'; '.join(record.format_issues)}")
            if record.example is not None:
                feature = record.example.features.feature
                labels = _int_values(feature, "image/class/label")
                label = labels[0] if labels is not None and len(labels) == 1 else None
                if label is not None:
                    scan.labels[label] = scan.labels.get(label, 0) + 1
                if synset_issue := _synset_issue(feature, label, seen, synset_of_label):
                    scan.synsets_ok = False
                    problem(f"{record.where}: {synset_issue}")
            if record.image_issue:
                scan.decode_errors += 1
                problem(f"{record.where}: {record.image_issue}")
        scan.records += len(raws)
        if error is not None:
            # What follows the damage cannot be read; it counts as one more record in error.
            scan.parse_errors += 1
            problem(
                f"record {scan.records} and after: unreadable, the file is corrupt or truncated ({error})"
            )
            break
    else:
        if consumed != scan.bytes:
            # TFRecordDataset ends silently when the file stops inside a record's 12-byte header,
            # so a cut there would go unnoticed without comparing sizes.
            scan.parse_errors += 1
            problem(
                f"record {scan.records} and after: unreadable, the file is truncated "
                f"({scan.bytes - consumed} bytes after the last complete record)"
            )
    if extra_problems:
        scan.problems.append(f"{scan.name}: ... and {extra_problems} more problems")
    return scan


def _bytes_value(feature: Any, key: str) -> bytes | None:
    if (
        key not in feature
        or feature[key].WhichOneof("kind") != "bytes_list"
        or len(feature[key].bytes_list.value) != 1
    ):
        return None
    return feature[key].bytes_list.value[0]


def _int_values(feature: Any, key: str) -> list[int] | None:
    if key not in feature or feature[key].WhichOneof("kind") != "int64_list":
        return None
    return list(feature[key].int64_list.value)


def _float_values(feature: Any, key: str) -> list[float] | None:
    if key not in feature or feature[key].WhichOneof("kind") != "float_list":
        return None
    return list(feature[key].float_list.value)


def _format_issues(feature: Any) -> list[str]:
    """What makes a record differ from the model-zoo layout (beyond what parsing rejects)."""
    issues = []
    keys = set(feature.keys())
    if missing := sorted(set(release.FEATURE_KEYS) - keys):
        issues.append(f"missing keys {missing}")
    if extra := sorted(keys - set(release.FEATURE_KEYS)):
        issues.append(f"unexpected keys {extra}")
    for key, expected in (("image/colorspace", b"RGB"), ("image/format", b"JPEG")):
        value = _bytes_value(feature, key)
        if key in keys and value != expected:
            issues.append(f"{key} is {value!r}, not {expected!r}")
    if "image/channels" in keys and _int_values(feature, "image/channels") != [3]:
        issues.append(f"image/channels is {_int_values(feature, 'image/channels')}, not [3]")
    for key in ("image/height", "image/width"):
        values = _int_values(feature, key)
        if key in keys and (values is None or len(values) != 1 or values[0] <= 0):
            issues.append(f"{key} is {values}, not one positive number")
    if "image/filename" in keys and not _bytes_value(feature, "image/filename"):
        issues.append("image/filename is empty")
    coords = {k: _float_values(feature, f"image/object/bbox/{k}") for k in ("xmin", "ymin", "xmax", "ymax")}
    box_labels = _int_values(feature, "image/object/bbox/label")
    if all(v is not None for v in coords.values()) and box_labels is not None:
        lengths = {k: len(v) for k, v in coords.items()}
        if len(set(lengths.values())) != 1 or len(box_labels) != lengths["xmin"]:
            issues.append(f"bbox lists differ in length ({lengths}, label {len(box_labels)})")
        if any(not 0.0 <= x <= 1.0 for v in coords.values() for x in v):  # also catches NaN
            issues.append("bbox coordinates outside [0, 1]")
        label = _int_values(feature, "image/class/label")
        if label and any(b != label[0] for b in box_labels):
            issues.append(
                f"image/object/bbox/label {box_labels[:5]} differs from image/class/label {label[0]}"
            )
    return issues


def _synset_issue(
    feature: Any, label: int | None, seen: dict[str, tuple[int, str]], synset_of_label: dict[int, str]
) -> str | None:
    """Whether this record's label, synset and text agree with each other and with earlier records."""
    synset_raw = _bytes_value(feature, "image/class/synset")
    text_raw = _bytes_value(feature, "image/class/text")
    if label is None:
        return "no single image/class/label"
    if not 1 <= label <= release.NUM_SYNSETS:
        return f"label {label} is outside 1..{release.NUM_SYNSETS}"
    try:
        synset = synset_raw.decode() if synset_raw is not None else ""
        text = text_raw.decode("utf-8") if text_raw is not None else ""
    except UnicodeDecodeError:
        return "synset or text is not UTF-8"
    if not release.is_wnid(synset):
        return f"image/class/synset {synset!r} is not a WNID"
    if not text:
        return "image/class/text is missing or empty"
    first = seen.setdefault(synset, (label, text))
    if first != (label, text):
        return f"{synset} has label {label} and text {text!r} here, label {first[0]} and text {first[1]!r} earlier"
    other = synset_of_label.setdefault(label, synset)
    if other != synset:
        return f"label {label} is {synset} here but {other} earlier"
    return None


def _image_issue(
    feature: Any, decode: bool
) -> tuple[str | None, tuple[bytes, int, tuple[int, int, int]] | None]:
    """Why this record's image would not give the model zoo an RGB image of the recorded size, from
    its header; else what to decode (JPEG bytes, ratio, expected shape) if ``decode``."""
    encoded = _bytes_value(feature, "image/encoded")
    height = _int_values(feature, "image/height")
    width = _int_values(feature, "image/width")
    if not encoded:
        return "image/encoded is missing or empty", None
    try:
        info = images.probe(encoded, "image/encoded")
    except images.ImageError as e:
        return str(e), None
    # The header check is needed because tf.io.decode_jpeg also decodes PNG (and GIF) without
    # complaint, while the official ResNet reader's decode_and_crop_jpeg rejects them.
    if info.format != "JPEG":
        return f"image/encoded is a {info.format}, not a JPEG", None
    if info.needs_conversion:
        return (
            f"image/encoded is a JPEG with {info.components} components (CMYK?), not RGB or grayscale",
            None,
        )
    if height is None or width is None or len(height) != 1 or len(width) != 1:
        return None, None  # already a format issue; there is no size to compare with
    if (info.height, info.width) != (height[0], width[0]):
        return (
            f"the JPEG header says {info.width}x{info.height}, the record says {width[0]}x{height[0]}",
            None,
        )
    if not decode:
        return None, None
    # At 1/8 scale libjpeg skips most of the inverse DCT and gives ceil(size / 8); tiny images
    # are decoded at full size.
    ratio = 8 if min(info.height, info.width) >= 8 else 1
    expected = (math.ceil(info.height / ratio), math.ceil(info.width / ratio), 3)
    return None, (encoded, ratio, expected)


def worker_init() -> None:
    """Initializer of the spawn-context worker processes that write or read records.

    Runs before the worker first imports TensorFlow, so the environment set here applies to it.
    """
    # The work is CPU-only (protobufs, CRCs, JPEG decoding). Hiding GPUs keeps each of the N
    # workers from initialising CUDA and reserving most of a GPU's memory, as TF does by default.
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    # TF's C++ log lines (start-up notices, per-op warnings on damaged records, which the scan
    # reports itself) would repeat once per worker; errors still surface as Python exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Some start-up lines are written before TF's logging reads that setting: import TF once here
    # with stderr pointed at /dev/null, then restore it.
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        # Nor its Python warnings (a deprecation notice for the record iterator, once per worker).
        tf.get_logger().setLevel("ERROR")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def scan_shards(paths: Sequence[Path], workers: int, decode: bool = True) -> Iterator[ShardScan]:
    """:func:`scan_shard` for many shards in a pool of ``workers`` processes, yielded as each finishes.

    The pool is :func:`worker_pool`'s: TensorFlow is loaded only in the workers, so the calling
    process never imports it. The first failure (e.g. a missing file) cancels the shards not yet
    started and is raised.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        return
    executor = worker_pool(workers)
    futures: list[Future[ShardScan]] = []
    try:
        for path in paths:  # submitted in the given order, so shards start in that order
            futures.append(executor.submit(scan_shard, path, decode))
        for future in as_completed(futures):  # each future waited on once (not wait() in a loop)
            yield future.result()
    finally:
        # Also reached when the consumer stops early: do not start the remaining shards.
        settle(futures)


_POOLS: dict[tuple[int, int], ProcessPoolExecutor] = {}  # (this process, workers) -> pool
_KEEP_POOLS = False  # set by start_workers: keep the pools between calls in this process


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """This process's pool of ``workers`` record worker processes.

    The pool uses the spawn start method (TensorFlow is not fork-safe) and :func:`worker_init`;
    workers start as work arrives and each loads TensorFlow once (a few seconds). After each
    call the pool is shut down (:func:`release_workers`), unless :func:`start_workers` asked to
    keep it: then every later call in this process uses the same workers, as a build's training
    shards, validation shards and read-back do. A pool broken by a dead worker is replaced.
    """
    key = (os.getpid(), max(1, workers))
    pool = _POOLS.get(key)
    if pool is None or getattr(pool, "_broken", False):
        pool = ProcessPoolExecutor(
            max_workers=key[1], mp_context=multiprocessing.get_context("spawn"), initializer=worker_init
        )
        _POOLS[key] = pool
        # Shut down before multiprocessing, at exit, waits for this process's children: in a
        # process that multiprocessing started (Dagster's step processes), that wait comes before
        # the executor's own exit hook, and idle workers would be waited for forever.
        multiprocessing.util.Finalize(pool, pool.shutdown, exitpriority=100)
    return pool


def release_workers() -> None:
    """After a call: shut the pools down, unless :func:`start_workers` asked to keep them."""
    if not _KEEP_POOLS:
        stop_workers()


def stop_workers() -> None:
    """Shut down this process's record worker pools (made again, not kept, when next needed)."""
    global _KEEP_POOLS
    _KEEP_POOLS = False
    for key in [key for key in _POOLS if key[0] == os.getpid()]:
        _POOLS.pop(key).shutdown(wait=True)


def start_workers(workers: int, wait: bool = False) -> None:
    """Start the pool's workers now, so they load TensorFlow while this process does other work,
    and keep them for every later call in this process (until :func:`stop_workers`).

    With ``wait``, return once every worker is up (each has taken one of the short tasks sent).
    """
    global _KEEP_POOLS
    _KEEP_POOLS = True
    pool = worker_pool(workers)
    started = [pool.submit(_started, 0.5 if wait else 0.0) for _ in range(max(1, workers))]
    if wait:
        for future in started:
            future.result()


def _started(pause: float) -> int:
    time.sleep(pause)  # long enough that each worker takes one of these tasks
    return os.getpid()


def settle(futures: Sequence[Future[Any]]) -> None:
    """At the end of a call: cancel the futures not yet started, wait for the running ones, then
    :func:`release_workers`."""
    for future in futures:
        future.cancel()
    wait(futures)
    release_workers()
