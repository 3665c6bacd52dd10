"""The deployment files are checked with Ray's own validators (no cluster is started)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
SERVE_CONFIG = ROOT / "deploy" / "serve_config.yaml"
RAYSERVICE = ROOT / "deploy" / "kuberay-rayservice.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "facepass-dashboard.json"
METRICS_PY = ROOT / "actors" / "metrics.py"

IMPORT_PATH = "serve_app:app"


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(CLUSTER_YAML.read_text())
    return config


def _rayservice() -> dict[str, Any]:
    docs = [doc for doc in yaml.safe_load_all(RAYSERVICE.read_text()) if doc]
    services = [doc for doc in docs if doc.get("kind") == "RayService"]
    assert len(services) == 1, [doc.get("kind") for doc in docs]
    service: dict[str, Any] = services[0]
    return service


def _head_and_workers(config: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = [spec for name, spec in types.items() if name != config["head_node_type"]]
    return head, workers


def test_cluster_yaml_passes_ray_validation(cluster: dict[str, Any]) -> None:
    validate_config(copy.deepcopy(cluster))
    # What `ray up` does: merge the provider's defaults, then validate again.
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_cluster_yaml_has_cpu_head_and_gpu_workers(cluster: dict[str, Any]) -> None:
    head, workers = _head_and_workers(cluster)
    assert head["resources"].get("CPU", 0) > 0
    assert head["resources"].get("GPU", 0) == 0
    gpu_workers = [w for w in workers if w["resources"].get("GPU", 0) >= 1]
    assert gpu_workers, "no worker node type with a GPU"
    for worker in gpu_workers:
        assert worker.get("min_workers", 0) == 0
        assert worker["max_workers"] >= 1


def test_cluster_yaml_installs_and_starts_the_app(cluster: dict[str, Any]) -> None:
    assert cluster["file_mounts"]["~/facepass"] == "."
    setup = "\n".join(cluster["setup_commands"])
    assert "uv sync --frozen" in setup
    for name in (
        "FACEPASS_CLOUD_DSN",
        "FACEPASS_LOCAL_DSN",
        "FACEPASS_STORAGE_URL",
        "FACEPASS_GPUS_PER_ACTOR=1",
        "FACEPASS_POOL_MAX_ACTORS",
        "FACEPASS_HTTP_HOST=0.0.0.0",
    ):
        assert name in setup, name
    head_start = "\n".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # reached through `ray dashboard` (a tunnel)
    assert "--metrics-export-port=8080" in head_start
    assert "serve deploy deploy/serve_config.yaml" in head_start
    # The migrations are their own step, before the app (which only checks the revision).
    assert head_start.index("python -m jobs.migrate &&") < head_start.index("serve deploy")
    worker_start = "\n".join(cluster["worker_start_ray_commands"])
    assert "$RAY_HEAD_IP" in worker_start
    assert "--metrics-export-port=8080" in worker_start


def _check_serve_config(config: dict[str, Any]) -> ServeDeploySchema:
    schema = ServeDeploySchema.model_validate(config)
    assert [app.import_path for app in schema.applications] == [IMPORT_PATH]
    app = schema.applications[0]
    assert app.route_prefix == "/"
    assert [d.name for d in app.deployments] == ["FacePassIngress"]
    return schema


def test_serve_config_passes_serve_schema() -> None:
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    schema = _check_serve_config(config)
    assert schema.http_options.host == "0.0.0.0"
    assert schema.http_options.port == 8000


def test_rayservice_embeds_the_same_application() -> None:
    service = _rayservice()
    assert service["apiVersion"] == "ray.io/v1"
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    _check_serve_config(serve_config)
    assert serve_config["applications"] == yaml.safe_load(SERVE_CONFIG.read_text())["applications"]


def test_rayservice_has_cpu_head_and_gpu_worker_group() -> None:
    cluster_spec = _rayservice()["spec"]["rayClusterConfig"]
    head = cluster_spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head.get("resources", {}).get("limits", {})
    gpu_groups = [
        group
        for group in cluster_spec["workerGroupSpecs"]
        if group["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu") == 1
    ]
    assert gpu_groups, "no worker group with nvidia.com/gpu: 1"
    for container in [head, *(g["template"]["spec"]["containers"][0] for g in gpu_groups)]:
        configs = [
            ref["configMapRef"]["name"] for ref in container.get("envFrom", []) if "configMapRef" in ref
        ]
        assert configs, f"{container['name']} takes its settings from no ConfigMap"


def _metric_names() -> list[str]:
    names = sorted(set(re.findall(r'"(facepass_[a-z0-9_]+)"', METRICS_PY.read_text())))
    assert names, "no metric names found in actors/metrics.py"
    return names


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if "expr" in t)
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return exprs


def test_dashboard_is_valid_json_with_a_prometheus_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = dashboard["templating"]["list"]
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in variables)
    assert dashboard["schemaVersion"] >= 36


@pytest.mark.parametrize("name", _metric_names())
def test_dashboard_shows_every_metric(name: str) -> None:
    pattern = re.compile(rf"\bray_{name}(_bucket|_sum|_count)?\b")
    assert any(pattern.search(expr) for expr in _dashboard_exprs()), f"ray_{name} is in no panel"


# --- the API key: from a secret or the environment, never a literal in the repository -------------
_KEY_LITERAL = re.compile(r"FACEPASS_API_KEY\s*[:=]\s*['\"]?(?![\"']?\$\()[A-Za-z0-9_\-]{6,}")


@pytest.mark.parametrize("path", [CLUSTER_YAML, SERVE_CONFIG, RAYSERVICE])
def test_no_api_key_literal_in_deploy_files(path: Path) -> None:
    text = path.read_text()
    assert "FACEPASS_API_KEY" in text, f"{path.name} does not say where the API key comes from"
    assert not _KEY_LITERAL.search(text), _KEY_LITERAL.search(text)


SECRETS = ("API_KEY", "CLOUD_DSN", "LOCAL_DSN")  # each read from FACEPASS_<NAME>_FILE


def test_cluster_yaml_reads_every_secret_from_a_file_outside_the_repo(cluster: dict[str, Any]) -> None:
    mounts = cluster["file_mounts"]
    secret_dirs = [remote for remote, local in mounts.items() if local != "." and "secret" in remote]
    assert secret_dirs, mounts
    assert not mounts[secret_dirs[0]].startswith((".", "/work")), "the secret must come from outside the repo"
    setup = "\n".join(cluster["setup_commands"])
    for name in SECRETS:
        folder = secret_dirs[0].replace("~", "$HOME")
        assert f'FACEPASS_{name}_FILE="{folder}/{name.lower()}"' in setup, name
        assert not re.search(rf"FACEPASS_{name}=", setup), f"FACEPASS_{name} is set in the environment"
    # Serve listens on every interface there: the key is what keeps the routes closed.
    assert "FACEPASS_HTTP_HOST=0.0.0.0" in setup


def test_cluster_yaml_runs_ray_with_token_auth_on_every_node(cluster: dict[str, Any]) -> None:
    """Ray's control plane (dashboard, Jobs API, GCS) refuses callers without the token: the
    environment every `ray start` loads sets token mode and a token from the secrets folder."""
    setup = "\n".join(cluster["setup_commands"])
    assert "RAY_AUTH_MODE=token" in setup
    assert 'RAY_AUTH_TOKEN_PATH="$HOME/.facepass-secrets/ray_token"' in setup
    assert "~/.facepass-secrets" in cluster["file_mounts"]
    for commands in ("head_start_ray_commands", "worker_start_ray_commands"):
        for command in cluster[commands]:
            if "ray start" in command:
                assert command.lstrip().startswith("set -a; . ~/facepass.env; set +a;"), command
    assert "--dashboard-host=0.0.0.0" not in "\n".join(cluster["head_start_ray_commands"])


def test_serve_config_sets_no_secret_in_its_runtime_env() -> None:
    """Ray lists a runtime env's env_vars: a secret's file path may go there, never the secret."""
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    text = SERVE_CONFIG.read_text()
    for name in SECRETS:
        assert not re.search(rf"FACEPASS_{name}\s*:", text), f"FACEPASS_{name} set in {SERVE_CONFIG.name}"
        for app in config["applications"]:
            assert f"FACEPASS_{name}" not in (app.get("runtime_env") or {}).get("env_vars", {})


def _rayservice_containers() -> list[dict[str, Any]]:
    cluster_spec = _rayservice()["spec"]["rayClusterConfig"]
    pods = [cluster_spec["headGroupSpec"]["template"]]
    pods += [group["template"] for group in cluster_spec["workerGroupSpecs"]]
    return [{**pod["spec"]["containers"][0], "pod": pod} for pod in pods]


def test_rayservice_mounts_its_secrets_as_files_from_a_secret_it_does_not_define() -> None:
    """Every pod reads the API key and both DSNs from files of a mounted Secret created by hand
    (not in the repo); no secret is a pod environment variable (every Ray process inherits those)."""
    documents = [doc for doc in yaml.safe_load_all(RAYSERVICE.read_text()) if doc]
    assert not [d for d in documents if d.get("kind") == "Secret"], "Secrets are created by hand"
    mounted = set()
    for container in _rayservice_containers():
        volumes = {v["name"]: v for v in container["pod"]["spec"].get("volumes", [])}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}
        env = {e["name"]: e for e in container.get("env", [])}
        for name in SECRETS:
            assert f"FACEPASS_{name}" not in env, (container["name"], name)
            path = Path(env[f"FACEPASS_{name}_FILE"]["value"])
            volume = mounts[str(path.parent)]
            mounted.add(volume["secret"]["secretName"])
            assert volume["secret"]["defaultMode"] == 0o400
    assert len(mounted) == 1, mounted
    for doc in documents:
        if doc.get("kind") == "ConfigMap":
            assert not {f"FACEPASS_{n}" for n in SECRETS} & set(doc["data"]), "a secret in the ConfigMap"


def test_rayservice_runs_ray_with_token_auth_behind_a_network_policy() -> None:
    """KubeRay's authOptions put the GCS, dashboard and Jobs API behind Ray's token; the Ray
    Client port is not opened; a NetworkPolicy lets only the cluster's pods (and the operator,
    on the dashboard) reach the control plane, anyone only Serve and the metrics."""
    cluster_spec = _rayservice()["spec"]["rayClusterConfig"]
    assert cluster_spec["authOptions"]["mode"] == "token"
    labels = set()
    for container in _rayservice_containers():
        ports = {p["containerPort"] for p in container.get("ports", [])}
        assert 10001 not in ports, container["name"]
        labels.add(tuple(sorted(container["pod"]["metadata"]["labels"].items())))
    assert len(labels) == 1
    documents = [doc for doc in yaml.safe_load_all(RAYSERVICE.read_text()) if doc]
    (policy,) = [d for d in documents if d.get("kind") == "NetworkPolicy"]
    assert tuple(sorted(policy["spec"]["podSelector"]["matchLabels"].items())) in labels
    assert "Ingress" in policy["spec"]["policyTypes"]
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        sources = rule.get("from")
        if sources is None:  # from anywhere: only Serve and the metrics
            assert ports and ports <= {8000, 8080}, rule
        elif not ports:  # every port: only from the cluster's own pods
            assert all(tuple(sorted(src["podSelector"]["matchLabels"].items())) in labels for src in sources)
        else:
            assert 6379 not in ports, rule
