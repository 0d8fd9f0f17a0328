"""The production profile for real: history in PostgreSQL, a shard backfill run by the daemon.

A throwaway PostgreSQL server (Debian's package, as `.ci/run` installs it) is started in a
temporary folder, and `dagster-daemon run` against a $DAGSTER_HOME holding
deploy/profiles/production/dagster.yaml word for word. The inputs are built in this process
against that instance; the backfill of every shard partition is then carried out by the daemon:
its backfill loop cuts it into batches (ILSVRC_PARTITIONS_PER_RUN), queues the runs, and its run
queue starts them under the profile's limits; the manifest and its checks run afterwards, against
the same instance. Everything is then read back from PostgreSQL itself.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ilsvrc_assets import cli
from ilsvrc_assets import settings as settings_module
from ilsvrc_assets.definitions import left_out

pytestmark = pytest.mark.long(seconds=230)  # conftest: the long files start first

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "deploy" / "profiles"
BACKFILL_TIMEOUT = 300  # seconds; the daemon's backfill loop wakes every 30 s
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
SETTINGS_ENV = {
    "ILSVRC_SOURCE": "sample",
    "ILSVRC_TRAIN_SHARDS": "8",
    "ILSVRC_VALIDATION_SHARDS": "4",
    "ILSVRC_WORKERS": "2",
    "ILSVRC_PARTITIONS_PER_RUN": "4",
}


def test_local_profile_is_what_the_cli_writes(tmp_path, monkeypatch):
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef
    from dagster._core.storage.runs import SqliteRunStorage

    from ilsvrc_assets.defs.event_log_storage import BatchingSqliteEventLogStorage

    profile = (PROFILES / "local" / "dagster.yaml").read_text()
    assert profile == cli.DAGSTER_YAML
    environ = {"DAGSTER_HOME": str(tmp_path / "home")}
    home = cli.ensure_dagster_home(environ)
    assert environ["DAGSTER_EVENT_BATCH_SIZE"] == cli.EVENT_BATCH_SIZE
    assert (home / "dagster.yaml").read_text().startswith(cli.DAGSTER_YAML)
    # From its folder alone (no DAGSTER_HOME), and as the CLI and dagster dev open it.
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        assert isinstance(instance.event_log_storage, BatchingSqliteEventLogStorage)
        assert Path(instance.event_log_storage._base_dir) == home / "history" / "runs"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, SqliteRunStorage)
        assert isinstance(instance.event_log_storage, BatchingSqliteEventLogStorage)
        # The event logs stay where Dagster's own SQLite storage keeps them.
        assert Path(instance.event_log_storage._base_dir) == home / "history" / "runs"
        assert Path(instance.root_directory) == home


# --- a throwaway PostgreSQL server ---------------------------------------------------------------


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    db: str

    def dagster_env(self) -> dict[str, str]:
        """The variables deploy/profiles/production/dagster.yaml reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.db,
        }

    def connect(self, db: str | None = None):
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=db or self.db
        )


def postgres_bin_dir() -> Path | None:
    """The newest PostgreSQL server's binaries (Debian: /usr/lib/postgresql/<major>/bin), if any."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parents[1].name) if p.parents[1].name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of its own on a free loopback port, stopped and deleted afterwards.

    As root, the server runs as the `postgres` OS user (it refuses to run as root), in a folder
    outside pytest's tmp_path, which that user could not enter.
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "no PostgreSQL server binaries (initdb, pg_ctl): install Debian's postgresql, as .ci/run does"
        )
    as_server_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="ilsvrc-postgres-"))
    if os.geteuid() == 0:
        as_server_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    data, log = root / "data", root / "server.log"
    server = PostgresServer("127.0.0.1", free_port(), "dagster", secrets.token_hex(12), "dagster")

    def pg(*command: str) -> None:
        done = subprocess.run(
            [*as_server_user, *command], check=False, cwd=root, capture_output=True, text=True, timeout=120
        )
        if done.returncode:
            server_log = log.read_text() if log.exists() else ""
            pytest.fail(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}\n{server_log}")

    started = False
    try:
        pwfile = root / "pwfile"
        pwfile.write_text(server.password)
        if as_server_user:
            shutil.chown(pwfile, "postgres", "postgres")
        # Password (SCRAM) over TCP, as a real deployment connects; durability off, it is thrown away.
        pg(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            server.user,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = (
            f"-c listen_addresses={server.host} -p {server.port} -c unix_socket_directories={root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        started = True  # from here on, stop it whatever happens
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
        connection = server.connect("postgres")
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        connection.cursor().execute(f"CREATE DATABASE {server.db}")
        connection.close()
        yield server
    finally:
        if started:
            stop = [*as_server_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-t", "30", "stop"]
            if subprocess.run([*stop, "-m", "fast"], check=False, cwd=root, capture_output=True).returncode:
                subprocess.run([*stop, "-m", "immediate"], check=False, cwd=root, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


# --- the daemon ----------------------------------------------------------------------------------


class Daemon:
    """`dagster-daemon run` in a process group of its own (with its code server and run workers)."""

    def __init__(self, workspace: Path, env: dict[str, str], log: Path):
        self.log = log
        executable = Path(sys.executable).with_name("dagster-daemon")
        command = [str(executable)] if executable.exists() else [sys.executable, "-m", "dagster._daemon"]
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [*command, "run", "-w", str(workspace)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self, lines: int = 200) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Interrupt (it shuts its code server down), then kill whatever is left of its group."""
        group = self.process.pid  # start_new_session: the group id is the daemon's pid
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


def wait_for_backfill(instance, backfill_id: str, daemon: Daemon):
    from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES

    deadline = time.monotonic() + BACKFILL_TIMEOUT
    while time.monotonic() < deadline:
        backfill = instance.get_backfill(backfill_id)
        if backfill.status in BULK_ACTION_TERMINAL_STATUSES:
            return backfill
        if daemon.process.poll() is not None:
            pytest.fail(f"dagster-daemon exited with {daemon.process.returncode}:\n{daemon.output()}")
        time.sleep(1)
    pytest.fail(
        f"backfill {backfill_id} still {instance.get_backfill(backfill_id).status.value} after "
        f"{BACKFILL_TIMEOUT} s; runs: {run_summary(instance, backfill_id)}\ndagster-daemon:\n{daemon.output()}"
    )


def run_summary(instance, backfill_id: str) -> str:
    from dagster import DagsterEventType, RunsFilter

    parts = []
    for run in instance.get_runs(filters=RunsFilter.for_backfill(backfill_id)):
        errors = [
            event.message
            for event in instance.all_logs(
                run.run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}
            )
        ]
        parts.append(f"{run.run_id} {run.status.value} {' / '.join(errors)}")
    return "; ".join(parts) or "none"


# --- the test ------------------------------------------------------------------------------------


def test_shard_backfill_through_the_daemon_keeps_its_history_in_postgres(
    postgres, sample_release, tmp_path, monkeypatch
):
    from dagster import AssetKey, DagsterEventType, DagsterInstance, RunsFilter
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
    from dagster._core.utils import make_new_backfill_id
    from dagster._time import get_current_timestamp
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    from ilsvrc_assets.definitions import JOB_NAMES, build_definitions

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(PROFILES / "production" / "dagster.yaml", home / "dagster.yaml")
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n"
        "  - python_module:\n"
        "      module_name: ilsvrc_assets.definitions\n"
        "      location_name: ilsvrc_assets\n"
        f"      working_directory: {REPO}\n"
    )
    env = {
        **SETTINGS_ENV,
        "ILSVRC_SAMPLE_DIR": str(sample_release),
        "ILSVRC_DATA_DIR": str(tmp_path / "data"),
        "DAGSTER_HOME": str(home),
        **postgres.dagster_env(),
    }
    for name, value in env.items():  # this process reads the same instance and settings
        monkeypatch.setenv(name, value)
    settings = settings_module.load(env)
    definitions = build_definitions(settings)
    partitions = {
        AssetKey(f"{split}_shards"): settings.shard_names(split) for split in ("train", "validation")
    }
    shard_keys = list(partitions)

    daemon = None
    with DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        try:
            # The inputs, in this process (their runs are recorded in PostgreSQL all the same).
            inputs = definitions.resolve_job_def(JOB_NAMES["inputs"]).execute_in_process(
                instance=instance, raise_on_error=False, run_config=QUIET
            )
            assert inputs.success, [e.message for e in inputs.all_events if e.is_failure]

            # Every partition of both shard assets, as the UI's "Materialize all partitions"
            # (launchPartitionBackfill) records it. Added before the daemon starts, so its first
            # backfill iteration picks it up. Each run has a single step (the shards are written
            # by the step's own pool of workers), so it runs in the run's process rather than in
            # one more subprocess: the same work with one Python start-up less per run.
            backfill_id = make_new_backfill_id()
            instance.add_backfill(
                PartitionBackfill.from_asset_partitions(
                    backfill_id=backfill_id,
                    asset_graph=definitions.resolve_asset_graph(),
                    partition_names=None,
                    asset_selection=shard_keys,
                    backfill_timestamp=get_current_timestamp(),
                    tags={},
                    dynamic_partitions_store=instance,
                    all_partitions=True,
                    title="every shard",
                    description=None,
                    run_config={"execution": {"config": {"in_process": {}}}},
                )
            )
            daemon = Daemon(workspace, {**os.environ, **env}, tmp_path / "daemon.log")
            backfill = wait_for_backfill(instance, backfill_id, daemon)
            assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS, run_summary(instance, backfill_id)
            daemon.stop()

            manifest = definitions.resolve_job_def(JOB_NAMES["manifest"]).execute_in_process(
                instance=instance, raise_on_error=False, run_config=QUIET
            )
            assert manifest.success, [e.message for e in manifest.all_events if e.is_failure]
            # Three runs wrote into one unpublished version; it is published once, checked.
            assert not settings.tfrecords_dir.exists()
            published = definitions.resolve_job_def("publish_tfrecords").execute_in_process(
                instance=instance, raise_on_error=False, run_config=QUIET
            )
            assert published.success, [e.message for e in published.all_events if e.is_failure]
            assert sorted(p.name for p in settings.tfrecords_dir.glob("*-of-*")) == sorted(
                name for names in partitions.values() for name in names
            )
        finally:
            if daemon is not None:
                daemon.stop()

        # Every partition materialised.
        for key, names in partitions.items():
            assert instance.get_materialized_partitions(key) == set(names), key

        # In batches of ILSVRC_PARTITIONS_PER_RUN: ceil(8/4) + ceil(4/4) = 3 runs, each through the queue.
        records = instance.get_run_records(filters=RunsFilter.for_backfill(backfill_id))
        batches = sorted(
            (
                next(iter(r.dagster_run.asset_selection)).to_user_string(),
                r.dagster_run.tags[ASSET_PARTITION_RANGE_START_TAG],
                r.dagster_run.tags[ASSET_PARTITION_RANGE_END_TAG],
            )
            for r in records
        )
        per_run = settings.partitions_per_run
        assert len(records) == sum(math.ceil(len(names) / per_run) for names in partitions.values()) == 3
        assert batches == [
            ("train_shards", "train-00000-of-00008", "train-00003-of-00008"),
            ("train_shards", "train-00004-of-00008", "train-00007-of-00008"),
            ("validation_shards", "validation-00000-of-00004", "validation-00003-of-00004"),
        ]
        for record in records:
            assert record.dagster_run.is_success, run_summary(instance, backfill_id)
            # Queued, then launched by the daemon's run queue.
            lifecycle = [
                e.dagster_event.event_type
                for e in instance.all_logs(
                    record.dagster_run.run_id,
                    of_type={DagsterEventType.RUN_ENQUEUED, DagsterEventType.RUN_STARTING},
                )
            ]
            assert lifecycle == [DagsterEventType.RUN_ENQUEUED, DagsterEventType.RUN_STARTING]
        # The profile's limit on shard-writing runs held: the three were queued together, yet
        # never were all three running at once.
        profile = yaml.safe_load((home / "dagster.yaml").read_text())
        (limit,) = profile["run_coordinator"]["config"]["tag_concurrency_limits"]
        assert limit == {"key": ASSET_PARTITION_RANGE_START_TAG, "limit": 2} and len(records) == 3
        starts = [r.start_time for r in records]
        ends = [r.end_time for r in records]
        assert max(starts) >= min(ends), "more shard runs at once than the run queue's tag limit allows"

        # Every check of the code location evaluated, and passed (but those of the formats the build
        # leaves out: ILSVRC_FORMATS is the default, TFRecords only).
        unbuilt = set(left_out(settings))
        assert unbuilt >= {"train_tree", "train_webdataset"}
        check_keys = [
            key
            for key in definitions.resolve_asset_graph().asset_check_keys
            if key.asset_key.to_user_string() not in unbuilt
        ]
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(list(check_keys))
        outcomes = {key.to_user_string(): latest[key].status if key in latest else None for key in check_keys}
        assert {k: v for k, v in outcomes.items() if v != AssetCheckExecutionRecordStatus.SUCCEEDED} == {}

    # And it is all in PostgreSQL, read back with plain SQL.
    with postgres.connect() as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT asset_key, partition FROM event_logs"
            " WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND asset_key = ANY(%s)",
            ([key.to_string() for key in shard_keys],),
        )
        materialized = sorted(cursor.fetchall())
        cursor.execute(
            "SELECT count(*) FROM run_tags WHERE key = 'dagster/backfill' AND value = %s", (backfill_id,)
        )
        (backfill_runs,) = cursor.fetchone()
        cursor.execute("SELECT status FROM bulk_actions WHERE key = %s", (backfill_id,))
        (backfill_status,) = cursor.fetchone()
        cursor.execute("SELECT daemon_type FROM daemon_heartbeats")
        daemons = {row[0] for row in cursor.fetchall()}
    connection.close()
    assert materialized == sorted(
        (key.to_string(), name) for key, names in partitions.items() for name in names
    )
    assert len(materialized) == 12
    assert backfill_runs == 3 and backfill_status == "COMPLETED_SUCCESS"
    assert {"BACKFILL", "QUEUED_RUN_COORDINATOR", "MONITORING"} <= daemons
