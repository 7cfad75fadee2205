"""The Helm chart (helm/styletx): lint, render per profile, Kubernetes schemas, policy, values, monitoring.

Nothing here needs a cluster: helm-python-sdk (Helm's Go SDK) lints and renders, kubernetes-validate checks
every rendered object against the OpenAPI schemas of Kubernetes 1.29 and the newest release it knows (strict:
unknown fields fail), checkov checks policy, and the dashboard / alert expressions are checked against the
metrics that server/styletx_server/metrics.py really registers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import require_tool

helm = pytest.importorskip("helm_python", reason="dev dependency: pip install helm-python-sdk")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "styletx"
PROFILES = sorted(p.stem for p in (CHART / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "demo", "styletx"
CRD_GROUPS = ("monitoring.coreos.com/",)  # Prometheus-operator kinds: no schema in kubernetes-validate
OLDEST_K8S = "1.29.0"


def _profile_values(profile: str) -> dict[str, Any]:
    return yaml.safe_load((CHART / "ci" / f"{profile}.yaml").read_text()) or {}


@pytest.fixture(scope="module")
def chart() -> Any:
    return helm.Chart.load(CHART)


def render(chart: Any, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """All objects the chart renders for ``values`` (NOTES.txt left out)."""
    rendered = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


@pytest.fixture(scope="module")
def rendered(chart: Any) -> dict[str, list[dict[str, Any]]]:
    return {profile: render(chart, _profile_values(profile)) for profile in PROFILES}


def one(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind}*{name_suffix}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def server_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "styletx")


def config_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    return dict(one(docs, "ConfigMap", RELEASE + "-styletx")["data"])


# ----------------------------------------------------------------------------------------------- lint, render
def test_profiles_exist() -> None:
    assert {"default-values", "gpu-values", "tls-autoscaling-values"} <= set(PROFILES)


@pytest.mark.parametrize("profile", PROFILES)
def test_lint_strict(profile: str) -> None:
    report = helm.lint(CHART, _profile_values(profile), strict=True, namespace=NAMESPACE,
                       kube_version="v1.29.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + list(report.get("errors") or [])
    assert not problems, problems


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("version", [OLDEST_K8S, "latest"])
def test_manifests_match_kubernetes_schemas(rendered: dict[str, list[dict[str, Any]]], profile: str,
                                            version: str) -> None:
    """Strict OpenAPI validation: a misspelt or misplaced field fails (`kubectl apply --validate=strict`)."""
    if version == "latest":
        version = kubernetes_validate.utils.latest_version()
    checked = 0
    for doc in rendered[profile]:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 7


def test_default_profile_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = sorted(d["kind"] for d in rendered["default-values"])
    assert kinds == sorted(["ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "Pod",
                            "Service", "Service", "ServiceAccount"])
    assert all(d["metadata"].get("namespace") == NAMESPACE for d in rendered["default-values"])


# ----------------------------------------------------------------------------------------- pod spec semantics
@pytest.mark.parametrize("profile", PROFILES)
def test_restricted_pod_security(rendered: dict[str, list[dict[str, Any]]], profile: str) -> None:
    pod = one(rendered[profile], "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert "emptyDir" in tmp


def test_native_grpc_probes_on_plaintext(rendered: dict[str, list[dict[str, Any]]]) -> None:
    container = server_container(rendered["default-values"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 50051, probe


def test_tls_probes_use_exec_healthcheck(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The kubelet's gRPC probe cannot do TLS: the chart switches to the image's styletx-healthcheck."""
    container = server_container(rendered["tls-autoscaling-values"])
    command = container["readinessProbe"]["exec"]["command"]
    assert command[0] == "styletx-healthcheck"
    assert "/etc/styletx/tls/ca.crt" in command
    assert "--tls-cert" in command  # clientAuth: the probe presents the pod's own certificate


def test_termination_grace_covers_drain_and_prestop(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for profile in PROFILES:
        docs = rendered[profile]
        pod = one(docs, "Deployment")["spec"]["template"]["spec"]
        pre_stop = int(server_container(docs)["lifecycle"]["preStop"]["exec"]["command"][1])
        drain = float(config_env(docs)["STYLETX_GRACE"])
        assert pre_stop > 0
        assert pod["terminationGracePeriodSeconds"] > drain + pre_stop, profile


def test_gpu_profile(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["gpu-values"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = server_container(docs)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith("-cuda")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert all(c["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
               for c in pod["topologySpreadConstraints"])
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"] == \
        ["styletx_queue_depth"]
    assert "replicas" not in one(docs, "Deployment")["spec"]  # the HPA owns the replica count


def test_cpu_profile_requests_no_gpu(rendered: dict[str, list[dict[str, Any]]]) -> None:
    container = server_container(rendered["default-values"])
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert not container["image"].endswith("-cuda")


def test_secrets_mounted_as_files(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["tls-autoscaling-values"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "styletx-tls"
    assert volumes["auth"]["secret"]["secretName"] == "styletx-tokens"
    mounts = {m["name"]: m for m in server_container(docs)["volumeMounts"]}
    assert mounts["tls"]["readOnly"] and mounts["auth"]["readOnly"]
    env = config_env(docs)
    assert env["STYLETX_TLS_CERT"] == "/etc/styletx/tls/tls.crt"
    assert env["STYLETX_AUTH_TOKEN_FILE"] == "/etc/styletx/auth/tokens"
    container = server_container(docs)
    assert not any("secretKeyRef" in (e.get("valueFrom") or {}) for e in container.get("env", []))


def test_weights_init_container_into_claim(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["tls-autoscaling-values"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert init["command"] == ["styletx-prepare-cache"]
    claim = one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    weights = next(v for v in pod["volumes"] if v["name"] == "weights")
    assert weights["persistentVolumeClaim"]["claimName"] == claim
    assert {"name": "weights", "mountPath": "/opt/styletx/weights", "readOnly": True} in \
        server_container(docs)["volumeMounts"]


def test_weights_from_existing_pvc(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["weights-pvc-values"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    weights = next(v for v in pod["volumes"] if v["name"] == "weights")
    assert weights["persistentVolumeClaim"] == {"claimName": "styletx-weights", "readOnly": True}
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]


def test_services_regular_and_headless(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["default-values"]
    regular = one(docs, "Service", RELEASE + "-styletx")
    headless = one(docs, "Service", "-headless")
    assert regular["spec"]["type"] == "ClusterIP"
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is False
    assert headless["spec"]["selector"] == regular["spec"]["selector"] == \
        one(docs, "Deployment")["spec"]["selector"]["matchLabels"]


def test_configmap_sets_only_settings_the_server_reads(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Every STYLETX_* key is a styletx-server setting's variable (server/styletx_server/config.py)."""
    import dataclasses

    from styletx_server import config

    known = {config.env_name(field.name) for field in dataclasses.fields(config.ServerConfig)}
    for profile in PROFILES:
        unknown = sorted({k for k in config_env(rendered[profile]) if not k.startswith("OTEL_")} - known)
        assert not unknown, f"{profile}: the server ignores {unknown}"


def test_tracing_is_off_by_default_and_the_chart_can_turn_it_on(chart: Any) -> None:
    """The OTEL_* variables the chart renders are ones the server's tracing accepts (and turns on with)."""
    from styletx_server import tracing

    assert not [k for k in config_env(render(chart, {})) if k.startswith("OTEL_")]
    values = {"tracing": {"enabled": True, "endpoint": "http://otel-collector.observability:4317",
                          "samplerArg": "0.25", "extraEnv": {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=ci"}}}
    env = config_env(render(chart, values))
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
    assert (env["OTEL_TRACES_SAMPLER"], env["OTEL_TRACES_SAMPLER_ARG"]) == ("parentbased_traceidratio", "0.25")
    assert env["OTEL_SERVICE_NAME"] == RELEASE + "-styletx"
    try:
        assert tracing.configure_from_env(env) == "otlp"
    finally:
        tracing.use_provider(None)


def test_config_change_rolls_pods(chart: Any) -> None:
    def checksum(values: dict[str, Any]) -> str:
        annotations = one(render(chart, values), "Deployment")["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/config"])

    assert checksum({}) != checksum({"server": {"queueSize": 3}})


def test_helm_test_pod(rendered: dict[str, list[dict[str, Any]]]) -> None:
    pod = one(rendered["default-values"], "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["initContainers"][0]["command"][0] == "styletx-healthcheck"
    assert pod["spec"]["containers"][0]["command"][0] == "styletx-smoke"
    assert f"{RELEASE}-styletx:50051" in pod["spec"]["containers"][0]["command"]


def test_helm_test_pod_follows_tls_and_skips_with_tokens(chart: Any) -> None:
    values = _profile_values("tls-autoscaling-values")
    assert not [d for d in render(chart, values) if d["kind"] == "Pod"]  # tokens: the pod would need one
    values["auth"]["enabled"] = False
    pod = one(render(chart, values), "Pod")
    for container in pod["spec"]["initContainers"] + pod["spec"]["containers"]:
        command = container["command"]
        assert command[command.index("--tls-ca") + 1] == "/etc/styletx/tls/ca.crt"
        assert "--tls-cert" in command  # clientAuth: the server's pair doubles as client certificate
    assert next(v for v in pod["spec"]["volumes"] if v["name"] == "tls")["secret"]["secretName"] == "styletx-tls"


# ------------------------------------------------------------------------------------------ values schema
@pytest.mark.parametrize("bad", [
    {"replicaCount": "two"},
    {"replicaCunt": 2},
    {"image": {"repository": "styletx", "pullPolicy": "Sometimes"}},
    {"image": {"repository": "styletx", "digest": "latest"}},
    {"server": {"port": 70000}},
    {"server": {"queueSize": -1}},
    {"server": {"devices": "tpu"}},
    {"server": {"extraEnv": {"lower_case": "x"}}},
    {"server": {"surprise": True}},
    {"gpu": {"enabled": "yes"}},
    {"resources": {"limits": {"memory": "lots"}}},
    {"tls": {"enabled": True, "secretName": ""}},
    {"auth": {"enabled": True}},
    {"weights": {"source": "s3"}},
    {"probes": {"liveness": {"periodSeconds": 0}}},
    {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "x", "whenUnsatisfiable": "Maybe"}]},
    {"metrics": {"prometheusRule": {"errorRateRatio": 5}}},
    {"autoscaling": {"targetCPUUtilizationPercentage": "80%"}},
], ids=lambda bad: json.dumps(bad, separators=(",", ":"))[:60])
def test_schema_rejects_bad_values(chart: Any, bad: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(bad)


@pytest.mark.parametrize("profile", PROFILES)
def test_schema_accepts_profiles(chart: Any, profile: str) -> None:
    chart.validate_schema(_profile_values(profile))


@pytest.mark.parametrize(("values", "message"), [
    ({"weights": {"source": "pvc"}}, "existingClaim"),
    ({"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}}, "at least one metric"),
    ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, "maxReplicas"),
])
def test_template_guards(chart: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, values)


# Blocks whose contents are Kubernetes fields passed through verbatim: documented by the Kubernetes API.
_VERBATIM_BLOCKS = {"podSecurityContext", "securityContext", "resources", "topologySpreadConstraints",
                    "behavior", "startup", "readiness", "liveness", "accessModes", "command", "labels", "env"}


def undocumented_keys(text: str) -> list[str]:
    """Dotted paths of values.yaml keys with no comment line directly above them."""
    lines = text.splitlines()
    stack: list[tuple[int, str]] = []
    missing = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)(- )?([A-Za-z][\w./-]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents = [key for _, key in stack]
        stack.append((indent, match.group(3)))
        if match.group(2) or _VERBATIM_BLOCKS & set(parents):
            continue
        if i == 0 or not lines[i - 1].strip().startswith("#"):
            missing.append(".".join([*parents, match.group(3)]))
    return missing


def test_values_documented_field_by_field() -> None:
    """Each key of values.yaml has its comment, and every top-level key is declared in the schema."""
    text = (CHART / "values.yaml").read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=values.schema.json"
    assert not undocumented_keys(text)
    assert undocumented_keys("a:\n  # -- doc\n  b: 1\n") == ["a"]  # the check itself can fail
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert set(yaml.safe_load(text)) <= set(schema["properties"])


# ------------------------------------------------------------------------------------------------ policy
def _checkov() -> str | None:
    configured = os.environ.get("CHECKOV")
    bundled = ROOT / "build" / "checkov-venv" / "bin" / "checkov"
    candidates = [configured, str(bundled), shutil.which("checkov")]
    return next((c for c in candidates if c and Path(c).exists()), None)


def test_checkov_finds_nothing_unjustified(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """checkov's Kubernetes policies over every profile: no failed check; the chart's skips carry reasons.

    Offline (--skip-download) checkov has no severities, so every failure counts, not only high ones.
    """
    checkov = _checkov()
    require_tool(checkov is not None, "checkov not installed: deploy/install-test-tools.sh puts it in "
                 "build/checkov-venv (its pins conflict with the project venv)")
    assert checkov is not None
    for profile, docs in rendered.items():
        (tmp_path / f"{profile}.yaml").write_text(yaml.safe_dump_all(docs))
    result = subprocess.run([checkov, "--framework", "kubernetes", "--skip-download", "--compact",
                             "-o", "json", "-d", str(tmp_path)], capture_output=True, text=True, timeout=180,
                            check=False)
    report = json.loads(result.stdout)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0, failed
    assert summary["passed"] > 100
    skipped = report["results"]["skipped_checks"]
    assert {c["check_id"] for c in skipped} <= {"CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_15", "CKV_K8S_43"}
    for check in skipped:
        reason = check["check_result"].get("suppress_comment") or ""
        assert len(reason.strip()) > 20, f"skip of {check['check_id']} on {check['resource']} has no reason"


# ---------------------------------------------------------------------------------------------- monitoring
_METRIC = re.compile(r"\b(styletx_[a-z0-9_]+)\b")


def exported_metric_names() -> set[str]:
    """Sample names server/styletx_server/metrics.py exposes: counters as *_total, histograms as *_bucket/_sum/_count."""
    from styletx_server import metrics as metrics_module

    registry = metrics_module.Metrics().registry
    names: set[str] = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                "summary": ["_sum", "_count"]}
    for family in registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
    return names


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CHART / "files" / "dashboard.json").read_text())
    return data


def _exprs(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("expr", "query") and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from _exprs(item)


def test_dashboard_loads_and_shows_the_required_panels() -> None:
    board = dashboard()
    assert board["uid"] and board["schemaVersion"] >= 36
    titles = " | ".join(p["title"].lower() for p in board["panels"])
    for needed in ("queue depth", "latency percentiles", "iterations per second per replica"):
        assert needed in titles
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for expr in _exprs(board):
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr


def test_monitoring_uses_only_exported_metrics(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Dashboard, alerts and HPA reference only metric names the server registers (server/styletx_server/metrics.py)."""
    docs = rendered["gpu-values"]
    used = set(_METRIC.findall(" ".join(_exprs(dashboard()))))
    rule = one(docs, "PrometheusRule")
    used |= set(_METRIC.findall(" ".join(_exprs(rule))))
    used |= {m["pods"]["metric"]["name"] for m in one(docs, "HorizontalPodAutoscaler")["spec"]["metrics"]
             if m["type"] == "Pods"}
    assert used, "no styletx metrics referenced"
    missing = sorted(used - exported_metric_names())
    assert not missing, f"referenced but not exported by server/styletx_server/metrics.py: {missing}"


def test_monitoring_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["gpu-values"]
    monitor = one(docs, "ServiceMonitor")
    service_ports = {p["name"] for p in one(docs, "Service", RELEASE + "-styletx")["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["port"] in service_ports
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    alerts = {r["alert"]: r for r in one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert set(alerts) == {"StyletxQueueSaturated", "StyletxHighErrorRate", "StyletxParityGateFailing"}
    for rule in alerts.values():
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]
        assert f'job="{RELEASE}-styletx"' in rule["expr"]
    board = one(docs, "ConfigMap", "-dashboard")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["styletx.json"]) == dashboard()


def test_rendering_is_fast_enough_for_ci(chart: Any) -> None:
    """Guard against a template loop: rendering every profile stays well under a second each."""
    import time

    start = time.perf_counter()
    for profile in PROFILES:
        render(chart, _profile_values(profile))
    assert time.perf_counter() - start < 5 * len(PROFILES)


if __name__ == "__main__":  # pragma: no cover - convenience for `python tests/test_helm.py`
    sys.exit(pytest.main([__file__, "-q"]))
