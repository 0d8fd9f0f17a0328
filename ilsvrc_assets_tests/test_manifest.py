"""manifest.audit on plain files: what it says about each shard, and when it trusts manifest.json.

In the build (``read_back=False``) the shards are judged against what was recorded, without reading
them; the audit reads every shard back (with TensorFlow, in a record worker).
"""

from __future__ import annotations

import hashlib
import os

from ilsvrc_assets import fileio, manifest
from ilsvrc_assets.record_workers import RecordWorkers
from ilsvrc_assets.shard_scan import ALL
from ilsvrc_assets_tests.helpers import TENCH, encode_record, rgb_jpeg, write_records

# Never started: nothing is read back here (a pool started only with its first task).
IDLE_WORKERS = RecordWorkers(2, eager=False)
NAMES = {"train": [f"train-0000{i}-of-00004" for i in range(4)], "validation": ["validation-00000-of-00001"]}


def _shards(folder):
    folder.mkdir()
    for i, name in enumerate(n for names in NAMES.values() for n in names):
        (folder / name).write_bytes(bytes([i]) * (100 + i))
    return folder


def _as_read(folder, names) -> dict:
    """A manifest.json that read the shards as they are now (records and labels made up)."""
    entries = {n: {"name": n, "missing": True} for ns in NAMES.values() for n in ns}
    for name in names:
        st = (folder / name).stat()
        entries[name] = {
            "name": name,
            "records": 1,
            "bytes": st.st_size,
            "md5": fileio.md5_file(folder / name),
            "mtime_ns": st.st_mtime_ns,
            "labels": {"1": 1},
            "missing": False,
            "index_md5": hashlib.md5(_index_of(folder / name)).hexdigest(),
        }
    return manifest._summary(NAMES, entries, {"train": 4, "validation": 1})


def _index_of(shard) -> bytes:
    """The index made up for a made-up shard: one record of the whole file."""
    return f"0 {shard.stat().st_size}\n".encode()


def _written(folder) -> dict[str, manifest.Written]:
    return {
        name: manifest.Written(bytes=(folder / name).stat().st_size, md5=fileio.md5_file(folder / name))
        for names in NAMES.values()
        for name in names
    }


def test_in_the_build_intact_shards_pass_and_none_is_read(tmp_path):
    folder = _shards(tmp_path / "tfrecords")
    names = [n for ns in NAMES.values() for n in ns]
    just_built = _as_read(folder, names)

    def audit() -> manifest.Audit:
        return manifest.audit(
            folder,
            NAMES,
            {"train": 4, "validation": 1},
            _written(folder),
            IDLE_WORKERS,
            just_built,
            read_back=False,
        )

    found = audit()
    assert found.shard_problems == [] and found.read_back == [] and found.hashed == 0
    assert found.manifest["splits"]["train"]["records"] == 4
    # A shard whose size or time is not what the manifest recorded is hashed all the same.
    os.utime(folder / names[0], ns=(0, 0))
    found = audit()
    assert found.hashed == 1 and found.shard_problems == []


def _damage(folder, written):
    """Each kind of damage to the shards: deleted, truncated, altered (same size and time), unrecorded;
    what the audit must say of each."""
    (folder / "train-00000-of-00004").unlink()
    cut = written["train-00001-of-00004"].bytes
    os.truncate(folder / "train-00001-of-00004", 10)
    altered = folder / "train-00002-of-00004"
    original_md5 = written[altered.name].md5
    st = altered.stat()
    altered.write_bytes(b"\xff" * st.st_size)
    os.utime(altered, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and time: only the MD5 tells
    del written["validation-00000-of-00001"]
    return [
        (
            f"train-00000-of-00004: missing from {folder}; write it again: materialise train_shards, "
            "partition train-00000-of-00004"
        ),
        (
            f"train-00001-of-00004: 10 bytes on disk, {cut:,} when written (truncated or replaced "
            "since); write it again: materialise train_shards, partition train-00001-of-00004"
        ),
        (
            f"train-00002-of-00004: MD5 {fileio.md5_file(altered)} on disk, {original_md5} when written "
            "(altered since); write it again: materialise train_shards, partition train-00002-of-00004"
        ),
        (
            "validation-00000-of-00001: no record of its size and MD5 when written; write it again: "
            "materialise validation_shards, partition validation-00000-of-00001"
        ),
    ]


def test_in_the_build_each_kind_of_damage_but_same_size_bytes_is_named(tmp_path):
    folder = _shards(tmp_path / "tfrecords")
    names = [n for ns in NAMES.values() for n in ns]
    just_built = _as_read(folder, names)
    written = _written(folder)
    deleted, truncated, _, unrecorded = _damage(folder, written)
    found = manifest.audit(
        folder, NAMES, {"train": 4, "validation": 1}, written, IDLE_WORKERS, just_built, read_back=False
    )
    # Without reading, bytes altered in place (same size, same time) go unseen: the audit reads them.
    assert found.shard_problems == [deleted, truncated, unrecorded]
    assert found.manifest["splits"]["train"]["shards"][0]["missing"]


def test_the_audit_reads_every_shard_back_and_names_each_kind_of_damage(tmp_path):
    folder = tmp_path / "tfrecords"
    folder.mkdir()
    for i, name in enumerate(n for names in NAMES.values() for n in names):
        write_records(folder / name, [encode_record(TENCH, rgb_jpeg(40 + i, 30))])
    written = _written(folder)
    expected = _damage(folder, written)
    with RecordWorkers(1) as workers:
        found = manifest.audit(folder, NAMES, {"train": 4, "validation": 1}, written, workers, decode=ALL)
    assert found.shard_problems == expected
    assert sorted(found.read_back) == [n for ns in NAMES.values() for n in ns][1:]
    assert found.hashed == 4
    shards = {s["name"]: s for split in found.manifest["splits"].values() for s in split["shards"]}
    assert (
        shards["train-00003-of-00004"]["decoded"] == 1 and shards["train-00003-of-00004"]["parse_errors"] == 0
    )
    assert shards["train-00002-of-00004"]["parse_errors"] == 1  # its bytes are no TFRecord any more


def test_each_index_missing_or_not_listing_its_shards_records_is_named(tmp_path):
    folder = _shards(tmp_path / "tfrecords")
    names = [n for ns in NAMES.values() for n in ns]
    indexes = tmp_path / "tfrecords-index"  # beside the shards, not among them
    indexes.mkdir()
    for name in names:
        (indexes / f"{name}.idx").write_bytes(_index_of(folder / name))
    read = _as_read(folder, names[1:])  # the first shard is missing: every_shard_present says so
    assert manifest.index_problems(read, folder) == []

    (indexes / "train-00001-of-00004.idx").unlink()
    (indexes / "train-00002-of-00004.idx").write_bytes(b"0 101\n")  # one byte short (it has 102)
    (indexes / "validation-00000-of-00001.idx").write_bytes(_index_of(folder / names[-1]) * 2)
    redo = "write it again: materialise {}_shards, partition {}"
    assert manifest.index_problems(read, folder) == [
        f"train-00001-of-00004: its index {indexes}/train-00001-of-00004.idx is missing; "
        + redo.format("train", "train-00001-of-00004"),
        f"train-00002-of-00004: its index {indexes}/train-00002-of-00004.idx does not list the shard's "
        "records (1 lines for 1 records, or other offsets or lengths); "
        + redo.format("train", "train-00002-of-00004"),
        f"validation-00000-of-00001: its index {indexes}/validation-00000-of-00001.idx does not list the "
        "shard's records (2 lines for 1 records, or other offsets or lengths); "
        + redo.format("validation", "validation-00000-of-00001"),
    ]
