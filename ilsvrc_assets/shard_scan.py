"""Reading TFRecord shards back the way the model zoo does, and saying what is wrong with them.

:func:`scan_shard` reads a written shard the way the model zoo's readers do (parsing with
``tf_example.feature_spec``, JPEG decoding with ``channels=3``) and reports what it found rather
than failing on the first bad record. It parses and decodes in batches (``tf.io.parse_example``,
``map_fn`` over ``decode_jpeg``) and falls back to ``parse_single_example``/``decode_jpeg`` one
record at a time only for a batch that fails, since each TensorFlow call from Python costs far
more than the work. :func:`scan_shards` does it for many shards in the caller's record workers.

The same checks run while a shard is written (``shards.write_shard``): :class:`RecordCheck` takes
the records one at a time, from the writer as it writes them or from the file as it is read
back, and says what it found as a :class:`ShardScan`. Which images are decoded is a policy
(:data:`ALL`, :data:`SAMPLE`, :data:`NONE`); the writer also decodes every image it re-encoded
and compares every other image's bytes with the archive's (their CRC-32, taken as they were read).

TensorFlow is imported only inside the functions that read records, which run in the workers.
"""

from __future__ import annotations

import functools
import hashlib
import math
import zlib
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
    decoded: int = 0  # images decoded (all, the sample, or none: the decode policy)
    compared: int = 0  # images whose bytes were compared with the archive's (while writing)


ALL = "all"
"""Decode policy: every image is decoded."""
SAMPLE = "sample"
"""Decode policy: the fixed sample of :func:`in_decode_sample` (and, while writing, every image re-encoded)."""
NONE = "none"
"""Decode policy: no image is decoded (the headers are still checked)."""
DECODE_POLICIES = (ALL, SAMPLE, NONE)

DECODE_SAMPLE_ONE_IN = 64
"""The sample decoded under :data:`SAMPLE`: the images whose file name's CRC-32 is a multiple of 64
(one in 64, about 20,000 of the training images; the same images in every run)."""


def in_decode_sample(filename: str) -> bool:
    """Whether the image called ``filename`` (e.g. ``n01440764_10026.JPEG``) is in the fixed decode sample."""
    return zlib.crc32(filename.encode()) % DECODE_SAMPLE_ONE_IN == 0


def decodes(policy: str, filename: str, forced: bool = False) -> bool:
    """Whether the image ``filename`` is decoded under the decode ``policy`` (always when ``forced``:
    an image the writer re-encoded)."""
    return forced or policy == ALL or (policy == SAMPLE and in_decode_sample(filename))


def decode_policy(decode: bool | str) -> str:
    """A decode policy from a policy or a bool (True: :data:`ALL`, False: :data:`NONE`)."""
    policy = (ALL if decode else NONE) if isinstance(decode, bool) else decode
    if policy not in DECODE_POLICIES:
        raise ValueError(f"decode policy {decode!r}: expected one of {', '.join(DECODE_POLICIES)}")
    return policy


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
    parse_all: Any  # raw records [N] -> every feature; the box lists as "<key>#values", "<key>#lengths"


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

    @tf.function(input_signature=many)
    def parse_all(records: Any) -> Any:
        parsed = tf.io.parse_example(records, spec)
        found = {}
        for key, value in parsed.items():
            if isinstance(value, tf.SparseTensor):
                ragged = tf.RaggedTensor.from_sparse(value)
                found[f"{key}#values"], found[f"{key}#lengths"] = ragged.flat_values, ragged.row_lengths()
            else:
                found[key] = value
        return found

    return _Checks(parse_batch, decode_batch, parse_one, shape_at, parse_all)


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
    compared: bool = False  # its image bytes were compared with the archive's


_KEYS = frozenset(release.FEATURE_KEYS)
_BOX_KEYS = tuple(f"image/object/bbox/{k}" for k in ("xmin", "ymin", "xmax", "ymax"))


@dataclass
class _Batch:
    """What the checks found in a batch of records that have no problem (:func:`_check_fast`)."""

    labels: dict[int, int]
    named: set[tuple[str, int, str]]  # (synset, label, text) of its records
    decoded: int
    compared: int


def _check_fast(
    raws: Sequence[bytes], policy: str, forced: Sequence[bool], crcs: Sequence[int | None]
) -> _Batch | None:
    """The checks of :func:`_check_batch` on a batch, on arrays of every feature (one parse for the
    batch) rather than record by record; None as soon as any record may have a problem (the batch
    is then checked record by record, which says what the problem is). Synset consistency with
    other batches is left to the caller."""
    import numpy as np
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    checks = _tf_checks()
    try:
        if any(set(tf.train.Example.FromString(raw).features.feature) != _KEYS for raw in raws):
            return None
        out = {key: value.numpy() for key, value in checks.parse_all(list(raws)).items()}
    except (DecodeError, tf.errors.OpError, UnicodeDecodeError):
        return None
    label, height, width = out["image/class/label"][:, 0], out["image/height"], out["image/width"]
    box_count = out["image/object/bbox/label#lengths"]
    box_values = [out[f"{key}#values"] for key in _BOX_KEYS]
    if not (
        np.all(out["image/colorspace"] == b"RGB")
        and np.all(out["image/format"] == b"JPEG")
        and np.all(out["image/channels"] == 3)
        and np.all(height > 0)
        and np.all(width > 0)
        and np.all((label >= 1) & (label <= release.NUM_SYNSETS))
        and all(out["image/filename"])
        and all(np.array_equal(out[f"{key}#lengths"], box_count) for key in _BOX_KEYS)
        and all(np.all((v >= 0.0) & (v <= 1.0)) for v in box_values)  # also false for NaN
        and np.array_equal(out["image/object/bbox/label#values"], np.repeat(label, box_count))
    ):
        return None
    try:
        named = {
            (synset.decode(), int(number), text.decode("utf-8"))
            for synset, number, text in zip(out["image/class/synset"], label, out["image/class/text"])
        }
    except UnicodeDecodeError:
        return None
    if any(not release.is_wnid(synset) or not text for synset, _, text in named):
        return None
    to_decode: list[tuple[bytes, int, tuple[int, int, int]]] = []
    compared = 0
    for i, encoded in enumerate(out["image/encoded"]):
        try:
            info = images.probe(encoded, "image/encoded")
        except images.ImageError:
            return None
        if (
            info.format != "JPEG"
            or info.needs_conversion
            or (info.height, info.width) != (height[i], width[i])
        ):
            return None
        if crcs[i] is not None:
            compared += 1
            if zlib.crc32(encoded) != crcs[i]:
                return None
        if decodes(policy, out["image/filename"][i].decode("utf-8", "replace"), forced[i]):
            to_decode.append((encoded, *_decoded_shape(info)))
    batched = [item for item in to_decode if item[1] == 8]
    try:
        shapes = (
            [
                tuple(int(x) for x in shape)
                for shape in checks.decode_batch([e for e, _, _ in batched]).numpy()
            ]
            if batched
            else []
        )
        shapes += [tuple(int(x) for x in checks.decode_one(e, r).numpy()) for e, r, _ in to_decode if r != 8]
    except (tf.errors.OpError, UnicodeDecodeError):
        return None
    expected = [item[2] for item in batched] + [item[2] for item in to_decode if item[1] != 8]
    if shapes != expected:
        return None
    numbers, counts = np.unique(label, return_counts=True)
    return _Batch(dict(zip(numbers.tolist(), counts.tolist())), named, len(to_decode), compared)


def _check_batch(
    raws: Sequence[bytes],
    first_index: int,
    policy: str,
    forced: Sequence[bool] | None = None,
    crcs: Sequence[int | None] | None = None,
) -> list[_Checked]:
    """Format and image checks of consecutive records (synset consistency is left to the caller).

    An image is decoded when the ``policy`` says so, or when ``forced`` (per record) does;
    ``crcs`` (per record, None for none) are the CRC-32s its image bytes must have.
    """
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
        decode = decodes(policy, name, forced is not None and forced[offset])
        record.image_issue, record.to_decode = _image_issue(feature, decode)
        if crcs is not None and crcs[offset] is not None:
            record.compared = True
            encoded = _bytes_value(feature, "image/encoded") or b""
            if (crc := zlib.crc32(encoded)) != crcs[offset]:
                record.image_issue = (
                    f"image/encoded is not the image's bytes in the archive (CRC-32 {crc:08x}, "
                    f"{crcs[offset]:08x} as read)"
                )
                record.to_decode = None
        checked.append(record)

    # The model zoo's parse; per record only if the batch fails.
    try:
        checks.parse_batch(list(raws))
    except (tf.errors.OpError, UnicodeDecodeError):
        for raw, record in zip(raws, checked):
            if record.example is None:
                continue  # already reported as not a tf.train.Example
            try:
                checks.parse_one(raw)
            except (tf.errors.OpError, UnicodeDecodeError) as e:  # TF may fail to decode its own message
                record.format_issues.insert(0, f"parse_single_example fails: {_first_line(e)}")

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


class Findings:
    """What the checks of one shard found so far, kept as a :class:`ShardScan`: counts, labels, and
    the first :data:`MAX_PROBLEMS` problems (each naming the shard), the rest counted."""

    def __init__(self, name: str):
        self.scan = ShardScan(name=name, records=0, bytes=0, md5="")
        self._more = 0
        self._labels: dict[int, tuple[str, str]] = {}  # label -> what the first record of it said

    def problem(self, text: str) -> None:
        if len(self.scan.problems) < MAX_PROBLEMS:
            self.scan.problems.append(f"{self.scan.name}: {text}")
        else:
            self._more += 1

    def same_synset(self, label: int, named: tuple[str, str], where: str) -> None:
        """Note that ``where`` says ``label`` is ``named``; a problem if an earlier record said otherwise."""
        first = self._labels.setdefault(label, named)
        if first != named:
            self.scan.synsets_ok = False
            self.problem(f"{where}: label {label} is {named} here but {first} earlier")

    def finish(self, size: int, md5: str, index_md5: str = "") -> ShardScan:
        """The findings, for a file of ``size`` bytes with that MD5 (and DALI index MD5)."""
        scan = self.scan
        scan.bytes, scan.md5, scan.index_md5 = size, md5, index_md5
        if self._more:
            scan.problems.append(f"{scan.name}: ... and {self._more} more problems")
            self._more = 0
        return scan


class RecordCheck:
    """The checks of :func:`scan_shard` on a TFRecord shard's records, given one at a time (by its
    writer as it writes them, or by :func:`scan_shard` as it reads them), in batches of :data:`BATCH`.

    ``add(raw, crc, decode)``: the record's serialized ``tf.train.Example``, the CRC-32 its image
    must have (None: not compared) and whether its image must be decoded whatever the policy (a
    re-encoded image). Runs in a record worker (TensorFlow parses and decodes).
    """

    def __init__(self, name: str, policy: str = ALL):
        self.policy = decode_policy(policy)
        self.found = Findings(name)
        self._seen: dict[str, tuple[int, str]] = {}  # synset -> (label, text) where first seen
        self._synset_of_label: dict[int, str] = {}
        self._raws: list[bytes] = []
        self._crcs: list[int | None] = []
        self._forced: list[bool] = []
        self.lengths: list[int] = []  # of each record, for the DALI index

    def add(self, raw: bytes, crc: int | None = None, decode: bool = False) -> None:
        self._raws.append(raw)
        self._crcs.append(crc)
        self._forced.append(decode)
        self.lengths.append(len(raw))
        if len(self._raws) == BATCH:
            self._check()

    def _consistent(self, named: set[tuple[str, int, str]]) -> bool:
        """Whether each (synset, label, text) agrees with those seen before in the shard (and with each
        other); if so, they are now seen."""
        seen, of_label = dict(self._seen), dict(self._synset_of_label)
        for synset, label, text in named:
            if seen.setdefault(synset, (label, text)) != (label, text):
                return False
            if of_label.setdefault(label, synset) != synset:
                return False
        self._seen, self._synset_of_label = seen, of_label
        return True

    def damaged(self, text: str) -> None:
        """The rest of the file cannot be read (``text`` says why): one more record in error."""
        self._check()
        self.found.scan.parse_errors += 1
        self.found.problem(f"record {self.found.scan.records} and after: unreadable, {text}")

    def finish(self, size: int, md5: str) -> ShardScan:
        """What the checks found, for a file of ``size`` bytes with that MD5."""
        self._check()
        return self.found.finish(size, md5, hashlib.md5(index_text(self.lengths)).hexdigest())

    def _check(self) -> None:
        scan, found = self.found.scan, self.found
        if not self._raws:
            return
        fast = _check_fast(self._raws, self.policy, self._forced, self._crcs)
        if fast is not None and self._consistent(fast.named):
            for label, count in fast.labels.items():
                scan.labels[label] = scan.labels.get(label, 0) + count
            scan.decoded += fast.decoded
            scan.compared += fast.compared
            scan.records += len(self._raws)
            self._raws, self._crcs, self._forced = [], [], []
            return
        for record in _check_batch(self._raws, scan.records, self.policy, self._forced, self._crcs):
            if record.format_issues:
                scan.parse_errors += 1
                found.problem(f"{record.where}: {'; '.join(record.format_issues)}")
            if record.example is not None:
                feature = record.example.features.feature
                labels = _int_values(feature, "image/class/label")
                label = labels[0] if labels is not None and len(labels) == 1 else None
                if label is not None:
                    scan.labels[label] = scan.labels.get(label, 0) + 1
                if synset_issue := _synset_issue(feature, label, self._seen, self._synset_of_label):
                    scan.synsets_ok = False
                    found.problem(f"{record.where}: {synset_issue}")
            if record.image_issue:
                scan.decode_errors += 1
                found.problem(f"{record.where}: {record.image_issue}")
            scan.decoded += record.to_decode is not None
            scan.compared += record.compared
        scan.records += len(self._raws)
        self._raws, self._crcs, self._forced = [], [], []


def scan_shard(path: Path, decode: bool | str = ALL) -> ShardScan:
    """Read a TFRecord shard back and check every record; see :class:`ShardScan` for what is counted.

    Each record is parsed with the model zoo's spec (:func:`feature_spec`), and its raw
    ``tf.train.Example`` is checked for exactly the 15 keys and consistent values. The image
    header is checked to be an RGB or grayscale JPEG of the recorded size; the images the decode
    policy ``decode`` names (True: all, False: none, or :data:`SAMPLE`) are also decoded with
    ``tf.io.decode_jpeg(channels=3)`` at 1/8 scale (which still entropy-decodes every block, so
    damaged data is found). A corrupt or truncated file is reported in the result, not raised; a
    missing file raises FileNotFoundError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard not found")
    size, md5 = path.stat().st_size, fileio.md5_file(path)
    check = RecordCheck(path.name, decode_policy(decode))
    consumed = 0  # bytes of the complete records read, framing included
    for raws, error in _record_batches(path, BATCH):
        consumed += sum(_FRAMING + len(raw) for raw in raws)
        for raw in raws:
            check.add(raw)
        if error is not None:
            # What follows the damage cannot be read; it counts as one more record in error.
            check.damaged(f"the file is corrupt or truncated ({error})")
            break
    else:
        if consumed != size:
            # TFRecordDataset ends silently when the file stops inside a record's 12-byte header,
            # so a cut there would go unnoticed without comparing sizes.
            check.damaged(f"the file is truncated ({size - consumed} bytes after the last complete record)")
    return check.finish(size, md5)


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
    return None, (encoded, *_decoded_shape(info))


def _decoded_shape(info: images.ImageInfo) -> tuple[int, tuple[int, int, int]]:
    """The scale an image is decoded at (1/8, or whole for a tiny one) and the shape that gives.

    At 1/8 scale libjpeg skips most of the inverse DCT but still entropy-decodes every block, and
    gives ceil(size / 8)."""
    ratio = 8 if min(info.height, info.width) >= 8 else 1
    return ratio, (math.ceil(info.height / ratio), math.ceil(info.width / ratio), 3)


def scan_shards(
    paths: Sequence[Path],
    workers: RecordWorkers,
    decode: bool | str = ALL,
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
