"""Static checks of infra/: the Compose files, the Kubernetes manifests and the work-pool template.

No container engine or cluster runs here, so these tests parse every file
and check what a typo would break: references between services, volumes,
secrets and labels, and the fields that Prefect and Kubernetes require.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
K8S = INFRA / "k8s"

COMPOSE_TOP_LEVEL = {"name", "services", "volumes", "networks", "configs", "secrets"}
REQUIRED_SERVICES = {"postgres", "prefect-server", "prefect-worker", "mlflow", "minio", "dask-scheduler", "dask-worker"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
KNOWN_KINDS = WORKLOAD_KINDS | {
    "Namespace", "Service", "ConfigMap", "Secret", "PersistentVolumeClaim",
    "ServiceAccount", "Role", "RoleBinding",
}


def _load_compose(name: str) -> dict:
    return yaml.safe_load((INFRA / name).read_text())


def _k8s_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def _pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def _containers(doc: dict) -> list[dict]:
    spec = _pod_spec(doc)
    return spec.get("initContainers", []) + spec["containers"]


def _env_names_in_braces(text: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))


# ---------------------------------------------------------------- Compose


def test_compose_has_known_top_level_keys():
    compose = _load_compose("compose.yaml")
    unknown = {key for key in compose if key not in COMPOSE_TOP_LEVEL and not key.startswith("x-")}
    assert not unknown


def test_compose_has_every_service():
    services = _load_compose("compose.yaml")["services"]
    assert REQUIRED_SERVICES <= set(services)


def test_compose_services_have_image_or_build():
    for name, service in _load_compose("compose.yaml")["services"].items():
        assert "image" in service or "build" in service, name


def test_compose_build_context_has_dockerfile():
    for name, service in _load_compose("compose.yaml")["services"].items():
        build = service.get("build")
        if build is None:
            continue
        context = (INFRA / build["context"]).resolve()
        assert (context / build["dockerfile"]).is_file(), name
        assert (context / "pyproject.toml").is_file(), name


def test_compose_depends_on_existing_services():
    services = _load_compose("compose.yaml")["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"


def test_compose_named_volumes_are_declared():
    compose = _load_compose("compose.yaml")
    declared = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (INFRA / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} mounts undeclared volume {source}"


def test_compose_publishes_ports_on_loopback_only():
    for name, service in _load_compose("compose.yaml")["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"


def test_compose_variables_are_in_env_example():
    text = (INFRA / "compose.yaml").read_text()
    example = (INFRA / ".env.example").read_text()
    defined = {line.split("=", 1)[0] for line in example.splitlines() if "=" in line and not line.startswith("#")}
    assert _env_names_in_braces(text) <= defined


def test_compose_prefect_server_uses_postgres():
    server = _load_compose("compose.yaml")["services"]["prefect-server"]
    url = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://")
    assert "@postgres:5432/prefect" in url
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_mlflow_uses_postgres_and_s3():
    command = _load_compose("compose.yaml")["services"]["mlflow"]["command"]
    store = command[command.index("--backend-store-uri") + 1]
    artifacts = command[command.index("--artifacts-destination") + 1]
    assert store.startswith("postgresql+psycopg2://")
    assert store.endswith("@postgres:5432/mlflow")
    assert artifacts.startswith("s3://")


def test_compose_worker_is_process_worker():
    worker = _load_compose("compose.yaml")["services"]["prefect-worker"]
    command = worker["command"]
    assert command[:3] == ["prefect", "worker", "start"]
    assert command[command.index("--type") + 1] == "process"
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_compose_worker_and_dask_share_workdir():
    services = _load_compose("compose.yaml")["services"]
    for name in ("prefect-worker", "dask-worker"):
        assert "mars-work:/mars-work" in services[name]["volumes"], name
        assert services[name]["environment"]["PREFECT_RESULTS_LOCAL_STORAGE_PATH"].startswith("/mars-work/")


def test_postgres_init_creates_mlflow_database():
    sql = (INFRA / "postgres" / "init-databases.sql").read_text()
    assert "CREATE DATABASE mlflow" in sql


def test_gpu_overlay_targets_existing_services():
    services = _load_compose("compose.yaml")["services"]
    overlay = _load_compose("compose.gpu.yaml")["services"]
    assert set(overlay) <= set(services)
    devices = overlay["prefect-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]


# ---------------------------------------------------------------- Kubernetes manifests


def test_k8s_documents_have_required_fields():
    docs = _k8s_documents()
    assert docs
    for filename, doc in docs:
        assert doc.get("apiVersion"), filename
        assert doc.get("kind") in KNOWN_KINDS, f"{filename}: kind {doc.get('kind')}"
        assert doc.get("metadata", {}).get("name"), filename


def test_k8s_names_are_unique_per_kind():
    seen = set()
    for filename, doc in _k8s_documents():
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"{filename}: duplicate {key}"
        seen.add(key)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secrets.example.yaml"}
    assert listed == on_disk
    generated = kustomization["configMapGenerator"][0]
    for file in generated["files"]:
        assert (K8S / file).is_file()


def test_k8s_workloads_have_containers_with_images():
    for filename, doc in _k8s_documents():
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        for container in _containers(doc):
            assert container.get("name"), filename
            assert container.get("image"), f"{filename}: {container.get('name')}"


def test_k8s_selectors_match_pod_labels():
    for filename, doc in _k8s_documents():
        if doc["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        selector = doc["spec"]["selector"]["matchLabels"]
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"{filename}: {doc['metadata']['name']}"


def test_k8s_services_select_a_workload():
    docs = _k8s_documents()
    pod_labels = [
        doc["spec"]["template"]["metadata"].get("labels", {})
        for _, doc in docs
        if doc["kind"] in {"Deployment", "StatefulSet"}
    ]
    for filename, doc in docs:
        if doc["kind"] != "Service":
            continue
        selector = doc["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), f"{filename}: {doc['metadata']['name']}"


def test_k8s_secret_keys_exist_in_example():
    example = yaml.safe_load((K8S / "secrets.example.yaml").read_text())
    keys = set(example["stringData"])
    for filename, doc in _k8s_documents():
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        for container in _containers(doc):
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == example["metadata"]["name"], filename
                    assert ref["key"] in keys, f"{filename}: {ref['key']}"


def test_k8s_volume_claims_and_config_maps_exist():
    docs = _k8s_documents()
    claims = {doc["metadata"]["name"] for _, doc in docs if doc["kind"] == "PersistentVolumeClaim"}
    config_maps = {doc["metadata"]["name"] for _, doc in docs if doc["kind"] == "ConfigMap"}
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    config_maps |= {generator["name"] for generator in kustomization["configMapGenerator"]}
    for filename, doc in docs:
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        for volume in _pod_spec(doc).get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, filename
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, filename


def test_k8s_workdir_claim_is_read_write_many():
    claims = {doc["metadata"]["name"]: doc for _, doc in _k8s_documents() if doc["kind"] == "PersistentVolumeClaim"}
    assert claims["mars-work"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_k8s_worker_uses_gpu_work_pool_template():
    (worker,) = [
        doc for _, doc in _k8s_documents() if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "prefect-worker"
    ]
    command = worker["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--type") + 1] == "kubernetes"
    assert command[command.index("--base-job-template") + 1] == "/etc/mars/work-pool-gpu.json"


def test_k8s_worker_role_can_manage_jobs():
    (role,) = [doc for _, doc in _k8s_documents() if doc["kind"] == "Role"]
    job_rules = [rule for rule in role["rules"] if "jobs" in rule["resources"]]
    assert job_rules
    assert {"create", "delete", "watch"} <= set(job_rules[0]["verbs"])


# ---------------------------------------------------------------- the GPU work-pool template


def _work_pool_template() -> dict:
    return json.loads((K8S / "work-pool-gpu.json").read_text())


def _render_with_defaults(template: dict) -> dict:
    from prefect.utilities.templating import apply_values

    values = {
        name: schema["default"] for name, schema in template["variables"]["properties"].items() if "default" in schema
    }
    values.update(env={"MARS_EXAMPLE": "1"}, labels={"app": "mars"}, name="mars-run")
    return apply_values(template["job_configuration"], values)


def test_work_pool_template_declares_every_placeholder():
    from prefect.server.schemas.actions import validate_base_job_template

    validate_base_job_template(_work_pool_template())


def test_work_pool_template_requests_a_gpu():
    manifest = _render_with_defaults(_work_pool_template())["job_manifest"]
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    tolerations = manifest["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


@pytest.mark.parametrize(
    "path",
    [
        ("apiVersion",),
        ("kind",),
        ("metadata",),
        ("spec", "template", "spec", "parallelism"),
        ("spec", "template", "spec", "completions"),
        ("spec", "template", "spec", "restartPolicy"),
        ("spec", "template", "spec", "containers"),
    ],
)
def test_work_pool_manifest_has_job_field(path):
    # prefect-kubernetes 0.8 rejects a job manifest without these fields.
    node = _work_pool_template()["job_configuration"]["job_manifest"]
    for key in path:
        assert key in node, "/".join(path)
        node = node[key]


def test_work_pool_manifest_is_a_job_mounting_workdir():
    manifest = _render_with_defaults(_work_pool_template())["job_manifest"]
    assert manifest["apiVersion"] == "batch/v1"
    assert manifest["kind"] == "Job"
    pod = manifest["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "mars-work"
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == "/mars-work"


# ---------------------------------------------------------------- image and README


def test_dockerfile_installs_team_extra():
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert 'pip install ".[team]"' in dockerfile


def test_readme_says_how_to_point_mars_at_servers():
    readme = (INFRA / "README.md").read_text()
    for needle in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "docker compose", "kubectl apply -k", "mars deploy"):
        assert needle in readme, needle
