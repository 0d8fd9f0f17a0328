"""The audit (``audit_outputs``) against the built sample: it judges the files on disk now.

Outputs are deleted, truncated and altered behind Dagster's back; the audit must fail, naming each
file, without materialising anything. Every damaged file is put back exactly (bytes and times):
the built graph is shared by the whole test session. The audit runs go to a copy of its instance
(history included), so the shared instance's run history stays as the graph tests expect it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from dagster import DagsterInstance

from ilsvrc_assets import fileio, release
from ilsvrc_assets.cli import failure_message
from ilsvrc_assets.definitions import JOB_NAMES
from ilsvrc_assets.defs.manifest import written_shards
from ilsvrc_assets.formats.tfrecord import INDEX
from ilsvrc_assets.manifest import Written
from ilsvrc_assets_tests.helpers import ALL_CHECKS, evaluations, materialized, run_job

AUDITED = {name for name in ALL_CHECKS if not name.endswith(":checksum")}


@pytest.fixture(scope="module")
def audited(built_graph_copy):
    """(settings, a copy of the built graph's instance with all its history)."""
    return built_graph_copy


@pytest.fixture
def put_back(tmp_path):
    """keep(path) saves a file before a test damages it; afterwards it is restored exactly."""
    saved: list[tuple[Path, Path, os.stat_result]] = []

    def keep(path: Path) -> Path:
        backup = tmp_path / f"{len(saved)}-{path.name}"
        shutil.copyfile(path, backup)
        saved.append((path, backup, path.stat()))
        return path

    yield keep
    for path, backup, st in saved:
        shutil.copyfile(backup, path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _all_shards(settings) -> list[str]:
    return [name for split in release.SPLITS for name in settings.shard_names(split)]


def test_sizes_and_md5s_are_those_recorded_in_the_instance_or_else_the_ledger(built_sample_graph):
    settings, instance, _, _ = built_sample_graph
    written = written_shards(instance, settings)
    assert set(written) == set(_all_shards(settings))
    for name, record in written.items():
        path = settings.tfrecords_dir / name
        assert record == Written(bytes=path.stat().st_size, md5=fileio.md5_file(path))
    with DagsterInstance.ephemeral() as empty:  # no history: the ledger under <data>/.state says the same
        assert written_shards(empty, settings) == written


def test_check_dataset_reads_no_shard_the_writers_checked(built_sample_graph):
    settings, _, results, _ = built_sample_graph
    (checked,) = [r for r in results if r.job_def.name == JOB_NAMES["manifest"]]
    present = evaluations(checked)["dataset_manifest:every_shard_present"]
    assert present.passed
    assert (present.metadata["hashed"].value, present.metadata["read_back"].value) == (0, 0)
    built = json.loads(settings.manifest_json.read_text())
    shards = [shard for split in built["splits"].values() for shard in split["shards"]]
    assert {shard["checked"] for shard in shards} == {"while written"}
    # The sample's archives are not the official ones: every image was decoded as it was written.
    assert sum(shard["decoded"] for shard in shards) == sum(shard["records"] for shard in shards) > 0


def test_audit_of_intact_outputs_passes_without_materialising(audited):
    settings, instance = audited
    manifest_stamp = settings.manifest_json.stat().st_mtime_ns
    result = run_job(settings, instance, JOB_NAMES["audit"])
    assert result.success
    found = evaluations(result)
    assert set(found) == AUDITED
    assert [name for name, e in found.items() if not e.passed] == []
    present = found["dataset_manifest:every_shard_present"].metadata
    assert present["hashed"].value == len(_all_shards(settings))  # every shard hashed again
    assert present["read_back"].value == len(_all_shards(settings))  # and read back, every record parsed
    assert materialized(result) == set()
    assert settings.manifest_json.stat().st_mtime_ns == manifest_stamp


def test_audit_fails_naming_each_file_deleted_truncated_or_altered(audited, put_back):
    settings, instance = audited
    folder = settings.tfrecords_dir
    written = written_shards(instance, settings)

    deleted = put_back(folder / "validation-00001-of-00004")
    deleted.unlink()

    truncated = put_back(folder / "train-00002-of-00008")
    size = truncated.stat().st_size
    os.truncate(truncated, size // 2)

    # Bytes flipped in the middle, size and modification time kept: only the MD5 can tell.
    altered = put_back(folder / "train-00005-of-00008")
    before = altered.stat()
    data = bytearray(altered.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    altered.write_bytes(bytes(data))
    os.utime(altered, ns=(before.st_atime_ns, before.st_mtime_ns))
    altered_md5 = fileio.md5_file(altered)

    synset = release.validation_synsets()[9]
    image = put_back(settings.validation_dir / synset / release.validation_filename(10))
    image.unlink()

    # The DALI indexes of two intact shards: one deleted, one listing a record one byte longer.
    no_index = put_back(INDEX.path(folder / "train-00000-of-00008"))
    no_index.unlink()
    bad_index = put_back(INDEX.path(folder / "validation-00003-of-00004"))
    lines = bad_index.read_text().splitlines()
    offset, length = lines[-1].split()
    bad_index.write_text("\n".join([*lines[:-1], f"{offset} {int(length) + 1}"]) + "\n")

    result = run_job(settings, instance, JOB_NAMES["audit"])
    assert not result.success  # loud: the run fails, not only its checks
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "blocking asset check" in failure_message(failure.step_failure_data)
    found = evaluations(result)

    present = found["dataset_manifest:every_shard_present"]
    assert not present.passed
    assert f"{deleted.name}: missing from {folder}" in present.description
    assert f"{truncated.name}: {size // 2:,} bytes on disk, {size:,} when written" in present.description
    assert (
        f"{altered.name}: MD5 {altered_md5} on disk, {written[altered.name].md5} when written (altered since)"
        in present.description
    )
    assert "materialise train_shards, partition train-00005-of-00008" in present.description
    assert not any(name in present.description for name in _all_shards(settings)[:2])  # intact ones

    # Every shard present was read back, so the record checks judge their current bytes.
    assert present.metadata["read_back"].value == len(_all_shards(settings)) - 1
    parse = found["dataset_manifest:records_parse"]
    assert not parse.passed and truncated.name in parse.description and altered.name in parse.description
    assert not found["dataset_manifest:record_totals"].passed

    indexes = found["dataset_manifest:every_index_matches_its_shard"]
    assert not indexes.passed
    assert f"train-00000-of-00008: its index {no_index} is missing" in indexes.description
    assert (
        f"validation-00003-of-00004: its index {bad_index} does not list the shard's records "
        f"({len(lines):,} lines for {len(lines):,} records, or other offsets or lengths); write it again: "
        "materialise validation_shards, partition validation-00003-of-00004"
    ) in indexes.description
    # The damaged shards' indexes no longer list what is read back from them either; the deleted
    # shard's index is left to every_shard_present.
    assert truncated.name in indexes.description and altered.name in indexes.description
    assert f"{deleted.name}:" not in indexes.description

    tree = found["validation_tree:matches_validation_label_file"]
    assert not tree.passed and f"missing: {synset}/{image.name}" in tree.description
    assert materialized(result) == set()
