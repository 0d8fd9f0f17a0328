"""``BatchingSqliteEventLogStorage`` leaves the history as Dagster's own SQLite event log does.

The same partitioned asset (with a check) is materialised twice in two instances, one with
Dagster's ``SqliteEventLogStorage`` and one with the batching class, and every table that Dagster
reads is compared: the events of each run, the cross-run index, the asset table, the tags and the
check executions; also what the instance's own queries answer.
"""

import sqlite3
from pathlib import Path

import pytest
from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    EventRecordsFilter,
    MaterializeResult,
    StaticPartitionsDefinition,
    asset,
    asset_check,
    define_asset_job,
)
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from ilsvrc_assets import cli
from ilsvrc_assets.defs.event_log_storage import BatchingSqliteEventLogStorage

KEYS = [f"train-{i:05d}-of-00012" for i in range(12)]


@asset(partitions_def=StaticPartitionsDefinition(KEYS), backfill_policy=BackfillPolicy.single_run())
def shards(context: AssetExecutionContext) -> MaterializeResult:
    for key in context.partition_keys:
        context.add_asset_metadata({"records": int(key[6:11]), "md5": key * 2}, partition_key=key)
    return MaterializeResult(metadata={"shards_in_this_run": len(context.partition_keys)})


@asset(deps=[shards])
def manifest() -> MaterializeResult:
    return MaterializeResult(metadata={"shards": len(KEYS)})


@asset_check(asset=manifest)
def every_shard_present() -> AssetCheckResult:
    return AssetCheckResult(passed=True)


DEFS = Definitions(
    assets=[shards, manifest],
    asset_checks=[every_shard_present],
    jobs=[define_asset_job("shards_job", [shards]), define_asset_job("manifest_job", [manifest])],
)


def make_instance(home: Path, batching: bool, monkeypatch) -> DagsterInstance:
    home.mkdir(parents=True)
    if batching:
        (home / "dagster.yaml").write_text(cli.DAGSTER_YAML)  # the local profile
    else:
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return DagsterInstance.get()


def materialise(instance: DagsterInstance) -> None:
    for _ in range(2):  # twice: the second run updates the asset rows the first inserted
        shards_result = DEFS.resolve_job_def("shards_job").execute_in_process(
            instance=instance,
            tags={ASSET_PARTITION_RANGE_START_TAG: KEYS[0], ASSET_PARTITION_RANGE_END_TAG: KEYS[-1]},
        )
        assert shards_result.success
        assert DEFS.resolve_job_def("manifest_job").execute_in_process(instance=instance).success


def rows(database: Path, table: str, columns: str) -> list[tuple]:
    with sqlite3.connect(database) as conn:
        return conn.execute(f"SELECT {columns} FROM {table} ORDER BY id").fetchall()


EVENT_COLUMNS = "dagster_event_type, step_key, asset_key, partition"


def history(instance: DagsterInstance, home: Path) -> dict:
    """Everything comparable between two instances (run ids and times differ by nature)."""
    runs = instance.get_runs()
    run_order = {run.run_id: n for n, run in enumerate(reversed(runs))}  # get_runs: newest first
    index = home / "history" / "runs" / "index.db"
    assert index.exists(), f"no event log index under {home}"
    key = AssetKey("shards")
    latest = instance.get_latest_materialization_event(key)
    return {
        "events per run": sorted(
            rows(home / "history" / "runs" / f"{run.run_id}.db", "event_logs", EVENT_COLUMNS) for run in runs
        ),
        "index events": rows(index, "event_logs", EVENT_COLUMNS),
        "asset keys": [
            (asset_key, run_order[last_run_id], last_materialization is not None, cached is not None)
            for asset_key, last_run_id, last_materialization, cached in rows(
                index,
                "asset_keys",
                "asset_key, last_run_id, last_materialization, cached_status_data",
            )
        ],
        # (values: data versions, from each run's own ids)
        "asset event tags": rows(index, "asset_event_tags", "asset_key, key, event_id IS NOT NULL"),
        "check executions": rows(index, "asset_check_executions", "asset_key, check_name, execution_status"),
        "materialised partitions": sorted(instance.get_materialized_partitions(key)),
        "latest materialisation": (latest.asset_materialization.partition, run_order[latest.run_id]),
        "materialisations": len(instance.fetch_materializations(key, limit=1000).records),
        "planned": len(
            instance.get_event_records(
                EventRecordsFilter(DagsterEventType.ASSET_MATERIALIZATION_PLANNED, asset_key=key)
            )
        ),
        "metadata": sorted(
            (r.asset_materialization.partition, r.asset_materialization.metadata["md5"].value)
            for r in instance.fetch_materializations(key, limit=1000).records
        ),
    }


@pytest.fixture
def batch_size(monkeypatch):
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", cli.EVENT_BATCH_SIZE)


def test_batching_storage_leaves_the_history_dagster_leaves(tmp_path, batch_size, monkeypatch):
    with make_instance(tmp_path / "dagster", False, monkeypatch) as dagster_own:
        materialise(dagster_own)
        expected = history(dagster_own, tmp_path / "dagster")

    with make_instance(tmp_path / "batching", True, monkeypatch) as batching:
        assert isinstance(batching.event_log_storage, BatchingSqliteEventLogStorage)
        one_by_one = []
        store_event = BatchingSqliteEventLogStorage.store_event
        monkeypatch.setattr(
            BatchingSqliteEventLogStorage,
            "store_event",
            lambda self, event: (one_by_one.append(event), store_event(self, event))[-1],
        )
        materialise(batching)
        actual = history(batching, tmp_path / "batching")

    assert actual == expected
    assert expected["materialised partitions"] == KEYS
    assert expected["materialisations"] == 2 * len(KEYS)
    # The partitions' events went through store_event_batch, not one by one.
    stored_alone = [e for e in one_by_one if e.dagster_event and e.dagster_event.partition]
    assert stored_alone == []


def test_base_dir_defaults_to_dagster_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    storage = BatchingSqliteEventLogStorage()
    assert Path(storage._base_dir) == tmp_path / "history" / "runs"
    monkeypatch.delenv("DAGSTER_HOME")
    with pytest.raises(Exception, match="base_dir"):
        BatchingSqliteEventLogStorage()
