"""``ilsvrc-assets``: build everything in one command, check it, write a stand-in release, open the UI.

    ilsvrc-assets build            materialise the whole graph, all partitions, from the configured source
    ilsvrc-assets check            run every check against the outputs on disk (materialises nothing);
                                   --junit-xml PATH also writes the results as a JUnit XML report
    ilsvrc-assets sample DEST      write the built-in sample release (five archives + MD5SUMS) to DEST
                                   (--layout kaggle|folder|...: as that copy lays it out)
    ilsvrc-assets ui               run `dagster dev` on this project's Dagster instance

Runs are recorded in the Dagster instance at $DAGSTER_HOME (default ``./.dagster_home``), so
everything ``build`` did shows in ``dagster dev`` afterwards. ``build`` runs each job in this
process, its steps in order, every run sharing one pool of record workers; the UI and the daemon
run ``prepare_inputs`` with its own executor instead, its independent steps at the same time (see
:data:`OWN_EXECUTOR_JOBS` for why ``build`` does not, yet).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ilsvrc_assets import settings as settings_module

DEFAULT_DAGSTER_HOME = ".dagster_home"
# ``sample --layout``: the layouts the built-in sample can be written in -> (the module under
# ilsvrc_assets.sample that lays the official sample out so, the ILSVRC_SOURCE that reads it).
# Each module has ``write_layout(release_dir, dest, progress) -> Path``, the path for ILSVRC_LOCAL_DIR.
SAMPLE_LAYOUTS: dict[str, tuple[str, str]] = {
    "official": ("", "local"),
    "kaggle": ("kaggle", "kaggle"),
    "folder": ("folder", "folder"),
    "huggingface": ("huggingface", "huggingface"),
}
EXIT_FAILED, EXIT_SETTINGS, EXIT_BUSY = 1, 2, 3
EVENT_BATCH_SIZE = "10000"  # at least a step's partitions of one asset (1,024 training shards)
# The local profile, deploy/profiles/local/dagster.yaml, word for word (a test keeps them equal;
# the deploy/ folder is not part of the installed package); ensure_dagster_home adds the event
# log's base_dir. deploy/profiles/production has the other.
DAGSTER_YAML = """\
# The local Dagster instance of ilsvrc_assets: what `ilsvrc-assets build` and `ilsvrc-assets ui`
# write to $DAGSTER_HOME/dagster.yaml (default ./.dagster_home) when there is none.
#
# Everything not set here is Dagster's default: run, event and schedule history in SQLite files
# under $DAGSTER_HOME; runs launched from the UI wait in a queue (at most 10 at once) that the
# daemon of `dagster dev` empties; each run is a subprocess on this machine.

# Send no usage statistics to Dagster Labs.
telemetry:
  enabled: false

# Dagster's SQLite event log, in the same files, storing a partitioned step's events in one
# transaction when DAGSTER_EVENT_BATCH_SIZE is set (ilsvrc-assets sets it): recording all 1,024
# training shards takes about 1 s instead of 15 (ilsvrc_assets/defs/event_log_storage.py). Its
# files are in $DAGSTER_HOME/history/runs, as with Dagster's default; ilsvrc-assets writes that
# folder's path below as base_dir, so the instance also opens from its folder alone (edit it if
# you move the folder).
event_log_storage:
  module: ilsvrc_assets.defs.event_log_storage
  class: BatchingSqliteEventLogStorage
"""


def ensure_dagster_home(environ: dict[str, str] | None = None) -> Path:
    """Use $DAGSTER_HOME, or ./.dagster_home; create it (with a dagster.yaml) if missing.

    Also sets DAGSTER_EVENT_BATCH_SIZE (unless set): Dagster then hands a partitioned step's asset
    events to the event log in batches, which the local profile's storage writes in one transaction.
    """
    environ = os.environ if environ is None else environ
    environ.setdefault(settings_module.ENV_DAGSTER_EVENT_BATCH_SIZE, EVENT_BATCH_SIZE)
    home = Path(environ.get(settings_module.ENV_DAGSTER_HOME) or DEFAULT_DAGSTER_HOME).expanduser().absolute()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        base_dir = json.dumps(str(home / "history" / "runs"))  # a JSON string is a YAML string
        (home / "dagster.yaml").write_text(f"{DAGSTER_YAML}  config:\n    base_dir: {base_dir}\n")
    environ[settings_module.ENV_DAGSTER_HOME] = str(home)
    return home


def _stages(definitions) -> list[tuple[str, dict[str, str]]]:
    """(job name, run tags) in dependency order: the inputs, then each asset of the formats chosen by
    ``ILSVRC_FORMATS`` (``defs/outputs.py``); a partitioned asset's job covers all its partitions in one run."""
    from ilsvrc_assets.definitions import JOB_NAMES, job_for
    from ilsvrc_assets.defs.dagster_internals import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )
    from ilsvrc_assets.defs.outputs import built_assets

    stages = [(JOB_NAMES["inputs"], {})]
    for asset in built_assets(definitions.resources["ilsvrc"].settings()):
        job = definitions.resolve_job_def(job_for(asset))
        tags = {}
        if job.partitions_def is not None:
            keys = job.partitions_def.get_partition_keys()
            tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
        stages.append((job.name, tags))
    return stages


def failure_message(step_failure_data) -> str:
    """What went wrong in a failed step, in the words of the error that caused it."""
    user = step_failure_data.user_failure_data
    if user is not None and user.description:
        return user.description
    error = step_failure_data.error
    if error is None:
        return "failed"
    # Dagster wraps the step's own exception: show that one, not what it wraps in turn (the
    # project's errors name the file and the fix; the library error they were raised from does not).
    while error.cause is not None and error.cls_name.startswith("Dagster"):
        error = error.cause
    message = error.message.strip()
    kind, _, rest = message.partition(": ")
    # The project's errors say what is wrong in their words; their class name adds nothing.
    if kind.startswith("ilsvrc_assets.") and kind.endswith(f".{error.cls_name}") and rest:
        return rest
    return message


def _run_config(log_level: str) -> dict:
    return {"loggers": {"console": {"config": {"log_level": log_level}}}}


def check_outcomes(result) -> list:
    """How each check evaluated in the run ``result`` came out (``junit.CheckOutcome``s), in order."""
    from ilsvrc_assets.junit import CheckOutcome

    return [
        CheckOutcome(
            asset=evaluation.asset_key.to_user_string(),
            check=evaluation.check_name,
            passed=evaluation.passed,
            description=evaluation.description or "",
            warning=not evaluation.passed and evaluation.severity.value == "WARN",
        )
        for evaluation in result.get_asset_check_evaluations()
    ]


def echo_outcome(outcome, echo=print) -> None:
    """One line per check: passed, FAILED (or a WARNING) with the check's description, or not
    evaluated and why."""
    name = f"{outcome.asset}:{outcome.check}"
    if outcome.error is not None:
        echo(f"  check {name} NOT EVALUATED: {outcome.error}")
    else:
        verdict = (
            "passed" if outcome.passed else f"WARNING: {outcome.description}" if outcome.warning else None
        )
        echo(f"  check {name} " + (verdict or f"FAILED: {outcome.description}"))


def _failed_by_own_checks(step_failure_data) -> bool:
    """True when a step failed only because blocking checks it evaluated did not pass."""
    error = step_failure_data.error
    return error is not None and error.cls_name == "DagsterAssetCheckFailedError"


def _steps_failed_by_own_checks(result) -> set[str]:
    return {
        event.step_key
        for event in result.all_events
        if event.is_step_failure and _failed_by_own_checks(event.step_failure_data)
    }


def echo_failed_steps(result, echo=print, but_by_own_checks: bool = False) -> dict[str, str]:
    """Print the failed and skipped steps of the run ``result``; return {step key: why it failed}.

    ``but_by_own_checks``: leave out steps that failed only because their own blocking checks did
    not pass, when each check's line already says so.
    """
    failed = {}
    for event in result.all_events:
        if event.is_step_failure and but_by_own_checks and _failed_by_own_checks(event.step_failure_data):
            continue
        if event.is_step_failure:
            failed[event.step_key] = failure_message(event.step_failure_data)
            echo(f"  step {event.step_key} FAILED: {failed[event.step_key]}")
        elif event.is_step_skipped:
            echo(f"  step {event.step_key} skipped: blocked by a failed upstream step or check")
    return failed


def _check_steps(job) -> dict:
    """{check key: the step (op) that evaluates it} for every check ``job`` runs."""
    graph = job.asset_layer.asset_graph
    return {
        key: assets_def.node_def.name
        for assets_def in graph.assets_defs
        if assets_def.is_executable
        for key in assets_def.check_keys & graph.asset_check_keys
    }


# The jobs ``build`` runs with their own executor, as the UI and the daemon do (``prepare_inputs``:
# its independent steps at the same time, each in a process of its own; ``definitions.inputs_executor``).
# None yet: measured on this 2-core machine (shared; each pair in the same minutes), the job so took
# the sample 36-40 s against 18-27 s in this process, in order; the full-count stand-in 59.5 against
# 62.6 s and 80.0 against 82.6 s when the machine was lightly loaded, 110-217 against 75-118 s when it
# was not. Its one long independent branch, the validation tree, is short beside the step processes'
# cost (0.5-2 s each, 19 steps, and ~4 s to start the fork server), and the box table, the longest
# step, waits for the training index (for its contact sheet) so cannot overlap it.
OWN_EXECUTOR_JOBS: frozenset[str] = frozenset()


def run_job(
    definitions,
    job_name: str,
    instance,
    tags: dict[str, str],
    log_level: str = "INFO",
    own_executor: bool = False,
):
    """Run one job of ``definitions`` against ``instance``, not raising on failure; its result.

    By default in this process, its steps in order, with the resources of ``definitions`` (the
    build's record workers). ``own_executor``: with the job's own executor where it has one
    (``prepare_inputs``: ``definitions.inputs_executor``), as the UI and the daemon launch it: its
    independent steps at the same time, each in a process that rebuilds the job from the settings
    of ``definitions`` (``definitions.job_for_settings``); that needs a persistent instance (with an
    ephemeral one the job runs in this process). Either way a failed step is reported by the result
    as Dagster recorded it, the project's error (the file, what to do) included.
    """
    job = definitions.resolve_job_def(job_name)
    if not (own_executor and job.has_specified_executor) or instance.is_ephemeral:
        return job.execute_in_process(
            instance=instance, tags=tags, raise_on_error=False, run_config=_run_config(log_level)
        )
    from dagster import build_reconstructable_job, execute_job

    settings = definitions.resources["ilsvrc"].settings()
    recon = build_reconstructable_job(
        "ilsvrc_assets.definitions",
        "job_for_settings",
        reconstructable_args=(job_name, json.dumps(settings_module.to_config(settings))),
    )
    with execute_job(
        recon, instance=instance, tags=tags, raise_on_error=False, run_config=_run_config(log_level)
    ) as result:
        return result


def run_stages(definitions, instance, log_level: str = "INFO", echo=print) -> tuple[list, list[str]]:
    """Run the stages in order against ``instance`` (each with :func:`run_job`); stop after the first
    that fails.

    Returns the runs' results and what failed, each with why (checks, then steps), empty on success.
    """
    results, failed = [], []
    for job_name, tags in _stages(definitions):
        echo(f"\n== {job_name} ==")
        result = run_job(definitions, job_name, instance, tags, log_level, job_name in OWN_EXECUTOR_JOBS)
        results.append(result)
        for outcome in check_outcomes(result):
            echo_outcome(outcome, echo)
            if outcome.failed:
                failed.append(f"check {outcome.asset}:{outcome.check}: {outcome.description}")
        if not result.success:
            steps = echo_failed_steps(result, echo)
            own = _steps_failed_by_own_checks(result)
            failed += [f"step {step}: {why}" for step, why in steps.items() if step not in own]
            echo(f"  run {result.run_id} of {job_name} failed")
            break
    return results, failed


def audit(definitions, instance, log_level: str = "INFO", echo=print) -> tuple[object, list]:
    """Run the audit job (every check against the outputs on disk; nothing materialised).

    Returns the run's result and one outcome per check of the audit: those evaluated in the order
    the run evaluated them, then any it did not evaluate (its step failed), with an ``error`` saying
    why.
    """
    from ilsvrc_assets.definitions import JOB_NAMES
    from ilsvrc_assets.junit import CheckOutcome

    job = definitions.resolve_job_def(JOB_NAMES["audit"])
    result = job.execute_in_process(
        instance=instance, raise_on_error=False, run_config=_run_config(log_level)
    )
    outcomes = check_outcomes(result)
    for outcome in outcomes:
        echo_outcome(outcome, echo)
    failed_steps = echo_failed_steps(result, echo, but_by_own_checks=True) if not result.success else {}
    evaluated = {(o.asset, o.check) for o in outcomes}
    for key, step in sorted(_check_steps(job).items(), key=lambda item: item[0].to_user_string()):
        if (key.asset_key.to_user_string(), key.name) in evaluated:
            continue
        if step in failed_steps:
            why = f"step {step} failed: {failed_steps[step]}"
        elif failed_steps:
            why = f"not run, after the failure of step(s) {', '.join(failed_steps)}"
        else:
            why = "not evaluated by the audit run"
        outcome = CheckOutcome(asset=key.asset_key.to_user_string(), check=key.name, passed=False, error=why)
        echo_outcome(outcome, echo)
        outcomes.append(outcome)
    return result, outcomes


def build(args: argparse.Namespace) -> int:
    """Materialise the whole graph; exit status 1 if a step or a check fails."""
    home = ensure_dagster_home()
    settings = settings_module.load()
    from dagster import DagsterInstance

    from ilsvrc_assets import fileio
    from ilsvrc_assets.definitions import build_definitions
    from ilsvrc_assets.record_workers import RecordWorkers
    from ilsvrc_assets.sources import from_settings

    print(f"ilsvrc-assets: source {from_settings(settings).describe()}")
    print(f"ilsvrc-assets: formats {', '.join(settings.formats)} ({settings_module.ENV_FORMATS})")
    print(f"ilsvrc-assets: outputs in {settings.data_dir}; Dagster history in {home}")
    if settings.output_url:
        print(
            f"ilsvrc-assets: and published to {settings.output_url} "
            f"({', '.join(settings.bucket_outputs)}; {settings_module.ENV_OUTPUT_URL})"
        )
    started = time.monotonic()
    try:
        # One build at a time per output folder: a second one would only redo the same work.
        # The record workers (the shard runs' and the read-back's, one pool for the whole build)
        # load TensorFlow while the first run reads the archives.
        with (
            fileio.exclusive(settings.lock_path("build"), f"the build of {settings.data_dir}"),
            RecordWorkers(settings.workers) as workers,
            DagsterInstance.get() as instance,
        ):
            _, failed = run_stages(
                build_definitions(settings, record_workers=workers),
                instance,
                args.log_level,
                echo=lambda m: print(m, flush=True),
            )
    except fileio.BusyError as e:
        print(f"ilsvrc-assets: not started: {e}", file=sys.stderr)
        return EXIT_BUSY
    elapsed = time.monotonic() - started
    if failed:
        # The last line says what failed first and why, in the project's words (file and fix).
        print("\nOpen the run in the UI for details: ilsvrc-assets ui", file=sys.stderr)
        more = f" (and {len(failed) - 1} more, above)" if len(failed) > 1 else ""
        print(f"ilsvrc-assets: FAILED after {elapsed:.0f} s: {failed[0]}{more}", file=sys.stderr)
        return EXIT_FAILED
    print(f"\nilsvrc-assets: done in {elapsed:.0f} s; every check passed.")
    print(f"  validation tree   {settings.validation_dir}")
    print(f"  bounding boxes    {settings.bounding_boxes_parquet}")
    print(f"                    {settings.bounding_boxes_csv}")
    print(f"  TFRecord shards   {settings.tfrecords_dir}")
    print(f"  manifest          {settings.manifest_json}")
    if "webdataset" in settings.formats:
        print(f"  WebDataset tars   {settings.data_dir / 'webdataset'} (with _info.json and manifest.json)")
    if "imagefolder" in settings.formats:
        print(f"  training tree     {settings.train_dir}")
    if settings.output_url:
        print(
            f"  bucket            {settings.output_url}/... (the same paths, each output's _published.json last)"
        )
    print(f"  history           DAGSTER_HOME={home} dagster dev   (or: ilsvrc-assets ui)")
    return 0


def check(args: argparse.Namespace) -> int:
    """Run every check against the outputs on disk; exit status 1 if one fails (or cannot run)."""
    home = ensure_dagster_home()
    settings = settings_module.load()
    from dagster import DagsterInstance

    from ilsvrc_assets import fileio, junit
    from ilsvrc_assets.definitions import JOB_NAMES, build_definitions

    print(f"ilsvrc-assets: checking the outputs in {settings.data_dir}; Dagster history in {home}")
    started = time.monotonic()
    try:
        # Not while a build writes them: half-written outputs would fail checks they will pass.
        with fileio.exclusive(settings.lock_path("build"), f"the build of {settings.data_dir}"):
            with DagsterInstance.get() as instance:
                result, outcomes = audit(
                    build_definitions(settings), instance, args.log_level, echo=lambda m: print(m, flush=True)
                )
    except fileio.BusyError as e:
        print(f"ilsvrc-assets: not started: {e}", file=sys.stderr)
        return EXIT_BUSY
    elapsed = time.monotonic() - started
    if args.junit_xml:
        path = Path(args.junit_xml).absolute()
        junit.write_report(path, outcomes, JOB_NAMES["audit"], elapsed)
        print(f"ilsvrc-assets: JUnit XML report in {path}")
    bad = [f"{o.asset}:{o.check}" for o in outcomes if not o.passed and not o.warning]
    if bad or not result.success:
        print(
            f"\nilsvrc-assets: {len(bad)} of {len(outcomes)} checks FAILED: {', '.join(bad) or 'none'} "
            f"(run {result.run_id}; open it in the UI: ilsvrc-assets ui)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(f"\nilsvrc-assets: all {len(outcomes)} checks passed in {elapsed:.0f} s.")
    return 0


def sample(args: argparse.Namespace) -> int:
    """Write the built-in sample release to a folder, as a stand-in for the real archives, in the
    official layout or (``--layout``) as another copy has it."""
    import importlib
    import tempfile

    from ilsvrc_assets import sample as sample_module

    dest = Path(args.dest).absolute()
    spec = sample_module.SampleSpec(seed=args.seed)
    if args.layout == "official":
        md5s = sample_module.write_release(dest, spec, progress=print)
        for name, digest in sorted(md5s.items()):
            print(f"{digest}  {name}")
        print(f"Wrote a stand-in ILSVRC2012 release to {dest}. Use it with:")
        print(f"  ILSVRC_SOURCE=local ILSVRC_LOCAL_DIR={dest} ilsvrc-assets build")
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    module_name, source = SAMPLE_LAYOUTS[args.layout]
    layout = importlib.import_module(f"ilsvrc_assets.sample.{module_name}")
    with tempfile.TemporaryDirectory(prefix=".sample-", dir=dest.parent) as official:
        sample_module.write_release(Path(official), spec, progress=print)
        local_dir = layout.write_layout(Path(official), dest, print)
    print(f"Wrote the built-in sample in the {args.layout} layout to {dest}. Use it with:")
    print(f"  ILSVRC_SOURCE={source} ILSVRC_LOCAL_DIR={local_dir} ilsvrc-assets build")
    return 0


def dagster_dev_command(host: str, port: int) -> list[str]:
    """``dagster dev`` on this project's code location, served on ``host:port``.

    ``python -m dagster`` from this interpreter: works whether or not the venv is on PATH.
    """
    return [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-m",
        "ilsvrc_assets.definitions",
        "-h",
        host,
        "-p",
        str(port),
    ]


def ui(args: argparse.Namespace) -> int:
    """Run ``dagster dev`` on this project's instance and code location."""
    home = ensure_dagster_home()
    command = dagster_dev_command(args.host, args.port)
    print(
        f"DAGSTER_HOME={home} dagster dev -m ilsvrc_assets.definitions on http://{args.host}:{args.port}",
        flush=True,
    )
    os.execv(command[0], command)
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ilsvrc-assets", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("build", help="materialise the whole graph, all partitions")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=build)
    p = commands.add_parser(
        "check", help="run every check against the outputs on disk, materialising nothing"
    )
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument(
        "--junit-xml",
        metavar="PATH",
        help="also write the results as a JUnit XML report (one test case per check)",
    )
    p.set_defaults(func=check)
    p = commands.add_parser("sample", help="write the built-in sample release to a folder")
    p.add_argument("dest")
    p.add_argument("--seed", type=int, default=2012)
    p.add_argument(
        "--layout",
        default="official",
        choices=sorted(SAMPLE_LAYOUTS),
        help="the layout of the copy to write: the official archives (default) or another copy's",
    )
    p.set_defaults(func=sample)
    p = commands.add_parser("ui", help="open the Dagster UI (dagster dev) on this project's history")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=ui)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except settings_module.SettingsError as e:
        print(f"ilsvrc-assets: {e}", file=sys.stderr)
        return EXIT_SETTINGS


if __name__ == "__main__":
    sys.exit(main())
