"""The outputs of the built-in sample, byte for byte as recorded: a refactor must not change them.

The session's graph (``built_sample_graph``: the default sample, 8 train and 4 validation shards)
is compared with ``golden_outputs.json``, recorded from main at commit 6553fce, before the issue 9
refactor. Why each value is what it is:

- ``sample_archives``: the MD5 of each archive of the generated sample. The generator is
  deterministic (seeded, no times or owners in the headers; generating twice into two folders gave
  the same five MD5s), so these only change with the sample itself (``sample.SAMPLE_VERSION``, the
  default ``SampleSpec``) or with the JPEG encoder of Pillow/libjpeg. If they differ, every other
  value is expected to differ too, and the test says so instead of comparing.
- ``shards``: the MD5 of every TFRecord shard: the records (features, JPEG bytes, PNG/CMYK
  re-encoded at quality 100), their order (the seeded shuffle) and the framing (length, CRCs).
- ``manifest``: the MD5 of ``manifest.json`` parsed, with each shard's ``mtime_ns`` removed (the
  only value in it that depends on when the build ran), dumped with sorted keys. Re-recorded once
  since, for issue 11, which added each shard's ``index_md5`` (the MD5 of its DALI index): with
  that key removed, the manifest gives the value recorded at 6553fce. Issue 13 (the records checked
  while written) added ``checked`` (while written, or read back), ``decoded`` and ``compared`` (how
  many images were decoded, how many compared with the archive's bytes): they are left out of the
  digest, so every other value is still the one recorded.
- ``validation_tree``: one MD5 over the sorted relative paths of every file under
  ``<data>/validation`` and each file's MD5 (``path<TAB>md5<NEWLINE>`` lines).
- ``files``: the MD5 of each CSV written (synsets, validation labels, the two reference box CSVs).
- ``tables``: a content digest of each Parquet table (the box table and the two archive indexes):
  the column names, a version-neutral type per column and every value, encoded canonically (see
  ``table_digest``), so a new pyarrow or pandas writing other Parquet bytes for the same table does
  not count as a change; the number of rows is kept beside it for the message.

Re-recording (only after finding why a value changed, and only for a change meant to alter the
outputs): run this file with ``ILSVRC_RECORD_GOLDEN=1``; the test then fails, printing the new JSON
in its message, for you to review and paste into ``golden_outputs.json``. It never rewrites the
file itself, and a run with the variable set never passes, so it cannot be left on in CI.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ilsvrc_assets import fileio, release
from ilsvrc_assets.settings import Settings
from ilsvrc_assets_tests.helpers import TEST_SHARDS, tree_digest

GOLDEN = Path(__file__).with_name("golden_outputs.json")
RECORD = os.environ.get("ILSVRC_RECORD_GOLDEN") == "1"


def md5_text(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _type_name(column_type: pa.DataType) -> str:
    # string and large_string hold the same values; which one is written depends on the pandas
    # version (pandas 3 writes large_string), not on the package.
    if pa.types.is_string(column_type) or pa.types.is_large_string(column_type):
        return "string"
    return str(column_type)


def table_digest(path: Path) -> tuple[str, int]:
    """(an MD5 of a Parquet table's content, its number of rows), independent of the Parquet bytes.

    Per column, in order: the name, a type name (``_type_name``) and the values, each encoded
    canonically: strings as UTF-8 with a length prefix (None as -1), numbers and booleans as
    little-endian fixed-width bytes after checking there is no null among them.
    """
    table = pq.read_table(path)
    digest = hashlib.md5()
    for field, column in zip(table.schema, table.columns):
        type_name = _type_name(field.type)
        digest.update(f"{field.name}\0{type_name}\0".encode())
        if type_name == "string":
            for value in column.to_pylist():
                data = b"" if value is None else value.encode()
                digest.update((-1 if value is None else len(data)).to_bytes(8, "little", signed=True) + data)
        else:
            assert column.null_count == 0, f"{path}: column {field.name} has nulls"
            values = column.to_numpy()
            digest.update(values.astype(values.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest(), table.num_rows


def manifest_digest(path: Path) -> str:
    manifest = json.loads(path.read_text())
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            for key in ("mtime_ns", "checked", "decoded", "compared"):
                shard.pop(key, None)
    return md5_text(json.dumps(manifest, sort_keys=True))


def observed(settings: Settings) -> dict:
    """Every golden value, computed from the outputs under ``settings.data_dir`` now."""
    tree, tree_files = tree_digest(settings.validation_dir)
    tables = {}
    for name, path in (
        ("bounding_boxes.parquet", settings.bounding_boxes_parquet),
        ("index/train_images.parquet", settings.image_index("train")),
        ("index/validation_images.parquet", settings.image_index("validation")),
    ):
        digest, rows = table_digest(path)
        tables[name] = {"content": digest, "rows": rows}
    return {
        "recorded_from": "main at 6553fce, before the issue 9 refactor",
        "num_shards": dict(settings.num_shards),
        "sample_archives": {a.name: fileio.md5_file(settings.sample_dir / a.name) for a in release.ARCHIVES},
        "shards": {
            name: fileio.md5_file(settings.tfrecords_dir / name)
            for split in release.SPLITS
            for name in settings.shard_names(split)
        },
        "manifest": manifest_digest(settings.manifest_json),
        "validation_tree": {"digest": tree, "files": tree_files},
        "files": {
            path.name: fileio.md5_file(path)
            for path in (
                settings.synsets_csv,
                settings.validation_labels_csv,
                settings.bounding_boxes_csv,
                settings.validation_bounding_boxes_csv,
            )
        },
        "tables": tables,
    }


@pytest.fixture(scope="module")
def golden() -> dict:
    return {} if RECORD else json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def now(built_sample_graph) -> dict:
    settings, _, _, failed = built_sample_graph
    assert failed == [], f"the sample graph did not build: {failed}"
    return observed(settings)


@pytest.fixture(scope="module")
def same_sample(golden: dict, now: dict) -> None:
    """Fails the comparisons at once, saying why, when the sample itself is not the one recorded."""
    if RECORD:
        pytest.fail(
            f"ILSVRC_RECORD_GOLDEN=1: the values now (review them, then paste into {GOLDEN}):\n"
            + json.dumps(now, indent=1, sort_keys=True),
            pytrace=False,
        )
    assert now["num_shards"] == golden["num_shards"] == TEST_SHARDS
    assert now["sample_archives"] == golden["sample_archives"], (
        "the generated sample is not the one the golden values were recorded from (a new "
        "SAMPLE_VERSION or SampleSpec, or another JPEG encoder): the outputs cannot be compared. "
        "Re-record on the main branch before the change under test (see this module's docstring)"
    )


def _differing(now: dict, golden: dict) -> dict:
    """{key: (value now, value recorded)} for each key whose values differ."""
    keys = sorted(now.keys() | golden.keys())
    return {key: (now.get(key), golden.get(key)) for key in keys if now.get(key) != golden.get(key)}


def test_every_shard_is_byte_identical(now, golden, same_sample):
    assert _differing(now["shards"], golden["shards"]) == {}, "shards whose MD5 changed: (now, recorded)"


def test_manifest_is_the_same_apart_from_times(now, golden, same_sample):
    assert now["manifest"] == golden["manifest"]


def test_validation_tree_is_byte_identical(now, golden, same_sample):
    assert now["validation_tree"] == golden["validation_tree"]


def test_csv_files_are_byte_identical(now, golden, same_sample):
    assert _differing(now["files"], golden["files"]) == {}, "files whose MD5 changed: (now, recorded)"


def test_tables_hold_the_same_content(now, golden, same_sample):
    assert _differing(now["tables"], golden["tables"]) == {}, "tables whose content changed: (now, recorded)"


def test_table_digest_sees_a_changed_value_but_not_the_parquet_encoding(tmp_path):
    """The digest must catch one value changed, and ignore how the same table is encoded."""
    table = pa.table(
        {
            "name": pa.array(["a", "bb", None], pa.large_string()),
            "box": pa.array([1, 2, 3], pa.int64()),
            "x": pa.array([0.5, 0.25, 1.0]),
            "kept": pa.array([True, False, True]),
        }
    )
    pq.write_table(table, tmp_path / "a.parquet")
    plain = table.cast(pa.schema([pa.field("name", pa.string())] + list(table.schema)[1:]))
    pq.write_table(plain, tmp_path / "b.parquet", compression="gzip", use_dictionary=False)
    assert (tmp_path / "a.parquet").read_bytes() != (tmp_path / "b.parquet").read_bytes()
    assert table_digest(tmp_path / "a.parquet") == table_digest(tmp_path / "b.parquet")
    changes = [("x", [0.5, 0.25, 1.0000001]), ("name", ["a", "b", None]), ("name", ["a", "bb", ""])]
    for column, values in changes:
        index = table.schema.get_field_index(column)
        changed = table.set_column(index, column, pa.array(values, table[column].type))
        pq.write_table(changed, tmp_path / "c.parquet")
        assert table_digest(tmp_path / "c.parquet") != table_digest(tmp_path / "a.parquet"), (column, values)
