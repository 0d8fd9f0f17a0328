"""Right-sized pods for the heavy runs on Kubernetes: the ``dagster-k8s/config`` run tag.

Under Dagster's ``K8sRunLauncher`` (``deploy/k8s/values.yaml``) every run is a pod of its own,
and this tag on a job sets that pod's container resources. A shard run or the manifest run is one
process with a pool of ``ILSVRC_WORKERS`` worker processes, so it asks for one core per worker and
memory for the pool plus the run itself. Other run launchers (the local default) ignore the tag.
"""

import json

from ilsvrc_assets.settings import Settings

# The tag dagster-k8s reads (``dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY``), spelled out so the
# code location does not need dagster-k8s installed.
K8S_CONFIG_TAG = "dagster-k8s/config"
# The run process: Dagster, the image index and the shard plan of a whole split (about 1 GB for
# the 1,281,167 training images), with room to spare.
BASE_MEMORY_GIB = 2
# One worker process: TensorFlow (about 0.7 GB resident, measured) and the image at hand.
MEMORY_PER_WORKER_GIB = 1


def run_resources(workers: int) -> dict[str, dict[str, str]]:
    """Container resources of a run with ``workers`` worker processes.

    A core per worker, and memory requested and limited alike: a run that outgrows the estimate
    fails on its own rather than starving the other pods on its node. No CPU limit, so the run
    process and its pool are never throttled below what the node has spare.
    """
    memory = f"{BASE_MEMORY_GIB + MEMORY_PER_WORKER_GIB * workers}Gi"
    return {"requests": {"cpu": str(workers), "memory": memory}, "limits": {"memory": memory}}


def run_tags(settings: Settings) -> dict[str, str]:
    """The ``dagster-k8s/config`` tag of a run that writes or reads back shards with
    ``settings.workers`` workers (the code server and the run pods share ``ILSVRC_WORKERS``)."""
    return {K8S_CONFIG_TAG: json.dumps({"container_config": {"resources": run_resources(settings.workers)}})}
