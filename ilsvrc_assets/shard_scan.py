"""Reading TFRecord shards back the way the model zoo does, and saying what is wrong with them.

:func:`scan_shard` reads a written shard the way the model zoo's readers do (parsing with
``tf_example.feature_spec``, JPEG decoding with ``channels=3``) and reports what it found rather
than failing on the first bad record. It parses and decodes in batches (``tf.io.parse_example``,
``map_fn`` over ``decode_jpeg``) and falls back to ``parse_single_example``/``decode_jpeg`` one
record at a time only for a batch that fails, since each TensorFlow call from Python costs far
more than the work. :func:`scan_shards` does it for many shards in the caller's record workers.

TensorFlow is imported only inside the functions that read records, which run in the workers.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ilsvrc_assets import fileio, images, release
from ilsvrc_assets.formats.tfrecord import FRAMING as _FRAMING
from ilsvrc_assets.formats.tfrecord import index_text
from ilsvrc_assets.record_workers import RecordWorkers
from ilsvrc_assets.tf_example import feature_spec

if TYPE_CHECKING:
    from ilsvrc_assets.formats import RecordFormat

# How many problem descriptions a ShardScan keeps; the counts cover all of them.
MAX_PROBLEMS = 20


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
    # The MD5 of the DALI index of the records read (``formats.tfrecord.index_text``): what the shard's
    # index file must hold.
    index_md5: str = ""


# Records are checked in batches: one TensorFlow call per batch instead of one per record, since
# each call from Python costs a few hundred microseconds. A batch that fails is checked again one
# record at a time to find the culprits, which only happens in damaged shards.
BATCH = 128


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
    lengths: list[int] = []  # of each record read, for its index
    for raws, error in _record_batches(path, BATCH):
        consumed += sum(_FRAMING + len(raw) for raw in raws)
        lengths.extend(len(raw) for raw in raws)
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
    scan.index_md5 = hashlib.md5(index_text(lengths)).hexdigest()
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


def scan_shards(
    paths: Sequence[Path],
    workers: RecordWorkers,
    decode: bool = True,
    record_format: RecordFormat | None = None,
) -> Iterator[ShardScan]:
    """:func:`scan_shard` (or ``record_format.scan``) for many shards in the caller's ``workers``,
    yielded as each finishes.

    TensorFlow is loaded only in the workers, so the calling process never imports it. The first
    failure (e.g. a missing file) cancels the shards not yet started and is raised.
    """
    paths = [Path(p) for p in paths]
    scan = scan_shard if record_format is None else record_format.scan
    futures: list[Future[ShardScan]] = []
    try:
        for path in paths:  # submitted in the given order, so shards start in that order
            futures.append(workers.submit(scan, path, decode))
        for future in as_completed(futures):  # each future waited on once (not wait() in a loop)
            yield future.result()
    finally:
        # Also reached when the consumer stops early: do not start the remaining shards.
        workers.finish(futures)
