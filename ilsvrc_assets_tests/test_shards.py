"""Writing the shards of a plan from an archive (in the TFRecord format), and reading them back."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ilsvrc_assets import fileio, images
from ilsvrc_assets.formats import RecordFormat, StoredRecord
from ilsvrc_assets.formats.tfrecord import FORMAT as TFRECORD
from ilsvrc_assets.formats.tfrecord import index_text, read_payload_lengths
from ilsvrc_assets.record_workers import RecordWorkers
from ilsvrc_assets.shard_plan import CompanionStats, RecordSource, ShardJob, ShardStats, assign_to_shards
from ilsvrc_assets.shard_scan import ShardScan, scan_shard, scan_shards
from ilsvrc_assets.shards import ShardError, write_shard, write_shards
from ilsvrc_assets.sources.official import ArchiveReader
from ilsvrc_assets_tests.helpers import cmyk_jpeg, encode, gray_jpeg, noise, png, rgb_jpeg

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
    job = ShardJob(
        "train-00000-of-00001", tmp_path / "out" / "train-00000-of-00001", ArchiveReader(path), tuple(sources)
    )
    stats = write_shard(job, TFRECORD)
    index = tmp_path / "tfrecords-index" / "train-00000-of-00001.idx"  # beside the shards' folder, not in it
    assert stats == ShardStats(
        name=job.name,
        path=job.path,
        records=len(sources),
        bytes=job.path.stat().st_size,
        md5=fileio.md5_file(job.path),
        converted=(PNG_NAME, CMYK_NAME),
        companions=(CompanionStats("index", index, index.stat().st_size, fileio.md5_file(index)),),
        verified=stats.verified,
    )
    assert leftovers(job.path.parent) == [] and leftovers(index.parent) == []
    assert index.read_bytes() == index_text(read_payload_lengths(job.path))
    assert len(index.read_text().splitlines()) == len(sources)

    scan = scan_shard(job.path)
    assert (scan.records, scan.parse_errors, scan.decode_errors, scan.problems) == (len(sources), 0, 0, [])
    assert scan.labels == {1: 3, 2: 16, 1000: 1} and scan.synsets_ok
    assert (scan.md5, scan.bytes) == (stats.md5, stats.bytes)
    # What the checks found while writing is what reading the shard back finds; besides, the
    # writer compared every image it did not re-encode with the archive's bytes.
    assert stats.verified.compared == len(sources) - 2
    assert replace(stats.verified, compared=0) == scan

    stored = read_records(job.path)
    for name, original in data.items():
        if name in (PNG_NAME, CMYK_NAME):
            assert images.probe(stored[name]["encoded"], name) == images.ImageInfo("JPEG", 40, 30, 3)
        else:
            assert stored[name]["encoded"] == original  # RGB and grayscale JPEGs byte for byte
    assert stored["n01440764_2.JPEG"]["size"] == (33, 17)


def test_write_shard_of_no_records_writes_an_empty_file(archive, tmp_path: Path) -> None:
    job = ShardJob(
        "validation-00003-of-00004",
        tmp_path / "tfrecords" / "validation-00003-of-00004",
        ArchiveReader(archive[0]),
        (),
    )
    stats = write_shard(job, TFRECORD)
    assert (stats.records, stats.bytes, job.path.read_bytes()) == (0, 0, b"")
    assert stats.companions[0].path.read_bytes() == b""  # as tfrecord2idx writes for an empty file
    assert scan_shard(job.path).records == 0


def test_write_shard_stops_at_a_short_read_and_leaves_nothing(archive, tmp_path: Path) -> None:
    path, sources, _ = archive
    beyond = replace(sources[3], offset=path.stat().st_size - 100)
    job = ShardJob(
        "train-00007-of-01024",
        tmp_path / "tfrecords" / "train-00007-of-01024",
        ArchiveReader(path),
        (sources[0], beyond, sources[4]),
    )
    with pytest.raises(ShardError) as caught:
        write_shard(job, TFRECORD)
    message = str(caught.value)
    assert message.startswith(
        f"train-00007-of-01024: ILSVRC2012_img_train.tar member {PNG_NAME} is cut short (100 of "
    )
    assert not job.path.exists()
    assert [p.name for p in tmp_path.rglob("*")] == ["tfrecords"]  # no index either


def test_write_shard_keeps_an_existing_shard_when_it_fails(archive, tmp_path: Path) -> None:
    path, sources, _ = archive
    job = ShardJob(
        "train-00001-of-01024",
        tmp_path / "tfrecords" / "train-00001-of-01024",
        ArchiveReader(path),
        (replace(sources[0], offset=sources[0].offset + 1),),
    )
    job.path.parent.mkdir()
    job.path.write_bytes(b"the previous shard")
    index = TFRECORD.companions[0].path(job.path)
    index.parent.mkdir()
    index.write_bytes(b"0 34\n")
    with pytest.raises(
        ShardError,
        match=r"^train-00001-of-01024: ILSVRC2012_img_train.tar member n01440764_1.JPEG: not a JPEG or PNG image",
    ):
        write_shard(job, TFRECORD)
    assert job.path.read_bytes() == b"the previous shard"
    assert index.read_bytes() == b"0 34\n"  # its index too
    assert leftovers(job.path.parent) == [] and leftovers(index.parent) == []


def test_write_shard_names_a_missing_archive(archive, tmp_path: Path) -> None:
    job = ShardJob(
        "train-00001-of-01024",
        tmp_path / "train-00001-of-01024",
        ArchiveReader(tmp_path / "gone.tar"),
        archive[1][:1],
    )
    with pytest.raises(ShardError, match=r"^train-00001-of-01024: cannot open gone.tar .*gone.tar"):
        write_shard(job, TFRECORD)
    assert list(tmp_path.iterdir()) == []


def _jobs(archive, folder: Path) -> list[ShardJob]:
    path, sources, _ = archive
    names = [f"train-{i:05d}-of-00004" for i in range(4)]
    shards = folder / "tfrecords"
    return [
        ShardJob(n, shards / n, ArchiveReader(path), tuple(s))
        for n, s in zip(names, assign_to_shards(sources, 4))
    ]


def test_write_shards_gives_the_same_bytes_with_one_or_two_workers(archive, tmp_path: Path) -> None:
    finished: list[str] = []
    with RecordWorkers(1) as workers:
        one = write_shards(_jobs(archive, tmp_path / "one"), TFRECORD, workers)
        scans = list(scan_shards([s.path for s in one], workers))  # no more TF start-ups
    with RecordWorkers(2) as workers:
        two = write_shards(
            _jobs(archive, tmp_path / "two"), TFRECORD, workers, on_done=lambda s: finished.append(s.name)
        )
    assert [s.name for s in two] == [f"train-{i:05d}-of-00004" for i in range(4)]  # job order
    assert sorted(finished) == [s.name for s in two]
    assert sum(s.records for s in two) == len(archive[1])
    for a, b in zip(one, two):
        assert a.path.read_bytes() == b.path.read_bytes()
        assert a.companions[0].path.read_bytes() == b.companions[0].path.read_bytes()
        assert (a.md5, a.bytes, a.records, a.converted) == (b.md5, b.bytes, b.records, b.converted)
    assert sorted(c for s in two for c in s.converted) == sorted([PNG_NAME, CMYK_NAME])

    assert sorted(s.name for s in scans) == [s.name for s in two]
    assert all(s.parse_errors == 0 and s.decode_errors == 0 and s.synsets_ok for s in scans)
    assert {s.name: s.md5 for s in scans} == {s.name: s.md5 for s in two}


def test_write_shards_raises_the_first_failure_naming_the_shard(archive, tmp_path: Path) -> None:
    jobs = _jobs(archive, tmp_path)
    path, sources, _ = archive
    jobs[1] = replace(jobs[1], records=(replace(sources[0], offset=10**9),))
    with (
        RecordWorkers(1) as workers,
        pytest.raises(
            ShardError,
            match=r"^train-00001-of-00004: ILSVRC2012_img_train.tar member n01440764_1.JPEG is cut short",
        ),
    ):
        write_shards(jobs, TFRECORD, workers)
    assert not jobs[1].path.exists() and not TFRECORD.companions[0].path(jobs[1].path).exists()
    assert [p for p in tmp_path.rglob("*") if fileio.is_temp_path(p)] == []


def test_write_shards_of_nothing_starts_no_worker() -> None:
    workers = RecordWorkers(4, eager=False)
    assert write_shards([], TFRECORD, workers) == []
    assert repr(workers) == "RecordWorkers(4, not started)"


def test_write_shards_takes_lazy_jobs_a_few_ahead_and_returns_them_in_order(archive, tmp_path: Path) -> None:
    path, sources, _ = archive
    drawn = 0
    ahead = []

    def jobs() -> Iterator[ShardJob]:  # as a SplitPlan's are made: one at a time, when asked for
        nonlocal drawn
        for i in range(12):
            drawn += 1
            yield ShardJob(
                f"train-{i:05d}-of-00012", tmp_path / f"s{i}", ArchiveReader(path), (sources[i % 4],)
            )

    done: list[str] = []

    def on_done(stats: ShardStats) -> None:
        done.append(stats.name)
        ahead.append(drawn - len(done))

    with RecordWorkers(1) as workers:
        stats = write_shards(jobs(), TFRECORD, workers, on_done=on_done, space_checked=True)
    assert [s.name for s in stats] == [f"train-{i:05d}-of-00012" for i in range(12)]
    assert sorted(done) == [s.name for s in stats] and all(s.records == 1 for s in stats)
    assert max(ahead) <= 3, ahead  # 2 x workers + 1 taken ahead of what is finished, never all 12
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"s{i}" for i in range(12))


# --- reading damaged shards back -------------------------------------------------------------


@pytest.fixture(scope="module")
def written(archive, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, sources, _ = archive
    folder = tmp_path_factory.mktemp("written")
    return write_shard(
        ShardJob(
            "train-00000-of-00001",
            folder / "tfrecords" / "train-00000-of-00001",
            ArchiveReader(path),
            tuple(sources),
        ),
        TFRECORD,
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


# --- any record format -----------------------------------------------------------------------


class _Lines(RecordFormat):
    """A format of one text line per image: what shards.py needs of a format, and little more."""

    name = "lines"
    folder = "lines"
    asset_suffix = "lines"
    record_keys = ("filename", "label", "size", "bytes")
    check_descriptions: ClassVar[dict[str, str]] = {}

    def scan(self, path: Path, decode: bool = True) -> ShardScan:
        lines = path.read_text().splitlines()
        labels: dict[int, int] = {}
        for line in lines:
            labels[int(line.split()[1])] = labels.get(int(line.split()[1]), 0) + 1
        return ShardScan(path.name, len(lines), path.stat().st_size, fileio.md5_file(path), labels)

    def first_records(self, path: Path, count: int) -> list[StoredRecord]:
        lines = path.read_text().splitlines()[:count]
        return [StoredRecord(line.split()[0], "", int(line.split()[1]), b"") for line in lines]

    def file_name(self, shard: str) -> str:
        return f"{shard}.txt"

    def space_needed(self, job: ShardJob) -> int:
        return 100 * len(job.records)

    @contextmanager
    def open(self, path: Path) -> Iterator[Any]:
        with open(path, "wb") as f:
            file = fileio.HashedWriter(f)

            class Writer:
                def add(self, source: RecordSource, image: bytes, info: images.ImageInfo) -> str:
                    line = f"{source.filename} {source.label} {info.width}x{info.height} {len(image)}\n"
                    file.write(line.encode())
                    return line

                bytes = property(lambda self: file.bytes)
                md5 = property(lambda self: file.md5)

            yield Writer()

    def checker(self, name: str, policy: str) -> Any:
        class Count:
            lines = 0

            def add(self, line: str, crc: int | None = None, decode: bool = False) -> None:
                self.lines += 1

            def finish(self, size: int, md5: str) -> ShardScan:
                return ShardScan(name, self.lines, size, md5)

        return Count()


def test_write_shard_writes_any_format_the_same_way(archive, tmp_path: Path) -> None:
    path, sources, data = archive
    job = ShardJob(
        "train-00000-of-00001", tmp_path / "train-00000-of-00001.txt", ArchiveReader(path), tuple(sources[:5])
    )
    stats = write_shard(job, _Lines())
    lines = job.path.read_text().splitlines()
    assert [line.split()[0] for line in lines] == [s.filename for s in sources[:5]]
    assert lines[0] == f"n01440764_1.JPEG 1 40x30 {len(data['n01440764_1.JPEG'])}"  # unchanged JPEG
    assert stats.converted == (PNG_NAME, CMYK_NAME) and stats.md5 == fileio.md5_file(job.path)
    assert leftovers(tmp_path) == []
    # The failures are the same too: named, and nothing left behind.
    cut = replace(job, path=tmp_path / "cut.txt", records=(replace(sources[0], offset=10**9),))
    with pytest.raises(ShardError, match="member n01440764_1.JPEG is cut short"):
        write_shard(cut, _Lines())
    assert not cut.path.exists() and leftovers(tmp_path) == []
