"""WebDataset tar shards for PyTorch (the ``webdataset`` library, timm, open_clip): one sample per image.

A shard is a POSIX (ustar) tar ``imagenet1k-<split>-NNNN.tar`` in ``<data>/webdataset``, holding for
each image of the plan, in the plan's order, three members named by the image's official stem (the
sample's ``__key__``, e.g. ``n01440764_10026`` or ``ILSVRC2012_val_00000001``):

- ``<key>.jpg``: the JPEG bytes the TFRecord of the image holds (PNG and CMYK already re-encoded);
- ``<key>.cls``: the 0-based label in sorted WNID order, as decimal text (torchvision's, timm's and
  Hugging Face's numbering: the model zoo's 1-based label minus one);
- ``<key>.json``: ``wnid``, ``text``, ``label`` (the model zoo's 1..1000), ``width``, ``height`` and
  ``boxes`` (the kept boxes, ``[xmin, ymin, xmax, ymax]`` normalised to [0, 1], as in the TFRecord).

Every member header has the same modification time (0), owner (uid and gid 0, no names) and mode
(0444), so a shard's bytes depend on its images only. The headers are made here rather than by
:mod:`tarfile` (the bytes tarfile writes for the same members, at a tenth of the cost: a
``TarInfo`` per member costs more than the rest of a sample), and the tars are read back with the
package's own tar reader (``tar_reader``) for the same reason. The manifest of the tars (``manifest.json``
beside them) also gives ``_info.json``, the split sizes and shard lengths timm's WebDataset reader
(``--dataset wds/...``) reads, for every split whose shards are all present.
"""

from __future__ import annotations

import io
import json
import math
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, ClassVar

from ilsvrc_assets import fileio, images, release, shard_scan, tar_reader
from ilsvrc_assets.formats import HashedFileWriter, RecordFormat, StoredRecord
from ilsvrc_assets.images import ImageInfo
from ilsvrc_assets.shard_plan import RecordSource, ShardJob
from ilsvrc_assets.shard_scan import ShardScan

DATASET_NAME = "imagenet-1k"  # the name in _info.json
FILE_PREFIX = "imagenet1k"  # of the tar files: imagenet1k-train-0000.tar
INFO_JSON = "_info.json"  # the file timm's WebDataset reader looks for first
MEMBERS = ("jpg", "cls", "json")  # the members of a sample, in the order they are written
JSON_KEYS = ("wnid", "text", "label", "width", "height", "boxes")
# Fixed member headers, so that two writes of a shard are identical byte for byte.
MTIME = 0
MODE = 0o444
# A tar header is one 512-byte block and each member is padded to whole blocks; the tar ends in two
# zero blocks, padded to a whole 10,240-byte record (as tarfile and GNU tar write it).
BLOCK = 512
RECORD = 20 * BLOCK
NAME_FIELD = 100
# A ustar header, as tarfile writes it for a regular file with the fixed fields above, in three parts
# around the fields that vary (name, size) and the checksum.
_AFTER_NAME = f"{MODE:07o}\0".encode() + b"0000000\0" * 2  # mode, uid, gid
_BEFORE_CHECKSUM = f"{MTIME:011o}\0".encode()  # mtime
_AFTER_CHECKSUM = (
    b"0"  # typeflag: a regular file
    + bytes(100)  # linkname
    + b"ustar\x0000"  # magic and version
    + bytes(64)  # uname, gname: none
    + bytes(16)  # devmajor, devminor: none, for a regular file
    + bytes(155 + 12)  # prefix, padding to the block
)
# The checksum is the sum of the header's bytes with its own field as eight spaces.
_FIXED_SUM = sum(_AFTER_NAME) + sum(_BEFORE_CHECKSUM) + 8 * ord(" ") + sum(_AFTER_CHECKSUM)
# Per-sample bytes besides the image (three headers, padding, the label and the JSON), generously.
SAMPLE_OVERHEAD = 3 * BLOCK + 3 * BLOCK + 2048
TAR_END = 10240

Sample = tuple[str, dict[str, bytes], list[str]]  # key, {extension: bytes}, issues with its members


def key_of(filename: str) -> str:
    """The sample key of an image: its file name without the extension (``n01440764_10026``)."""
    return filename.rsplit(".", 1)[0]


def sample_json(source: RecordSource, info: ImageInfo) -> bytes:
    """The ``.json`` member of an image's sample (compact, keys in a fixed order, ASCII)."""
    meta = {
        "wnid": source.synset,
        "text": source.text,
        "label": source.label,
        "width": info.width,
        "height": info.height,
        "boxes": [list(box) for box in source.boxes],
    }
    return json.dumps(meta, separators=(",", ":")).encode()


def _member_name(name: str) -> bytes:
    encoded = name.encode()
    if len(encoded) > NAME_FIELD or not name.isascii():
        raise ValueError(f"{name!r}: a member name must be ASCII and at most {NAME_FIELD} bytes")
    return encoded


def header(name: bytes, size: int) -> bytes:
    """The 512-byte ustar header of a regular file ``name`` (ASCII, at most 100 bytes) of ``size`` bytes."""
    size_field = f"{size:011o}\0".encode()
    checksum = _FIXED_SUM + sum(name) + sum(size_field)
    return b"".join(
        (
            name,
            bytes(NAME_FIELD - len(name)),
            _AFTER_NAME,
            size_field,
            _BEFORE_CHECKSUM,
            f"{checksum:06o}\0 ".encode(),
            _AFTER_CHECKSUM,
        )
    )


class TarSampleWriter(HashedFileWriter):
    """A tar shard being written: three members per image, with fixed headers."""

    def __init__(self, file: fileio.HashedWriter):
        self._file = file
        self.written = 0

    def add(self, source: RecordSource, image: bytes, info: ImageInfo) -> Sample:
        """Write the sample; returns it (key and members) for the checks."""
        key = key_of(source.filename)
        members = {"jpg": image, "cls": str(source.label - 1).encode(), "json": sample_json(source, info)}
        for extension, data in members.items():
            size = len(data)
            padding = -size % BLOCK
            self._file.write(header(_member_name(f"{key}.{extension}"), size))
            self._file.write(data)
            self._file.write(bytes(padding))
            self.written += BLOCK + size + padding
        return key, members, []

    def close(self) -> None:
        """End the tar: two zero blocks, then zeros to a whole record."""
        end = self.written + 2 * BLOCK
        self._file.write(bytes(2 * BLOCK + (-end % RECORD)))


class WebDataset(RecordFormat):
    """WebDataset tar shards (see the module's docstring)."""

    name = "webdataset"
    folder = "webdataset"
    asset_suffix = "webdataset"
    record_keys = ("__key__", *MEMBERS)
    check_descriptions: ClassVar[dict[str, str]] = {
        "every_label_in_each_split": "Every class (.cls 0..999, counted as the 1-based label 1..1000 "
        "the TFRecords use) has samples in each split.",
        "records_parse": "Every sample is a .jpg, a .cls (0..999) and a .json (wnid, text, label = cls + 1, "
        "width, height, boxes in [0, 1]), under a key of its own.",
        "images_decode": "Every .jpg is an RGB or grayscale JPEG of the size its .json gives, and is the "
        "archive's bytes (CRC-32 as read, while writing) or decodes (Pillow, as the PyTorch readers decode): "
        "every re-encoded image, every image when the archives are not the official ones, else a fixed "
        "1-in-64 sample (the audit can decode all).",
    }

    def file_name(self, shard: str) -> str:
        split, index, count = release.parse_shard_name(shard)
        digits = max(4, len(str(count - 1)))
        return f"{FILE_PREFIX}-{split}-{index:0{digits}d}.tar"

    def space_needed(self, job: ShardJob) -> int:
        # Its images (2 % more for the few re-encoded) plus headers, padding and the small members.
        return sum(r.size for r in job.records) * 102 // 100 + SAMPLE_OVERHEAD * len(job.records) + TAR_END

    @contextmanager
    def open(self, path: Path) -> Iterator[TarSampleWriter]:
        with open(path, "wb", buffering=1 << 20) as f:
            writer = TarSampleWriter(fileio.HashedWriter(f))
            yield writer
            writer.close()

    def checker(self, name: str, policy: str) -> SampleCheck:
        return SampleCheck(name, policy)

    def scan(self, path: Path, decode: bool | str = True) -> ShardScan:
        return scan_tar(path, decode)

    def first_records(self, path: Path, count: int) -> list[StoredRecord]:
        found = []
        with open(path, "rb") as f:
            for key, members, _ in _samples(f):
                if len(found) == count:
                    break
                meta = _json_object(members.get("json", b"")) or {}
                found.append(
                    StoredRecord(
                        filename=key,
                        synset=str(meta.get("wnid", "")),
                        label=int(meta.get("label", 0)) if isinstance(meta.get("label"), int) else 0,
                        image=members.get("jpg", b""),
                        boxes=tuple(tuple(b) for b in meta.get("boxes", []) if _is_box(b)),
                    )
                )
        return found

    def dataset_files(self, manifest: dict) -> dict[str, str]:
        return {INFO_JSON: info_json(manifest, self)}


def info_json(manifest: dict, record_format: RecordFormat) -> str:
    """``_info.json`` as timm's WebDataset reader reads it: per split, ``name``, ``num_samples``,
    ``filenames`` (relative to the folder) and ``shard_lengths``, for each split of the read-back
    summary ``manifest`` whose shards are all present (a split still being written is left out)."""
    splits = {}
    for split, info in manifest["splits"].items():
        shards = info["shards"]
        if not shards or any(shard.get("missing") for shard in shards):
            continue
        splits[split] = {
            "name": split,
            "num_samples": sum(shard["records"] for shard in shards),
            "filenames": [record_format.file_name(shard["name"]) for shard in shards],
            "shard_lengths": [shard["records"] for shard in shards],
        }
    return json.dumps({"name": DATASET_NAME, "splits": splits}, indent=1)


# --- Reading the tars back ------------------------------------------------------------------------


class _Damaged(Exception):
    """The tar cannot be read on from here (cut short, or not a tar)."""


def _samples(f: IO[bytes]) -> Iterator[tuple[str, dict[str, bytes], list[str]]]:
    """The samples of a tar stream in order: (key, {extension: bytes}, issues with its members).

    Consecutive members with the same key form a sample, as the ``webdataset`` library groups them.
    Raises :class:`_Damaged` where the tar stops being readable.
    """
    key: str | None = None
    members: dict[str, bytes] = {}
    issues: list[str] = []
    try:
        for member, data in tar_reader.stream_members(f, Path(getattr(f, "name", "tar")).name):
            this_key, dot, extension = member.name.rsplit("/", 1)[-1].partition(".")
            if this_key != key:
                if key is not None:
                    yield key, members, issues
                key, members, issues = this_key, {}, []
            if not dot:
                issues.append(f"member {member.name!r} has no extension")
            elif extension in members:
                issues.append(f"member {member.name!r} appears twice")
            else:
                members[extension] = data or b""
    except (tar_reader.TarError, OSError) as e:
        raise _Damaged(str(e)) from e
    if key is not None:
        yield key, members, issues


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _is_box(box: Any) -> bool:
    return (
        isinstance(box, list)
        and len(box) == 4
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in box)
    )


def _sample_issues(members: dict[str, bytes]) -> tuple[list[str], int | None, dict[str, Any] | None]:
    """What is wrong with a sample's members (not its image); its 1-based label and JSON if readable."""
    issues = []
    if sorted(members) != sorted(MEMBERS):
        issues.append(f"members {sorted(members)}, not {sorted(MEMBERS)}")
    cls_text = members.get("cls", b"").decode("ascii", "replace")
    cls = int(cls_text) if cls_text.isdigit() else None
    if cls is None or not 0 <= cls < release.NUM_SYNSETS:
        issues.append(f".cls is {cls_text!r}, not a label 0..{release.NUM_SYNSETS - 1}")
        cls = None
    meta = _json_object(members.get("json", b"")) if "json" in members else None
    if "json" in members and meta is None:
        issues.append(".json is not a JSON object")
    if meta is not None:
        if sorted(meta) != sorted(JSON_KEYS):
            issues.append(f".json keys {sorted(meta)}, not {sorted(JSON_KEYS)}")
        if cls is not None and meta.get("label") != cls + 1:
            issues.append(f".json label {meta.get('label')!r} is not .cls + 1 = {cls + 1}")
        if not release.is_wnid(str(meta.get("wnid", ""))):
            issues.append(f".json wnid {meta.get('wnid')!r} is not a WNID")
        if not isinstance(meta.get("text"), str) or not meta["text"]:
            issues.append(".json text is missing or empty")
        for size in ("width", "height"):
            if not isinstance(meta.get(size), int) or meta[size] <= 0:
                issues.append(f".json {size} is {meta.get(size)!r}, not a positive number")
        boxes = meta.get("boxes")
        if not isinstance(boxes, list) or not all(_is_box(b) for b in boxes):
            issues.append(".json boxes is not a list of [xmin, ymin, xmax, ymax]")
        elif any(not 0.0 <= x <= 1.0 for b in boxes for x in b):
            issues.append(".json boxes has coordinates outside [0, 1]")
    return issues, (cls + 1 if cls is not None else None), meta


def _image_issue(data: bytes, meta: dict[str, Any] | None, decode: bool, where: str) -> str | None:
    """Why the ``.jpg`` is not an RGB or grayscale JPEG of the recorded size that decodes."""
    if not data:
        return ".jpg is missing or empty"
    try:
        info = images.probe(data, where)
    except images.ImageError as e:
        return str(e)
    if info.format != "JPEG":
        return f".jpg is a {info.format}, not a JPEG"
    if info.needs_conversion:
        return f".jpg is a JPEG with {info.components} components (CMYK?), not RGB or grayscale"
    if meta is not None and (meta.get("width"), meta.get("height")) != (info.width, info.height):
        return f"the JPEG header says {info.width}x{info.height}, the .json {meta.get('width')}x{meta.get('height')}"
    if not decode:
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            # At 1/8 scale libjpeg skips most of the inverse DCT but still decodes every block.
            image.draft("RGB", (math.ceil(info.width / 8), math.ceil(info.height / 8)))
            image.load()
    except Exception as e:  # noqa: BLE001 (Pillow raises OSError, SyntaxError, ValueError, ...)
        return f".jpg does not decode ({type(e).__name__}: {e})"
    return None


class SampleCheck:
    """The checks of :func:`scan_tar` on a shard's samples, given one at a time (by its writer as it
    writes them, or by :func:`scan_tar` as it reads them): ``add((key, members, member issues),
    crc, decode)``, as ``shard_scan.RecordCheck`` takes a TFRecord's records."""

    def __init__(self, name: str, policy: str = shard_scan.ALL):
        self.policy = shard_scan.decode_policy(policy)
        self.found = shard_scan.Findings(name)
        self._keys: set[str] = set()

    def add(self, sample: Sample, crc: int | None = None, decode: bool = False) -> None:
        key, members, member_issues = sample
        scan, found = self.found.scan, self.found
        where = f"sample {scan.records} ({key})"
        scan.records += 1
        issues, label, meta = _sample_issues(members)
        issues = member_issues + issues
        if key in self._keys:
            issues.append("the key appears in an earlier sample too")
        self._keys.add(key)
        if issues:
            scan.parse_errors += 1
            found.problem(f"{where}: {'; '.join(issues)}")
        if label is not None:
            scan.labels[label] = scan.labels.get(label, 0) + 1
            if meta is not None:
                found.same_synset(label, (str(meta.get("wnid")), str(meta.get("text"))), where)
        image = members.get("jpg", b"")
        decode = shard_scan.decodes(self.policy, f"{key}.JPEG", decode)
        image_issue = _image_issue(image, meta, decode, f"{scan.name} {where}")
        scan.decoded += decode and image_issue is None
        if crc is not None:
            scan.compared += 1
            if image_issue is None and (actual := zlib.crc32(image)) != crc:
                image_issue = (
                    f".jpg is not the image's bytes in the archive (CRC-32 {actual:08x}, {crc:08x} as read)"
                )
        if image_issue:
            scan.decode_errors += 1
            found.problem(f"{where}: {image_issue}")

    def damaged(self, text: str) -> None:
        """The rest of the tar cannot be read (``text`` says why): one more sample in error."""
        self.found.scan.parse_errors += 1
        self.found.problem(f"sample {self.found.scan.records} and after: unreadable, {text}")

    def finish(self, size: int, md5: str) -> ShardScan:
        return self.found.finish(size, md5)


def scan_tar(path: Path, decode: bool | str = True) -> ShardScan:
    """Read a WebDataset shard back and check every sample (see ``WebDataset.check_descriptions``);
    ``decode``: the decode policy (``shard_scan.decode_policy``).

    Labels are counted 1-based (``.cls`` + 1), as the TFRecords' are, so the same checks judge both.
    A corrupt or truncated tar is reported in the result, not raised; a missing file raises
    FileNotFoundError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard not found")
    size, md5 = path.stat().st_size, fileio.md5_file(path)
    check = SampleCheck(path.name, shard_scan.decode_policy(decode))
    with open(path, "rb") as f:
        try:
            for sample in _samples(f):
                check.add(sample)
        except _Damaged as e:
            check.damaged(f"the tar is corrupt or truncated ({e})")
    return check.finish(size, md5)


FORMAT = WebDataset()
