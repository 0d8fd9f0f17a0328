"""Assigning images to shards, writing shards from an archive, and reading them back."""

from __future__ import annotations

import io
import random
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from ilsvrc_assets import fileio, images
from ilsvrc_assets.records import RecordSource, scan_shard, scan_shards
from ilsvrc_assets.shards import (
    ShardError,
    ShardJob,
    ShardStats,
    assign_to_shards,
    filename_sort_key,
    write_shard,
    write_shards,
)
from ilsvrc_assets_tests.helpers import cmyk_jpeg, encode, gray_jpeg, noise, png, rgb_jpeg

# --- assign_to_shards ------------------------------------------------------------------------

NAMES = [f"n0{1440764 + s}_{i}.JPEG" for s in range(7) for i in random.Random(1).sample(range(1, 5000), 15)]


def test_assignment_puts_every_image_in_exactly_one_shard_with_even_sizes() -> None:
    shards = assign_to_shards(NAMES, 8)
    assert len(shards) == 8
    assert sorted(name for shard in shards for name in shard) == sorted(NAMES)
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(NAMES)
    # Shuffled across the split: a shard holds several classes.
    assert all(len({name.split("_")[0] for name in shard}) > 1 for shard in shards)


def test_assignment_does_not_depend_on_input_order() -> None:
    shuffled = NAMES[:]
    random.Random(7).shuffle(shuffled)
    assert assign_to_shards(shuffled, 8) == assign_to_shards(NAMES, 8) == assign_to_shards(NAMES[::-1], 8)
    assert assign_to_shards(NAMES, 8, seed=1) != assign_to_shards(NAMES, 8)


def test_assignment_is_pinned() -> None:
    # The assignment decides every shard's bytes: a change here must be deliberate.
    assert assign_to_shards([f"n01440764_{i}.JPEG" for i in range(10, 0, -1)], 3) == [
        ["n01440764_9.JPEG", "n01440764_8.JPEG", "n01440764_4.JPEG"],
        ["n01440764_6.JPEG", "n01440764_2.JPEG", "n01440764_3.JPEG"],
        ["n01440764_10.JPEG", "n01440764_5.JPEG", "n01440764_1.JPEG", "n01440764_7.JPEG"],
    ]


def test_assignment_with_fewer_images_than_shards() -> None:
    shards = assign_to_shards(["ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000001.JPEG"], 5)
    assert [len(s) for s in shards] == [0, 0, 1, 0, 1]  # bounds floor(i * 2 / 5)
    assert assign_to_shards([], 3) == [[], [], []]


def test_assignment_of_record_sources_uses_their_file_names() -> None:
    sources = [RecordSource(name, "n01440764", 1, "tench", 0, 1) for name in NAMES]
    by_source = assign_to_shards(sources[::-1], 4)
    assert [[s.filename for s in shard] for shard in by_source] == assign_to_shards(NAMES, 4)


def test_assignment_refuses_duplicates_and_no_shards() -> None:
    with pytest.raises(ValueError, match="same sort key"):
        assign_to_shards(["a_1.JPEG", "b_1.JPEG", "a_1.JPEG"], 2)
    with pytest.raises(ValueError, match="at least 1"):
        assign_to_shards(["a_1.JPEG"], 0)


def test_filename_sort_key_compares_numbers_numerically() -> None:
    names = [
        "n01440764_10.JPEG",
        "n01440764_9.JPEG",
        "n01440764_100.JPEG",
        "n01443537_2.JPEG",
        "ILSVRC2012_val_00000010.JPEG",
    ]
    assert sorted(names, key=filename_sort_key) == [
        "ILSVRC2012_val_00000010.JPEG",
        "n01440764_9.JPEG",
        "n01440764_10.JPEG",
        "n01440764_100.JPEG",
        "n01443537_2.JPEG",
    ]


# --- writing shards --------------------------------------------------------------------------

SYNSETS = {
    "n01440764": (1, "tench, Tinca tinca"),
    "n01443537": (2, "goldfish, Carassius auratus"),
    "n15075141": (1000, "toilet tissue"),
}
PNG_NAME = "n01443537_2933.JPEG"
CMYK_NAME = "n15075141_77.JPEG"


def _members() -> list[tuple[str, bytes]]:
    members = [
        ("n01440764_1.JPEG", rgb_jpeg(40, 30)),
        ("n01440764_2.JPEG", gray_jpeg(33, 17)),
        ("n01440764_3.JPEG", rgb_jpeg(64, 48, progressive=True)),
        (PNG_NAME, png(40, 30)),  # a PNG named .JPEG, as n02105855_2933.JPEG in the release
        (CMYK_NAME, cmyk_jpeg(40, 30)),
    ]
    members += [(f"n01443537_{i}.JPEG", encode(noise(24 + i, 16, seed=i), "JPEG")) for i in range(10, 25)]
    return members


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[RecordSource], dict[str, bytes]]:
    """A small uncompressed tar of images, its record sources (offsets from the tar headers) and the bytes."""
    path = tmp_path_factory.mktemp("archive") / "ILSVRC2012_img_train.tar"
    members = _members()
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    sources = []
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            synset = member.name.split("_")[0]
            label, text = SYNSETS[synset]
            boxes = ((0.1, 0.2, 0.9, 0.8),) if member.name.endswith("_1.JPEG") else ()
            sources.append(
                RecordSource(member.name, synset, label, text, member.offset_data, member.size, boxes)
            )
    return path, sources, dict(members)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if fileio.is_temp_path(p))


def read_records(path: Path) -> dict[str, dict]:
    import tensorflow as tf

    found = {}
    for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        feature = tf.train.Example.FromString(raw).features.feature
        filename = feature["image/filename"].bytes_list.value[0].decode()
        found[filename] = {
            "encoded": feature["image/encoded"].bytes_list.value[0],
            "label": feature["image/class/label"].int64_list.value[0],
            "size": (feature["image/width"].int64_list.value[0], feature["image/height"].int64_list.value[0]),
        }
    return found


def test_write_shard_from_an_archive(archive, tmp_path: Path) -> None:
    path, sources, data = archive
    job = ShardJob("train-00000-of-00001", tmp_path / "out" / "train-00000-of-00001", path, tuple(sources))
    stats = write_shard(job)
    assert stats == ShardStats(
        name=job.name,
        path=job.path,
        records=len(sources),
        bytes=job.path.stat().st_size,
        md5=fileio.md5_file(job.path),
        converted=(PNG_NAME, CMYK_NAME),
    )
    assert leftovers(job.path.parent) == []

    scan = scan_shard(job.path)
    assert (scan.records, scan.parse_errors, scan.decode_errors, scan.problems) == (len(sources), 0, 0, [])
    assert scan.labels == {1: 3, 2: 16, 1000: 1} and scan.synsets_ok
    assert (scan.md5, scan.bytes) == (stats.md5, stats.bytes)

    stored = read_records(job.path)
    for name, original in data.items():
        if name in (PNG_NAME, CMYK_NAME):
            assert images.probe(stored[name]["encoded"], name) == images.ImageInfo("JPEG", 40, 30, 3)
        else:
            assert stored[name]["encoded"] == original  # RGB and grayscale JPEGs byte for byte
    assert stored["n01440764_2.JPEG"]["size"] == (33, 17)


def test_write_shard_of_no_records_writes_an_empty_file(archive, tmp_path: Path) -> None:
    job = ShardJob("validation-00003-of-00004", tmp_path / "validation-00003-of-00004", archive[0], ())
    stats = write_shard(job)
    assert (stats.records, stats.bytes, job.path.read_bytes()) == (0, 0, b"")
    assert scan_shard(job.path).records == 0


def test_write_shard_stops_at_a_short_read_and_leaves_nothing(archive, tmp_path: Path) -> None:
    path, sources, _ = archive
    beyond = replace(sources[3], offset=path.stat().st_size - 100)
    job = ShardJob(
        "train-00007-of-01024", tmp_path / "train-00007-of-01024", path, (sources[0], beyond, sources[4])
    )
    with pytest.raises(ShardError) as caught:
        write_shard(job)
    message = str(caught.value)
    assert message.startswith(
        f"train-00007-of-01024: ILSVRC2012_img_train.tar member {PNG_NAME} is cut short (100 of "
    )
    assert not job.path.exists()
    assert list(tmp_path.iterdir()) == []


def test_write_shard_keeps_an_existing_shard_when_it_fails(archive, tmp_path: Path) -> None:
    path, sources, _ = archive
    job = ShardJob(
        "train-00001-of-01024",
        tmp_path / "train-00001-of-01024",
        path,
        (replace(sources[0], offset=sources[0].offset + 1),),
    )
    job.path.write_bytes(b"the previous shard")
    with pytest.raises(
        ShardError,
        match=r"^train-00001-of-01024: ILSVRC2012_img_train.tar member n01440764_1.JPEG: not a JPEG or PNG image",
    ):
        write_shard(job)
    assert job.path.read_bytes() == b"the previous shard"
    assert leftovers(tmp_path) == []


def test_write_shard_names_a_missing_archive(archive, tmp_path: Path) -> None:
    job = ShardJob(
        "train-00001-of-01024", tmp_path / "train-00001-of-01024", tmp_path / "gone.tar", archive[1][:1]
    )
    with pytest.raises(ShardError, match=r"^train-00001-of-01024: cannot open the archive .*gone.tar"):
        write_shard(job)
    assert list(tmp_path.iterdir()) == []


def _jobs(archive, folder: Path) -> list[ShardJob]:
    path, sources, _ = archive
    names = [f"train-{i:05d}-of-00004" for i in range(4)]
    return [ShardJob(n, folder / n, path, tuple(s)) for n, s in zip(names, assign_to_shards(sources, 4))]


def test_write_shards_gives_the_same_bytes_with_one_or_two_workers(archive, tmp_path: Path) -> None:
    finished: list[str] = []
    one = write_shards(_jobs(archive, tmp_path / "one"), workers=1)
    two = write_shards(_jobs(archive, tmp_path / "two"), workers=2, on_done=lambda s: finished.append(s.name))
    assert [s.name for s in two] == [f"train-{i:05d}-of-00004" for i in range(4)]  # job order
    assert sorted(finished) == [s.name for s in two]
    assert sum(s.records for s in two) == len(archive[1])
    for a, b in zip(one, two):
        assert a.path.read_bytes() == b.path.read_bytes()
        assert (a.md5, a.bytes, a.records, a.converted) == (b.md5, b.bytes, b.records, b.converted)
    assert sorted(c for s in two for c in s.converted) == sorted([PNG_NAME, CMYK_NAME])

    scans = list(scan_shards([s.path for s in two], workers=1))  # one more TF start-up only
    assert sorted(s.name for s in scans) == [s.name for s in two]
    assert all(s.parse_errors == 0 and s.decode_errors == 0 and s.synsets_ok for s in scans)
    assert {s.name: s.md5 for s in scans} == {s.name: s.md5 for s in two}


def test_write_shards_raises_the_first_failure_naming_the_shard(archive, tmp_path: Path) -> None:
    jobs = _jobs(archive, tmp_path)
    path, sources, _ = archive
    jobs[1] = replace(jobs[1], records=(replace(sources[0], offset=10**9),))
    with pytest.raises(
        ShardError,
        match=r"^train-00001-of-00004: ILSVRC2012_img_train.tar member n01440764_1.JPEG is cut short",
    ):
        write_shards(jobs, workers=1)
    assert not jobs[1].path.exists()
    assert leftovers(tmp_path) == []


def test_write_shards_of_nothing() -> None:
    assert write_shards([], workers=4) == []
    assert list(scan_shards([], workers=4)) == []


# --- reading damaged shards back -------------------------------------------------------------


@pytest.fixture(scope="module")
def written(archive, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, sources, _ = archive
    folder = tmp_path_factory.mktemp("written")
    return write_shard(
        ShardJob("train-00000-of-00001", folder / "train-00000-of-00001", path, tuple(sources))
    ).path


def test_scan_shard_reports_flipped_bytes(written: Path, tmp_path: Path) -> None:
    data = bytearray(written.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    damaged = tmp_path / written.name
    damaged.write_bytes(data)
    scan = scan_shard(damaged)
    assert 0 < scan.records < 20 and scan.parse_errors == 1
    assert scan.problems[0].startswith(
        f"{written.name}: record {scan.records} and after: unreadable, the file is corrupt or truncated"
    )


def test_scan_shard_reports_a_truncated_file(written: Path, tmp_path: Path) -> None:
    damaged = tmp_path / written.name
    damaged.write_bytes(written.read_bytes()[: written.stat().st_size * 2 // 3])
    scan = scan_shard(damaged)
    assert 0 < scan.records < 20 and scan.parse_errors == 1
    assert "unreadable, the file is corrupt or truncated" in scan.problems[0]
    assert scan.bytes == damaged.stat().st_size
