"""Reading a shard back: what scan_shard finds in good and damaged records."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ilsvrc_assets import images
from ilsvrc_assets.formats.tfrecord import index_text, read_payload_lengths
from ilsvrc_assets.record_workers import RecordWorkers
from ilsvrc_assets.shard_plan import RecordSource
from ilsvrc_assets.shard_scan import BATCH, ShardScan, scan_shard, scan_shards
from ilsvrc_assets.tf_example import encode_example
from ilsvrc_assets_tests.helpers import (
    TENCH,
    TOILET_TISSUE,
    cmyk_jpeg,
    edited,
    encode_record,
    gray_jpeg,
    png,
    rgb_jpeg,
    write_records,
)

tf = pytest.importorskip("tensorflow")


def test_scan_shard_of_good_records(tmp_path: Path) -> None:
    path = write_records(
        tmp_path / "validation-00000-of-00001",
        [
            encode_record(TENCH, rgb_jpeg(40, 30)),
            encode_record(TOILET_TISSUE, gray_jpeg(7, 5)),
            encode_record(TENCH, rgb_jpeg(64, 48, progressive=True)),
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
        index_md5=hashlib.md5(index_text(read_payload_lengths(path))).hexdigest(),
        decoded=3,
    )


def test_scan_shard_of_an_empty_file(tmp_path: Path) -> None:
    path = write_records(tmp_path / "train-00000-of-00001", [])
    assert path.stat().st_size == 0
    scan = scan_shard(path)
    assert (scan.records, scan.parse_errors, scan.decode_errors, scan.problems) == (0, 0, 0, [])


def test_scan_shard_counts_a_png_record_as_a_decode_error(tmp_path: Path) -> None:
    # tf.io.decode_jpeg itself decodes PNG bytes without complaint; the header check catches them.
    path = write_records(
        tmp_path / "train-00000-of-00001",
        [encode_record(TENCH, rgb_jpeg()), encode_record(TOILET_TISSUE, png())],
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
        [encode_record(TENCH, cmyk_jpeg()), wrong_size, encode_example(TENCH, cut, images.probe(cut, "cut"))],
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
    good = encode_record(TENCH, rgb_jpeg())
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
    good = encode_record(TENCH, rgb_jpeg())
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

    other_synset = encode_record(RecordSource(**{**TOILET_TISSUE.__dict__, "label": 1}), rgb_jpeg())
    scan = scan_shard(write_records(tmp_path / "d", [good, other_synset]))
    assert not scan.synsets_ok and "label 1 is n15075141 here but n01440764 earlier" in scan.problems[0]


def test_scan_shard_keeps_only_the_first_problems(tmp_path: Path) -> None:
    bad = encode_record(TENCH, png())
    scan = scan_shard(write_records(tmp_path / "train-00000-of-00001", [bad] * 25), decode=False)
    assert scan.decode_errors == 25
    assert len(scan.problems) == 21 and scan.problems[-1] == "train-00000-of-00001: ... and 5 more problems"


def test_scan_shard_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train-00000-of-00001: shard not found"):
        scan_shard(tmp_path / "train-00000-of-00001")


def test_scan_shard_counts_exactly_across_batches(tmp_path: Path) -> None:
    # More records than one checking batch, damage in a later batch, then a file cut inside
    # record 280: every count and index must still be exact.
    good = encode_record(TENCH, rgb_jpeg(16, 16))
    cut = rgb_jpeg(64, 48)[:300]
    records = [good] * 300
    records[BATCH + 5] = encode_record(TOILET_TISSUE, png())
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


def test_scan_shards_reads_every_shard_in_the_callers_workers(tmp_path: Path) -> None:
    paths = [
        write_records(tmp_path / f"train-0000{i}-of-00003", [encode_record(TENCH, rgb_jpeg(16, 16))] * i)
        for i in range(3)
    ]
    with RecordWorkers(1) as workers:
        assert sorted((s.name, s.records) for s in scan_shards(paths, workers)) == [
            ("train-00000-of-00003", 0),
            ("train-00001-of-00003", 1),
            ("train-00002-of-00003", 2),
        ]
        with pytest.raises(FileNotFoundError, match="train-00009-of-00010: shard not found"):
            list(scan_shards([tmp_path / "train-00009-of-00010", *paths], workers))
        # The failure ended that call only: the same workers read on.
        assert [s.records for s in scan_shards(paths[2:], workers)] == [2]
        assert list(scan_shards([], workers)) == []
