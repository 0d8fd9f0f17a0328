"""``BatchingSqliteEventLogStorage``: Dagster's SQLite event log, storing a batch in one transaction.

A run of all 1,024 training shards records 2,048 asset events (one "planned" and one
"materialised" per partition). Dagster's SQLite event log stores each in transactions of its own,
on a new SQLAlchemy engine each time (so no statement is ever compiled from cache): about 10 ms an
event on this project's machines, 20 s of bookkeeping for one run. Dagster already hands a
partitioned step's events over in batches when ``DAGSTER_EVENT_BATCH_SIZE`` is set (as
``ilsvrc-assets build`` and ``ilsvrc-assets ui`` do, in ``cli.ensure_dagster_home``); this class
stores such a batch in one transaction per database file, and keeps one engine per file. The
tables end as Dagster's own ``store_event``, called event by event, leaves them
(``ilsvrc_assets_tests/defs/test_event_log_storage.py`` compares the two).

Used by the local profile (``deploy/profiles/local/dagster.yaml``)::

    event_log_storage:
      module: ilsvrc_assets.defs.event_log_storage
      class: BatchingSqliteEventLogStorage

``base_dir`` defaults to where Dagster's own SQLite storage keeps the event logs
(``$DAGSTER_HOME/history/runs``), so an instance's history stays readable either way.
"""

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from ilsvrc_assets.defs.dagster_internals import (
    ASSET_CHECK_EVENTS,
    ASSET_EVENTS,
    BATCH_WRITABLE_EVENTS,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    ConfigurableClassData,
    EventLogEntry,
    Field,
    SqliteEventLogStorage,
    StringSource,
    check,
    db_result,
)
from ilsvrc_assets.settings import ENV_DAGSTER_HOME


class BatchingSqliteEventLogStorage(SqliteEventLogStorage):
    """SQLite event log storage that stores a batch of events in one transaction per database."""

    def __init__(self, base_dir: str | None = None, inst_data: ConfigurableClassData | None = None):
        if base_dir is None:
            home = os.environ.get(ENV_DAGSTER_HOME)
            if not home:
                raise check.CheckError(
                    "BatchingSqliteEventLogStorage: set base_dir in dagster.yaml, or DAGSTER_HOME"
                )
            base_dir = os.path.join(home, "history", "runs")
        self._engines: dict[str, Engine] = {}
        self._engines_pid = os.getpid()
        super().__init__(base_dir, inst_data)

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {"base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, Any]
    ) -> "BatchingSqliteEventLogStorage":
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        # One engine per database file and process (a forked process builds its own). NullPool as
        # in Dagster's class: a connection is closed when released, so no file stays open.
        if self._engines_pid != os.getpid():
            self._engines, self._engines_pid = {}, os.getpid()
        engine = self._engines.get(shard)
        if engine is None:
            engine = create_engine(
                self.conn_string_for_shard(shard),
                poolclass=NullPool,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
            )
            self._engines[shard] = engine
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            check.str_param(shard, "shard")
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Store ``events`` as ``store_event`` would one by one, in one transaction per database.

        Dagster only batches asset events (materialisations, observations, planned and failed
        materialisations, planned checks); anything else is stored one by one.
        """
        check.sequence_param(events, "events", of_type=EventLogEntry)
        if not events:
            return
        if any(
            not event.is_dagster_event or event.get_dagster_event().event_type not in BATCH_WRITABLE_EVENTS
            for event in events
        ):
            for event in events:
                self.store_event(event)
            return
        statements = [self.prepare_insert_event(event) for event in events]
        for run_id in dict.fromkeys(event.run_id for event in events):
            with self.run_connection(run_id) as conn:
                for event, statement in zip(events, statements):
                    if event.run_id == run_id:
                        conn.execute(statement)

        asset_events, asset_event_ids, check_events = [], [], []
        with self.index_transaction() as conn:
            for event, statement in zip(events, statements):
                event_type = event.get_dagster_event().event_type
                if event_type in ASSET_EVENTS or event_type in ASSET_CHECK_EVENTS:
                    with db_result(conn, statement) as result:
                        event_id = result.inserted_primary_key[0]
                    if event_id is None:
                        raise check.CheckError("Cannot store an asset event with a null event id.")
                    if event_type in ASSET_EVENTS:
                        asset_events.append(event)
                        asset_event_ids.append(event_id)
                    else:
                        check_events.append((event, event_id))
            if asset_events:
                self._store_asset_event_tags(conn, asset_events, asset_event_ids)
            # The asset table keeps, per asset, columns set by the latest event of each type
            # (materialisation, planned, observation): storing only the last event of each type
            # and asset, in their order, leaves the table as storing every event would.
            last = {}
            for index, event in enumerate(asset_events):
                last[(event.get_dagster_event().asset_key, event.get_dagster_event().event_type)] = index
            for index in sorted(last.values()):
                self._store_asset_event(conn, asset_events[index], asset_event_ids[index])
        for event, event_id in check_events:
            self.store_asset_check_event(event, event_id)
