"""Every name this project takes from Dagster's private modules (``dagster._...``), in one place.

Dagster's public API does not (yet) offer these; a Dagster upgrade may move or remove any of them
without notice. Gathering them here means an upgrade breaks one module, with one message, and
``ilsvrc_assets_tests/defs/test_dagster_internals.py`` names whatever moved and the Dagster version
it moved in. Other modules import these names from here, never from ``dagster._`` directly.

Why each is needed (and who uses it):

- ``ASSET_PARTITION_RANGE_START_TAG``, ``ASSET_PARTITION_RANGE_END_TAG`` (``cli.py``): the run tags
  that make one run cover a range of partitions, as a single-run backfill does; the public
  ``execute_in_process`` takes a single ``partition_key`` only, and ``build`` writes all shards in
  one run.
- ``AssetCheckExecutionRecordStatus`` (``defs/shards.py``): the status of a check's latest
  evaluation as ``get_latest_asset_check_execution_by_key`` returns it, to refuse writing shards
  while an upstream blocking check (evaluated in an earlier run) has not passed.
- ``AssetGraphSubset``, ``BulkActionsFilter``, ``BulkActionStatus`` (``defs/schedules.py``): the
  refresh sensor launches a backfill of the changed archives' downstream assets (a sensor's public
  ``RunRequest.for_asset_graph_subset`` takes an ``AssetGraphSubset``) and looks for one of its own
  backfills still in progress before launching another.
- ``get_latest_completed_cron_tick``, ``get_next_cron_tick`` (``defs/schedules.py``): the refresh
  sensor observes the source at the ticks of ``ILSVRC_REFRESH_CRON`` in its time zone, with
  Dagster's own cron arithmetic (the same as its schedules').
- ``check``, ``Field``, ``StringSource``, ``ConfigurableClassData``, ``EventLogEntry``,
  ``ASSET_EVENTS``, ``ASSET_CHECK_EVENTS``, ``BATCH_WRITABLE_EVENTS``, ``SqliteEventLogStorage``,
  ``SQLITE_BUSY_TIMEOUT_SECONDS``, ``db_result`` (``defs/event_log_storage.py``): the batching
  event log is a subclass of Dagster's SQLite event log (a storage class is configured from
  ``dagster.yaml`` through ``ConfigurableClassData`` and a config schema of ``Field``s); it must
  store exactly the events Dagster batches, the way the base class stores them one by one.
  It also overrides or calls the base class's members listed in
  :data:`SQLITE_EVENT_LOG_MEMBERS`, which the test checks as well.
"""

from importlib.metadata import version

DAGSTER_VERSION = version("dagster")
WRITTEN_AGAINST = "1.13.27"  # the Dagster version these names were last checked with

try:
    from dagster import _check as check
    from dagster._config import Field, StringSource
    from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
    from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS, BATCH_WRITABLE_EVENTS
    from dagster._core.events.log import EventLogEntry
    from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
        SQLITE_BUSY_TIMEOUT_SECONDS,
        SqliteEventLogStorage,
    )
    from dagster._core.storage.sqlalchemy_compat import db_result
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
    from dagster._serdes import ConfigurableClassData
    from dagster._utils.schedules import get_latest_completed_cron_tick, get_next_cron_tick
except ImportError as e:  # say which version broke what, and where to look, not just the name
    raise ImportError(
        f"{e}: Dagster {DAGSTER_VERSION} moved or removed a private name ilsvrc_assets uses "
        f"(checked with Dagster {WRITTEN_AGAINST}); see ilsvrc_assets/defs/dagster_internals.py for "
        f"what each is for, or install dagster=={WRITTEN_AGAINST}"
    ) from e

# Members of SqliteEventLogStorage that BatchingSqliteEventLogStorage overrides (``_connect``) or
# relies on; attributes set in its __init__ (``_db_lock``, ``_initialized_dbs``) included.
SQLITE_EVENT_LOG_MEMBERS = (
    "_connect",
    "_db_lock",
    "_initdb",
    "_initialized_dbs",
    "_store_asset_event",
    "_store_asset_event_tags",
    "conn_string_for_shard",
    "index_transaction",
    "prepare_insert_event",
    "run_connection",
    "store_asset_check_event",
    "store_event",
)

__all__ = [
    "ASSET_CHECK_EVENTS",
    "ASSET_EVENTS",
    "ASSET_PARTITION_RANGE_END_TAG",
    "ASSET_PARTITION_RANGE_START_TAG",
    "AssetCheckExecutionRecordStatus",
    "AssetGraphSubset",
    "BATCH_WRITABLE_EVENTS",
    "BulkActionStatus",
    "BulkActionsFilter",
    "ConfigurableClassData",
    "EventLogEntry",
    "Field",
    "SQLITE_BUSY_TIMEOUT_SECONDS",
    "SQLITE_EVENT_LOG_MEMBERS",
    "SqliteEventLogStorage",
    "StringSource",
    "check",
    "db_result",
    "get_latest_completed_cron_tick",
    "get_next_cron_tick",
]
