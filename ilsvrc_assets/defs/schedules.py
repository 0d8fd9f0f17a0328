"""Keeping the outputs fresh: the weekly refresh from the source and the daily audit of what is built.

``refresh_from_source`` (a sensor that acts on a cron): at each tick of ``ILSVRC_REFRESH_CRON`` it
observes the source's inputs (the five archives, for the official release:
:meth:`ilsvrc_assets.sources.ImageSource.observe`),
compares each observation with the ``source_version`` its archive asset recorded when it last
materialised, and launches one backfill of the changed archives and everything downstream of
them. A backfill, not runs: the backfill runs the unpartitioned assets first and then each shard
asset's partitions as one run (their single-run backfill policy), in dependency order. Dagster's
schedules cannot launch backfills, sensors can; hence a sensor that keeps its own cron.
Unchanged sources cause no run at all.

``audit_daily`` (a schedule on ``ILSVRC_AUDIT_CRON``) runs the job ``audit_outputs``: the checks
again, against the outputs as they are on disk, materialising nothing.
"""

import json
from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime

from dagster import (
    AssetKey,
    AssetSelection,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleDefinition,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from ilsvrc_assets.defs.archives import SOURCE_VERSION
from ilsvrc_assets.defs.dagster_internals import (
    AssetGraphSubset,
    BulkActionsFilter,
    BulkActionStatus,
    get_latest_completed_cron_tick,
    get_next_cron_tick,
)
from ilsvrc_assets.defs.resources import IlsvrcResource
from ilsvrc_assets.settings import Settings

REFRESH = "refresh_from_source"
AUDIT = "audit_daily"
# Tags of the refresh's backfill: that it is one, and which archives changed.
TRIGGER_TAG, TRIGGER = "ilsvrc/trigger", "refresh"
CHANGED_TAG = "ilsvrc/changed"
# How often the sensor wakes up to see whether a cron tick has passed (a wake-up between ticks
# costs nothing: no observation).
WAKE_UP_SECONDS = 300
IN_PROGRESS = [BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING, BulkActionStatus.FAILING]


def recorded_versions(instance: DagsterInstance, names: Iterable[str]) -> dict[str, str | None]:
    """{input asset name: ``source_version`` of its latest materialisation}, for the ``names``.

    None if the input was never materialised, "" if its materialisation recorded no version.
    """
    recorded: dict[str, str | None] = {}
    for name in names:
        event = instance.get_latest_materialization_event(AssetKey(name))
        value = None
        if event is not None and event.asset_materialization is not None:
            entry = event.asset_materialization.metadata.get(SOURCE_VERSION)
            value = str(entry.value) if entry is not None else ""
        recorded[name] = value
    return recorded


def changed_archives(recorded: Mapping[str, str | None], observed: Mapping[str, str]) -> dict[str, str]:
    """{archive asset name: what changed}, for the archives whose observation differs from the record."""
    changed = {}
    for name, now in observed.items():
        before = recorded.get(name)
        if before is None:
            changed[name] = f"never materialised; now {now}"
        elif not before:
            changed[name] = f"its last materialisation recorded no source version; now {now}"
        elif before != now:
            changed[name] = f"was {before}, now {now}"
    return changed


def _refresh_in_progress(instance: DagsterInstance) -> list[str]:
    backfills = instance.get_backfills(
        filters=BulkActionsFilter(statuses=IN_PROGRESS, tags={TRIGGER_TAG: TRIGGER}), limit=5
    )
    return [backfill.backfill_id for backfill in backfills]


def refresh_sensor(settings: Settings, leave_out: Collection[str] = ()) -> SensorDefinition:
    """The refresh sensor of a deployment, on ``settings.refresh_cron`` in ``settings.schedule_timezone``.

    ``leave_out``: assets it never requests (``definitions.left_out``: those of the formats
    ``ILSVRC_FORMATS`` leaves out, which stay unmaterialised).
    """
    cron, tz = settings.refresh_cron, settings.schedule_timezone

    @sensor(
        name=REFRESH,
        asset_selection=AssetSelection.all(),
        minimum_interval_seconds=WAKE_UP_SECONDS,
        default_status=DefaultSensorStatus.RUNNING
        if settings.schedules_running
        else DefaultSensorStatus.STOPPED,
        description=f"At `{cron}` ({tz}; `ILSVRC_REFRESH_CRON`), observe the source's inputs (HTTP: "
        "ETag, Last-Modified, Content-Length from a HEAD request; a local file: size and modification "
        "time; a folder: its manifest of sizes and times; sample: its version) and launch a backfill "
        "of the changed inputs and everything downstream of them. Unchanged inputs cause no run.",
    )
    def _refresh(context: SensorEvaluationContext, ilsvrc: IlsvrcResource) -> SensorResult | SkipReason:
        now = datetime.now(UTC)
        tick = get_latest_completed_cron_tick(cron, now, tz).timestamp()
        last = json.loads(context.cursor)["tick"] if context.cursor else None
        if last is not None and tick <= last:
            upcoming = get_next_cron_tick(cron, now, tz)
            return SkipReason(f"next observation at {upcoming.isoformat()} (cron {cron!r}, {tz})")
        if running := _refresh_in_progress(context.instance):
            # Looked at again at the next wake-up: the cursor stays where it is.
            return SkipReason(f"the refresh backfill {', '.join(running)} is still in progress")

        source = ilsvrc.image_source()
        observed = {item.asset: source.observe(item, context.log.info) for item in source.inputs()}
        changed = changed_archives(recorded_versions(context.instance, observed), observed)
        cursor = json.dumps({"tick": tick})
        if not changed:
            seen = "; ".join(f"{name}: {version}" for name, version in observed.items())
            return SensorResult(
                skip_reason=SkipReason(f"no archive changed at {source.describe()} ({seen})"),
                cursor=cursor,
            )
        for name, what in changed.items():
            context.log.info(f"{name} changed at the source: {what}")
        asset_graph = context.repository_def.asset_graph
        # Only the outputs that are built (ILSVRC_FORMATS): the others stay unmaterialised.
        keys = (AssetSelection.assets(*changed).downstream() - AssetSelection.assets(*leave_out)).resolve(
            asset_graph
        )
        return SensorResult(
            run_requests=[
                RunRequest.for_asset_graph_subset(
                    AssetGraphSubset.from_asset_keys(keys, asset_graph),
                    tags={TRIGGER_TAG: TRIGGER, CHANGED_TAG: ",".join(sorted(changed))},
                )
            ],
            cursor=cursor,
        )

    return _refresh


def audit_schedule(settings: Settings, job_name: str) -> ScheduleDefinition:
    """The daily audit: the job ``job_name`` (the checks only) on ``settings.audit_cron``."""
    return ScheduleDefinition(
        name=AUDIT,
        job_name=job_name,
        cron_schedule=settings.audit_cron,
        execution_timezone=settings.schedule_timezone,
        default_status=DefaultScheduleStatus.RUNNING
        if settings.schedules_running
        else DefaultScheduleStatus.STOPPED,
        description=f"At `{settings.audit_cron}` ({settings.schedule_timezone}; `ILSVRC_AUDIT_CRON`), "
        f"run `{job_name}`: every check again against the outputs on disk (shards hashed and "
        "compared with the MD5 recorded when written, the validation tree scanned). A deleted or "
        "altered output fails the run, naming the file.",
    )
