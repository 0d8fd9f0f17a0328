"""The shards' checks without a second read: a corrupted record, a wrong image byte, a missing shard and
a truncated shard are each caught by the build's checks (judged on what the writers found and on the
files' presence and sizes, nothing read back), and by the audit, which reads every shard back.

The record and the image are damaged by the writer itself (a TFRecord format whose writer damages two
chosen images), where no read-back of a file could tell written bytes from archive bytes: only the
checks made while writing see them, and the audit sees what they did to the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ilsvrc_assets import (
    archives,
    bounding_boxes,
    formats,
    image_index,
    manifest,
    release,
    shard_plan,
    shards,
    sources,
    synsets,
)
from ilsvrc_assets.formats.tfrecord import TFRecord, TFRecordWriter
from ilsvrc_assets.record_workers import RecordWorkers
from ilsvrc_assets.stage import quiet

TFRECORD = formats.by_name("tfrecord")
pytestmark = pytest.mark.long(seconds=90)  # conftest: the long files start first


class _DamagingWriter:
    def __init__(self, writer: TFRecordWriter, corrupt: str, wrong_byte: str):
        self.writer, self.corrupt, self.wrong_byte = writer, corrupt, wrong_byte

    def add(self, source: Any, image: bytes, info: Any) -> bytes:
        if source.filename == self.corrupt:  # cut in half: no longer a tf.train.Example
            serialized = self.writer.add(source, image, info)
            return self.writer.write_record(serialized[: len(serialized) // 2])
        if source.filename == self.wrong_byte:  # the JPEG's height, in its SOF segment, one more
            sof = image.index(b"\xff\xc0") + 5
            image = image[:sof] + bytes([image[sof], image[sof + 1] + 1]) + image[sof + 2 :]
        return self.writer.add(source, image, info)

    bytes = property(lambda self: self.writer.bytes)
    md5 = property(lambda self: self.writer.md5)
    lengths = property(lambda self: self.writer.lengths)


class _Damaging(TFRecord):
    """The TFRecords, but the record of the image ``corrupt`` is written cut in half (after its good
    self, so the shard has one record more) and the image ``wrong_byte`` is stored with one byte changed."""

    def __init__(self, corrupt: str, wrong_byte: str):
        self.corrupt, self.wrong_byte = corrupt, wrong_byte

    @contextmanager
    def open(self, path: Path) -> Iterator[Any]:
        with super().open(path) as writer:
            yield _DamagingWriter(writer, self.corrupt, self.wrong_byte)


def _shard_of(settings, split: str, filename: str) -> str:
    plan = _plan(settings, split)
    for name in settings.shard_names(split):
        if any(r.filename == filename for r in plan.job(name).records):
            return name
    raise AssertionError(filename)


def _plan(settings, split: str) -> shard_plan.SplitPlan:
    table = bounding_boxes.read_table(settings.bounding_boxes_parquet)
    return shard_plan.SplitPlan(
        split,
        archives.read_index(settings.image_index(split)),
        synsets.read_synsets(settings.synsets_csv),
        bounding_boxes.boxes_by_image(table[table["split"] == split]),
        sources.from_settings(settings).image_reader(split, quiet),
        settings.data_dir / "tfrecords",
        settings.num_shards[split],
    )


@pytest.fixture(scope="module")
def damaged(sample_release: Path, tmp_path_factory: pytest.TempPathFactory):
    """The sample's shards written by the damaging writer, one shard then deleted and one truncated."""
    from ilsvrc_assets_tests.helpers import make_settings

    settings = make_settings(tmp_path_factory.mktemp("checked") / "data", sample_release)
    source = sources.from_settings(settings)
    synsets.make_synsets(settings, source)
    synsets.make_validation_labels(settings, source)
    image_index.make_train_images(settings, source)
    image_index.make_validation_images(settings, source)
    bounding_boxes.make_bounding_boxes(settings, source)
    special = release.cmyk_train_files() | release.png_train_files()  # re-encoded: decoded, not compared
    train = [
        str(f) for f in archives.read_index(settings.image_index("train"))["filename"] if f not in special
    ]
    corrupt, wrong_byte = train[0], train[len(train) // 2]
    with RecordWorkers(2) as workers:
        for split in release.SPLITS:
            shards.write_split_shards(
                settings, split, source, workers, record_format=_Damaging(corrupt, wrong_byte)
            )
        folder = settings.data_dir / ".versions" / "tfrecords"
        (version,) = [p / "tfrecords" for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
        missing, truncated = settings.shard_names("validation")[:2]
        (version / missing).unlink()
        with open(version / truncated, "r+b") as f:
            f.truncate(f.seek(0, 2) - 100)
        manifest.make_manifest(settings, workers, record_format=TFRECORD)
        ledger = shard_plan.ShardLedger(settings.state_dir / TFRECORD.asset_suffix)
        written = {
            name: manifest.Written(entry["bytes"], entry["md5"])
            for split in release.SPLITS
            for name in settings.shard_names(split)
            if (entry := ledger.get(name))
        }

        def verdicts(read_back: bool):
            return manifest.dataset_verdicts(
                settings, workers, written, official={}, read_back=read_back, record_format=TFRECORD
            )

        in_the_build, audited = verdicts(read_back=False), verdicts(read_back=True)
    names = {
        "corrupt": (corrupt, _shard_of(settings, "train", corrupt)),
        "wrong_byte": (wrong_byte, _shard_of(settings, "train", wrong_byte)),
        "missing": missing,
        "truncated": truncated,
    }
    return settings, version, names, in_the_build, audited


def _one_problem_naming(verdict, *words: str) -> str:
    found = [p for p in verdict.problems if all(w in p for w in words)]
    assert len(found) == 1, (words, verdict.problems)
    return found[0]


def test_the_build_reads_no_shard_but_the_one_changed_since_written(damaged) -> None:
    settings, version, names, _, _ = damaged
    built = manifest.read(version / manifest.MANIFEST)
    checked = {s["name"]: s.get("checked") for split in built["splits"].values() for s in split["shards"]}
    assert checked.pop(names["missing"]) is None  # nothing to check: missing
    assert checked.pop(names["truncated"]) == "read back"  # not as written: its summary would be stale
    assert set(checked.values()) == {"while written"}


@pytest.mark.parametrize("judged_by", ["the build", "the audit"])
def test_each_damage_is_caught(damaged, judged_by: str) -> None:
    settings, version, names, in_the_build, audited = damaged
    verdicts = in_the_build if judged_by == "the build" else audited
    corrupt, corrupt_shard = names["corrupt"]
    wrong_byte, wrong_byte_shard = names["wrong_byte"]

    problem = _one_problem_naming(verdicts["records_parse"], corrupt_shard)
    assert "1 records failed to parse" in problem and "not a tf.train.Example" in problem

    problem = _one_problem_naming(verdicts["images_decode"], wrong_byte_shard)
    assert wrong_byte in problem
    if judged_by == "the build":  # the writer compared the image with the archive's bytes
        assert "is not the image's bytes in the archive" in problem
    else:  # read back, its header says another size than the record
        assert "the JPEG header says" in problem

    assert not verdicts["every_shard_present"].passed
    _one_problem_naming(verdicts["every_shard_present"], names["missing"], "missing from")
    _one_problem_naming(verdicts["every_shard_present"], names["truncated"], "truncated or replaced")
    # The corrupt record makes the train split one record longer than the archive's images.
    assert not verdicts["record_totals"].passed
    assert verdicts["every_label_in_each_split"].passed
