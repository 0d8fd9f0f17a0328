"""The ``record_workers`` resource: the worker processes that write and read the shards.

By default each step that needs them (the shard partitions' step, the manifest and its checks)
has a pool of ``ILSVRC_WORKERS`` processes of its own, closed when the step ends (so a step process
never waits at exit for idle workers). Its workers start with the first task, or when the asset
calls ``record_workers.start()``: the shard asset does so first thing, so they load TensorFlow while
it plans; an audit that finds every shard unchanged starts none. ``ilsvrc-assets build`` instead passes its own pool, already
started, which every run of the build then shares:

    with RecordWorkers(settings.workers) as workers:
        definitions = build_definitions(settings, record_workers=workers)

An asset or check takes it as a parameter, ``record_workers: ResourceParam[RecordWorkers]``.
"""

from collections.abc import Iterator

from dagster import InitResourceContext, ResourceDefinition, resource

from ilsvrc_assets.record_workers import RecordWorkers


@resource(
    required_resource_keys={"ilsvrc"},
    description="Worker processes that write and read the TFRecord shards (ILSVRC_WORKERS of them), "
    "started when first needed and stopped when the step ends.",
)
def step_record_workers(context: InitResourceContext) -> Iterator[RecordWorkers]:
    """A pool for this step alone, of the ``ilsvrc`` resource's number of workers."""
    with RecordWorkers(context.resources.ilsvrc.settings().workers, eager=False) as workers:
        yield workers


def record_workers_resource(shared: RecordWorkers | None = None) -> ResourceDefinition | RecordWorkers:
    """The ``record_workers`` resource: each step's own pool, or ``shared``, a pool the caller holds
    open across several runs (the CLI's build), passed as it is (Dagster neither starts nor stops it)."""
    return shared if shared is not None else step_record_workers
