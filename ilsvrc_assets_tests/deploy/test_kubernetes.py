"""The Kubernetes deployment in ``deploy/k8s``: the Helm values, the data volume and the pod sizes
of the heavy jobs pass Dagster's own schemas and parsing, and fit together.

There is no cluster here. What the chart would render from ``values.yaml`` into the instance's
``dagster.yaml`` and into the code server's container context is mirrored by the small functions
below (after the chart's templates ``helpers/instance/_run-launcher.tpl``,
``_run-coordinator.tpl`` and the user-deployments ``k8sContainerContext`` helper); Dagster's config
schemas judge the result, and dagster-k8s builds the Kubernetes Job it would submit for a run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from dagster._config import process_config
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.utils import make_new_run_id
from dagster_k8s import K8sRunLauncher
from dagster_k8s.job import (
    USER_DEFINED_K8S_CONFIG_KEY,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)

from ilsvrc_assets import release
from ilsvrc_assets import settings as settings_module
from ilsvrc_assets.definitions import JOB_NAMES, build_definitions
from ilsvrc_assets.defs import kubernetes

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "k8s"
# The README installs the release "ilsvrc" into the namespace "ilsvrc"; the chart names its objects
# "<release>-dagster" and keeps the PostgreSQL password in this secret by default.
RELEASE_NAMESPACE = "ilsvrc"
FULLNAME = "ilsvrc-dagster"
DAGSTER_HOME = "/opt/dagster/dagster_home"
POSTGRES_SECRET = "dagster-postgresql-secret"

# The fields the chart's values.schema.json knows in the sections set here: helm rejects any other
# key in the run launcher and run queue sections and silently ignores one in the others (a typo).
CHART_FIELDS = {
    "k8sRunLauncher": {
        "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile",
        "envConfigMaps", "envSecrets", "envVars", "volumeMounts", "volumes", "labels",
        "failPodOnRunFailure", "resources", "schedulerName", "securityContext", "runK8sConfig",
    },
    "userDeployment": {
        "name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns",
        "deploymentNamespace", "port", "env", "envConfigMaps", "envSecrets", "annotations",
        "nodeSelector", "affinity", "tolerations", "podSecurityContext", "securityContext",
        "resources", "livenessProbe", "readinessProbe", "startupProbe", "labels", "volumeMounts",
        "volumes", "schedulerName", "initContainers", "sidecarContainers",
    },
    "queuedRunCoordinator": {
        "maxConcurrentRuns", "tagConcurrencyLimits", "dequeueIntervalSeconds", "dequeueNumWorkers",
        "dequeueUseThreads", "blockOpConcurrencyLimitedRuns",
    },
    "postgresql": {
        "image", "enabled", "postgresqlHost", "postgresqlUsername", "postgresqlPassword",
        "postgresqlDatabase", "postgresqlParams", "postgresqlScheme", "service",
    },
}  # fmt: skip
HEAVY_JOBS = (JOB_NAMES["train"], JOB_NAMES["validation"], JOB_NAMES["manifest"])


def load_documents(path: Path) -> list:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


@pytest.fixture(scope="module")
def values() -> dict:
    (doc,) = load_documents(DEPLOY / "values.yaml")
    return doc


@pytest.fixture(scope="module")
def data_volume() -> dict:
    (doc,) = load_documents(DEPLOY / "data-volume.yaml")
    return doc


def code_location(values: dict) -> dict:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


def code_location_env(values: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in code_location(values)["env"]}


def run_launcher_config(values: dict) -> dict:
    """The ``run_launcher.config`` the chart renders into dagster.yaml from ``runLauncher``."""
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    k8s = launcher["config"]["k8sRunLauncher"]
    config = {
        "load_incluster_config": k8s["loadInclusterConfig"],
        "job_namespace": k8s.get("jobNamespace") or RELEASE_NAMESPACE,
        "image_pull_policy": k8s["imagePullPolicy"],
        "service_account_name": FULLNAME,
        "dagster_home": DAGSTER_HOME,
        "instance_config_map": f"{FULLNAME}-instance",
        "postgres_password_secret": POSTGRES_SECRET,
    }
    if k8s.get("kubeconfigFile"):
        config["kubeconfig_file"] = k8s["kubeconfigFile"]
    if "image" in k8s:
        config["job_image"] = f"{k8s['image']['repository']}:{k8s['image']['tag']}"
    if k8s.get("envConfigMaps"):
        config["env_config_maps"] = [m["name"] for m in k8s["envConfigMaps"] if "name" in m]
    if k8s.get("envSecrets"):
        config["env_secrets"] = [s["name"] for s in k8s["envSecrets"] if "name" in s]
    for value_key, config_key in (
        ("envVars", "env_vars"),
        ("volumeMounts", "volume_mounts"),
        ("volumes", "volumes"),
        ("labels", "labels"),
        ("resources", "resources"),
        ("schedulerName", "scheduler_name"),
        ("securityContext", "security_context"),
    ):
        if k8s.get(value_key):
            config[config_key] = k8s[value_key]
    if k8s.get("failPodOnRunFailure"):
        config["fail_pod_on_run_failure"] = True
    if k8s.get("runK8sConfig"):
        config["run_k8s_config"] = {
            re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), key): value
            for key, value in k8s["runK8sConfig"].items()
            if value
        }
    return config


def run_coordinator_config(values: dict) -> dict:
    """The ``run_coordinator.config`` the chart renders from ``dagsterDaemon.runCoordinator``."""
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"
    queued = coordinator["config"]["queuedRunCoordinator"]
    config = {"max_concurrent_runs": queued.get("maxConcurrentRuns", -1)}
    for value_key, config_key in (
        ("tagConcurrencyLimits", "tag_concurrency_limits"),
        ("dequeueIntervalSeconds", "dequeue_interval_seconds"),
        ("dequeueUseThreads", "dequeue_use_threads"),
        ("dequeueNumWorkers", "dequeue_num_workers"),
    ):
        if queued.get(value_key):
            config[config_key] = queued[value_key]
    return config


def code_location_container_context(values: dict) -> dict:
    """What the code server passes to every run it launches (``includeConfigInLaunchedRuns``)."""
    deployment = code_location(values)
    assert deployment.get("includeConfigInLaunchedRuns", {"enabled": True})["enabled"]
    k8s = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [
            f"{FULLNAME}-{deployment['name']}-user-env",
            *(m["name"] for m in deployment.get("envConfigMaps", []) if "name" in m),
        ],
        "namespace": RELEASE_NAMESPACE,
        "service_account_name": f"{FULLNAME}-user-deployments",
        "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
    }
    if deployment.get("envSecrets"):
        k8s["env_secrets"] = [s["name"] for s in deployment["envSecrets"] if "name" in s]
    for key, context_key in (
        ("volumeMounts", "volume_mounts"),
        ("volumes", "volumes"),
        ("labels", "labels"),
        ("resources", "resources"),
    ):
        if deployment.get(key):
            k8s[context_key] = deployment[key]
    if isinstance(deployment.get("env"), list):
        k8s["env"] = deployment["env"]
    return {"k8s": k8s}


def code_location_image(values: dict) -> str:
    image = code_location(values)["image"]
    return f"{image['repository']}:{image['tag']}"


def settings_of(values: dict, tmp_path: Path):
    """The settings the code server resolves from its env (data folder moved under tmp_path)."""
    env = code_location_env(values)
    env[settings_module.ENV_DATA_DIR] = str(tmp_path / "data")
    return settings_module.load(env)


def run_pod(values: dict, tmp_path: Path, job_name: str, run_tags: dict[str, str]):
    """The Kubernetes Job dagster-k8s would create for a run of ``job_name`` with ``run_tags``.

    The run launcher is built from the rendered config by dagster-k8s itself (with a kubeconfig
    file in place of the in-cluster credentials it would use in a pod); the run carries the code
    server's container context, as a run launched from the UI or the daemon does.
    """
    config = process_config(K8sRunLauncher.config_type(), run_launcher_config(values))
    assert config.success, config.errors
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    launcher = K8sRunLauncher.from_config_value(
        None, {**config.value, "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    )
    origin = JobPythonOrigin(
        job_name,
        RepositoryPythonOrigin(
            executable_path=sys.executable,
            code_pointer=ModuleCodePointer("ilsvrc_assets.definitions", "defs", None),
            container_image=code_location_image(values),
            container_context=code_location_container_context(values),
        ),
    )
    run = DagsterRun(job_name=job_name, run_id=make_new_run_id(), tags=run_tags, job_code_origin=origin)
    context = launcher.get_container_context_for_run(run)
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(job_image=code_location_image(values), run_launcher=launcher),
        args=["dagster", "api", "execute_run", "{}"],
        job_name=f"dagster-run-{run.run_id}",
        user_defined_k8s_config=context.run_k8s_config,
        component="run_worker",
    )
    return context.namespace, job


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes quantity such as ``400Gi`` or ``16G`` in bytes."""
    number, unit = re.fullmatch(r"(\d+)([KMGT]i?)?", quantity).groups()
    powers = {"K": 1, "M": 2, "G": 3, "T": 4}
    if not unit:
        return int(number)
    base = 1024 if unit.endswith("i") else 1000
    return int(number) * base ** powers[unit[0]]


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("*.yaml")), ids=lambda p: p.name)
def test_every_yaml_file_loads(path: Path):
    documents = load_documents(path)
    assert documents, f"{path} holds no YAML document"
    assert all(isinstance(doc, dict) for doc in documents), f"{path}: every document should be a mapping"


def test_values_use_only_the_charts_fields(values: dict):
    sections = {
        "k8sRunLauncher": values["runLauncher"]["config"]["k8sRunLauncher"],
        "userDeployment": code_location(values),
        "queuedRunCoordinator": values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"],
        "postgresql": values["postgresql"],
    }
    for name, section in sections.items():
        assert set(section) <= CHART_FIELDS[name], (
            f"{name}: not in the chart: {set(section) - CHART_FIELDS[name]}"
        )


def test_run_launcher_config_passes_dagsters_schema(values: dict):
    config = run_launcher_config(values)
    result = process_config(K8sRunLauncher.config_type(), config)
    assert result.success, result.errors
    assert result.value["job_namespace"] == RELEASE_NAMESPACE
    assert {v["name"] for v in result.value["volumes"]} == {"ilsvrc-data"}


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda k8s: k8s["volumeMounts"][0].pop("name"), id="mount-without-volume-name"),
        pytest.param(lambda k8s: k8s.__setitem__("resources", "16Gi"), id="resources-not-a-mapping"),
        pytest.param(
            lambda k8s: k8s.__setitem__("envVars", "ILSVRC_DATA_DIR=/data"), id="env-vars-not-a-list"
        ),
        pytest.param(lambda k8s: k8s.__setitem__("loadInclusterConfig", "yes"), id="flag-not-a-boolean"),
    ],
)
def test_broken_run_launcher_config_fails_dagsters_schema(values: dict, damage):
    broken = copy.deepcopy(values)
    damage(broken["runLauncher"]["config"]["k8sRunLauncher"])
    assert not process_config(K8sRunLauncher.config_type(), run_launcher_config(broken)).success


def test_run_queue_passes_dagsters_schema_and_matches_the_worked_example(values: dict):
    result = process_config(QueuedRunCoordinator.config_type(), run_coordinator_config(values))
    assert result.success, result.errors
    assert result.value["max_concurrent_runs"] == 8  # one run pod on each of the README's 8 machines

    broken = copy.deepcopy(values)
    broken["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["maxConcurrentRuns"] = "eight"
    assert not process_config(QueuedRunCoordinator.config_type(), run_coordinator_config(broken)).success


def test_heavy_jobs_request_a_core_per_worker_and_a_gib_per_worker_plus_two(values: dict, tmp_path: Path):
    assert kubernetes.K8S_CONFIG_TAG == USER_DEFINED_K8S_CONFIG_KEY
    for workers in (2, int(code_location_env(values)["ILSVRC_WORKERS"])):
        settings = dataclasses.replace(settings_of(values, tmp_path), workers=workers)
        definitions = build_definitions(settings)
        for job_name in HEAVY_JOBS:
            tags = definitions.resolve_job_def(job_name).run_tags
            parsed = get_user_defined_k8s_config(tags)  # dagster-k8s's own parsing and validation
            memory = f"{workers + 2}Gi"
            assert parsed.container_config["resources"] == {
                "requests": {"cpu": str(workers), "memory": memory},
                "limits": {"memory": memory},
            }, job_name
        # The other jobs run in the run launcher's default pod.
        for job_name in (JOB_NAMES["inputs"], JOB_NAMES["audit"]):
            assert USER_DEFINED_K8S_CONFIG_KEY not in definitions.resolve_job_def(job_name).run_tags


def test_a_broken_pod_size_tag_fails_dagster_k8s_parsing():
    tags = {USER_DEFINED_K8S_CONFIG_KEY: json.dumps({"container_config": {"resources": "16Gi"}})}
    with pytest.raises(Exception, match="resources"):
        get_user_defined_k8s_config(tags)


def test_a_shard_run_pod_gets_its_size_the_data_volume_and_the_settings(
    values: dict, data_volume: dict, tmp_path: Path
):
    settings = settings_of(values, tmp_path)
    job_def = build_definitions(settings).resolve_job_def(JOB_NAMES["train"])
    namespace, job = run_pod(values, tmp_path, JOB_NAMES["train"], dict(job_def.run_tags))
    pod = job.spec.template.spec
    (container,) = pod.containers
    workers = settings.workers
    assert container.resources.requests == {"cpu": str(workers), "memory": f"{workers + 2}Gi"}
    assert container.resources.limits == {"memory": f"{workers + 2}Gi"}
    assert container.image == code_location_image(values)
    # The data volume once (the code location's and the launcher's copies are the same volume).
    claim = data_volume["metadata"]["name"]
    assert [(v.name, v.persistent_volume_claim.claim_name) for v in pod.volumes] == [("ilsvrc-data", claim)]
    assert [(m.name, m.mount_path) for m in container.volume_mounts] == [("ilsvrc-data", "/data")]
    assert namespace == data_volume["metadata"]["namespace"] == RELEASE_NAMESPACE
    env = [(e.name, e.value) for e in container.env]
    assert [value for name, value in env if name == "ILSVRC_DATA_DIR"] == ["/data"]
    assert dict(env)["ILSVRC_WORKERS"] == str(workers)
    for name, value in code_location_env(values).items():  # every setting reaches the run pod
        assert (name, value) in env


def test_a_run_without_its_own_tag_gets_the_launchers_default_size(values: dict, tmp_path: Path):
    _, job = run_pod(values, tmp_path, JOB_NAMES["inputs"], {})
    (container,) = job.spec.template.spec.containers
    workers = int(code_location_env(values)["ILSVRC_WORKERS"])
    expected = kubernetes.run_resources(workers)
    assert container.resources.requests == expected["requests"]
    assert container.resources.limits == expected["limits"]


def test_data_volume_is_shared_mounted_at_the_data_dir_and_large_enough(values: dict, data_volume: dict):
    assert data_volume["kind"] == "PersistentVolumeClaim"
    assert data_volume["spec"]["accessModes"] == ["ReadWriteMany"]
    claim = data_volume["metadata"]["name"]
    env = code_location_env(values)
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert launcher["jobNamespace"] == data_volume["metadata"]["namespace"]
    assert f"ILSVRC_DATA_DIR={env['ILSVRC_DATA_DIR']}" in launcher["envVars"]
    for where, pod in (("code location", code_location(values)), ("run launcher", launcher)):
        volumes = {v["name"]: v for v in pod["volumes"]}
        (mount,) = [
            m
            for m in pod["volumeMounts"]
            if volumes[m["name"]]["persistentVolumeClaim"]["claimName"] == claim
        ]
        for setting in ("ILSVRC_DATA_DIR", "ILSVRC_LOCAL_DIR"):
            path = Path(env[setting])
            assert path == Path(mount["mountPath"]) or Path(mount["mountPath"]) in path.parents, (
                where,
                setting,
            )
    # The archives, the validation tree (a copy of the validation images) and the shards (a copy of
    # every image), with a tenth to spare.
    archives = sum(a.size or 0 for a in release.ARCHIVES)
    needed = archives + release.IMG_VAL.size + (release.IMG_TRAIN.size + release.IMG_VAL.size)
    assert quantity_bytes(data_volume["spec"]["resources"]["requests"]["storage"]) >= needed * 1.1


def test_image_serves_the_code_location_with_dagsters_postgres_and_k8s_libraries(values: dict):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert code_location(values)["codeServerArgs"] == ["-m", pyproject["tool"]["dagster"]["module_name"]]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM python:(\d+\.\d+)", dockerfile, re.MULTILINE)
    assert pyproject["project"]["requires-python"] == f">={base},<3.{int(base.split('.')[1]) + 1}"
    (extras,) = re.findall(r'pip install "\.\[([a-z0-9,]+)\]"', dockerfile)
    extras = set(extras.split(","))
    assert {"postgres", "k8s"} <= extras
    needed = {"postgres": "dagster-postgres", "k8s": "dagster-k8s"}
    for extra, package in needed.items():
        assert any(dep.startswith(package) for dep in pyproject["project"]["optional-dependencies"][extra])
    # The build context is cut down to what the Dockerfile copies (never data/ or .venv/).
    ignore = [
        line for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines() if line[:1] not in "#"
    ]
    assert ignore[0] == "*"
    for copy_line in re.findall(r"^COPY (.+)$", dockerfile, re.MULTILINE):
        for source in copy_line.split()[:-1]:
            assert f"!{source}" in ignore or f"!{source}/" in ignore, source


def test_readme_states_the_pod_size_of_the_worked_example(values: dict):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Beyond one machine: Kubernetes", 1)[1].split("\n## ", 1)[0]
    workers = int(code_location_env(values)["ILSVRC_WORKERS"])
    resources = kubernetes.run_resources(workers)
    memory_gib = resources["requests"]["memory"].removesuffix("Gi")
    assert f"{resources['requests']['cpu']} cores and {memory_gib} GiB" in section
    assert f"ILSVRC_WORKERS={workers}" in section
    assert f"ILSVRC_PARTITIONS_PER_RUN={code_location_env(values)['ILSVRC_PARTITIONS_PER_RUN']}" in section


def test_postgres_storage_names_the_driver_dagster_postgres_installs(values: dict):
    # As in the production profile (deploy/profiles/production/dagster.yaml): without it,
    # SQLAlchemy 2.1 takes postgresql:// to mean psycopg 3, which dagster-postgres does not install.
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    production = yaml.safe_load((ROOT / "deploy" / "profiles" / "production" / "dagster.yaml").read_text())
    assert (
        production["storage"]["postgres"]["postgres_db"]["scheme"] == values["postgresql"]["postgresqlScheme"]
    )
