"""docker/k8s/*.yaml: valid against the Kubernetes schemas (kubernetes-validate, strict: unknown fields are
errors), and consistent with each other, the image, the sharding layout and the observability config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "docker" / "k8s"
IMAGE = "widefunnel-triton:24.10"
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")  # oldest still common, newest the validator knows
CRD_GROUPS = ("keda.sh/",)  # custom resources: no upstream schema, checked structurally below


def _documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


DOCS = _documents()


def _kind(kind: str) -> list[dict]:
    return [d for _, d in DOCS if d["kind"] == kind]


def _named(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in _kind(kind)}


def _container(deployment: dict, name: str = "tritonserver") -> dict:
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return container


def _gateway(deployment: dict) -> dict | None:
    found = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway"]
    return found[0] if found else None


def _args(container: dict, flag: str) -> list[str]:
    return [a.split("=", 1)[1] for a in container.get("args", []) if a.startswith(flag + "=")]


def _arg(container: dict, flag: str) -> str:
    values = _args(container, flag)
    assert len(values) == 1, f"{flag} given {len(values)} times"
    return values[0]


def test_manifests_exist():
    kinds = {d["kind"] for _, d in DOCS}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "Job",
            "PodDisruptionBudget", "ScaledObject", "ConfigMap", "Namespace", "NetworkPolicy"} <= kinds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name, doc", DOCS, ids=[f"{n}:{d['kind']}/{d['metadata']['name']}" for n, d in DOCS])
def test_valid_against_kubernetes_schema(name, doc, version):
    if doc["apiVersion"].startswith(CRD_GROUPS):
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):  # proves the skip is for a real CRD
            kubernetes_validate.validate(doc, version, strict=True)
        return
    kubernetes_validate.validate(doc, version, strict=True)


def test_a_broken_manifest_is_caught():
    """The validator is not a rubber stamp: a misspelt probe field fails."""
    deployment = yaml.safe_load(yaml.safe_dump(_named("Deployment")["widefunnel-router"]))
    _gateway(deployment)["readinessProbe"]["httpGett"] = {"path": "/v2/health/ready", "port": 8000}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def _probes_on_http(container: dict, name: str) -> None:
    assert container["livenessProbe"].get("httpGet", {"path": "/v2/health/live", "port": "http"}) == \
        {"path": "/v2/health/live", "port": "http"}, name
    for probe in ("readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}, name


def test_every_triton_pod_uses_the_image_probes_gpu_and_read_only_models():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3" in dockerfile
    assert f"image: {IMAGE}" in (ROOT / "docker" / "compose.yaml").read_text()
    claims = set(_named("PersistentVolumeClaim"))
    for name, deployment in _named("Deployment").items():
        pod = deployment["spec"]["template"]
        container = _container(deployment)
        assert container["image"] == IMAGE and container["command"] == ["tritonserver"], name
        gateway = _gateway(deployment)
        front = gateway if gateway is not None else container
        ports = {p["name"]: p["containerPort"] for p in front["ports"]}
        assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}, name
        _probes_on_http(front, name)
        resources = container["resources"]
        assert resources["requests"]["nvidia.com/gpu"] >= 1 and resources["limits"]["nvidia.com/gpu"] >= 1, name
        assert "--model-control-mode=explicit" in container["args"] and "--strict-readiness=true" in container["args"]
        assert "--metrics-config=summary_latencies=true" in container["args"], f"{name}: dashboard p99 panels"
        assert {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"} in container["env"], name  # read-only repository
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert volumes["models"]["persistentVolumeClaim"]["claimName"] in claims
        assert mounts["models"]["readOnly"] is True and volumes["models"]["persistentVolumeClaim"]["readOnly"]
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory" and mounts["dshm"]["mountPath"] == "/dev/shm"
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == 8002
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod["metadata"]["labels"].items(), name


def test_control_plane_needs_the_key_from_a_secret_everywhere():
    from widefunnel.security import ADMIN_HEADER, ADMIN_KEY_ENV, RESTRICTED_APIS

    apis = ",".join(RESTRICTED_APIS)
    for name, deployment in _named("Deployment").items():
        container = _container(deployment)
        env = {e["name"]: e for e in container["env"]}
        assert env[ADMIN_KEY_ENV]["valueFrom"]["secretKeyRef"] == {"name": "widefunnel-admin-key",
                                                                   "key": "admin-key"}, name
        for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
            assert f"{apis}:{ADMIN_HEADER}=$({ADMIN_KEY_ENV})" in _args(container, flag), (name, flag)
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    (command,) = compose["services"]["triton"]["command"]
    assert compose["secrets"]["admin_key"] == {"file": "./admin-key"}
    for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
        assert f"{flag}={apis}:{ADMIN_HEADER}=$$(cat /run/secrets/admin_key)" in command


def test_tritonserver_behind_a_gateway_answers_only_the_gateway():
    """Every other API class needs the gateway key; the gateway gets it from the same secret, reads the models
    it lets through from the same repository, and tritonserver's own probe sends the key."""
    from widefunnel.security import GATEWAY_HEADER, GATEWAY_KEY_ENV, OPEN_APIS, restriction_flags

    expected = f"{','.join(OPEN_APIS)}:{GATEWAY_HEADER}=$({GATEWAY_KEY_ENV})"
    assert any(f.endswith(f"{','.join(OPEN_APIS)}:{GATEWAY_HEADER}=" + "k" * 30)
               for f in restriction_flags("a" * 30, "k" * 30))  # the flags the embedded server gets alike
    deployments = _named("Deployment")
    for name in ("widefunnel", "widefunnel-router"):
        container, gateway = _container(deployments[name]), _gateway(deployments[name])
        for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
            assert expected in _args(container, flag), (name, flag)
        for c in (container, gateway):
            env = {e["name"]: e for e in c["env"]}
            assert env[GATEWAY_KEY_ENV]["valueFrom"]["secretKeyRef"] == {"name": "widefunnel-gateway-key",
                                                                         "key": "gateway-key"}, name
        assert _arg(gateway, "--repository") == _arg(container, "--model-repository"), name
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in gateway["volumeMounts"], name
        assert GATEWAY_HEADER in " ".join(container["livenessProbe"]["exec"]["command"]), name
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    (command,) = compose["services"]["triton"]["command"]
    assert f"{','.join(OPEN_APIS)}:{GATEWAY_HEADER}=$$(cat /run/secrets/gateway_key)" in command
    (gateway_command,) = compose["services"]["gateway"]["command"]
    assert "WIDEFUNNEL_GATEWAY_KEY=$$(cat /run/secrets/gateway_key)" in gateway_command
    assert "--repository=/models" in gateway_command


def test_clients_reach_tritonserver_only_through_the_gateway_and_shards_only_from_routers():
    deployments = _named("Deployment")
    for name in ("widefunnel", "widefunnel-router"):  # client-facing tiers
        container, gateway = _container(deployments[name]), _gateway(deployments[name])
        assert gateway is not None and gateway["command"] == ["python3", "-m", "widefunnel.gateway"], name
        gateway = gateway | {"args": [a for a in gateway["args"] if not a.startswith("--repository=")]}
        assert "ports" not in container, f"{name}: tritonserver must publish no port of its own"
        upstream = {a.split("=")[0]: a.split("=")[1] for a in gateway["args"]}
        for api in ("http", "grpc", "metrics"):
            assert _arg(container, f"--{api}-address") == "127.0.0.1", (name, api)
            assert upstream[f"--{api}-upstream"] == f"127.0.0.1:{_arg(container, f'--{api}-port')}", (name, api)
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    assert compose["services"]["gateway"]["network_mode"] == "service:triton"
    assert "--http-address=127.0.0.1" in compose["services"]["triton"]["command"][0]
    (policy,) = _kind("NetworkPolicy")
    shards = [d for n, d in deployments.items() if n.startswith("widefunnel-ann-shard-")]
    selected = policy["spec"]["podSelector"]["matchLabels"].items()
    assert shards and all(selected <= d["spec"]["template"]["metadata"]["labels"].items() for d in shards)
    assert not selected <= deployments["widefunnel-router"]["spec"]["template"]["metadata"]["labels"].items()
    router_labels = deployments["widefunnel-router"]["spec"]["template"]["metadata"]["labels"]
    grpc_rule = next(r for r in policy["spec"]["ingress"] if {"protocol": "TCP", "port": "grpc"} in r["ports"])
    (source,) = grpc_rule["from"]
    assert set(source) == {"podSelector"} and source["podSelector"]["matchLabels"].items() <= router_labels.items()


def test_sharded_layout_matches_shards_router_and_services():
    from widefunnel.cli.main import build_parser

    deployments, services = _named("Deployment"), _named("Service")
    (job,) = _kind("Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["widefunnel", "shard-layout"]
    args = build_parser().parse_args(["shard-layout", *container["args"]])
    shard_deployments = sorted(n for n in deployments if n.startswith("widefunnel-ann-shard-"))
    assert shard_deployments == [f"widefunnel-ann-shard-{s}" for s in range(args.shards)]
    for s, name in enumerate(shard_deployments):
        assert _arg(_container(deployments[name]), "--model-repository") == f"{args.out}/shards/shard-{s}"
        url = args.shard_url_template.format(shard=s)
        host, port = re.match(r"^dns:///([^:]+):(\d+)$", url).groups()
        service_name, namespace = host.split(".")[:2]
        service = services[service_name]
        assert namespace == service["metadata"]["namespace"]
        assert service["spec"]["clusterIP"] == "None", "headless: the router round-robins over shard replicas"
        assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"] == int(port)
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items() and labels["widefunnel.shard"] == str(s)
    assert args.lb_policy == "round_robin"
    assert _arg(_container(deployments["widefunnel-router"]), "--model-repository") == f"{args.out}/router"
    assert _arg(_container(deployments["widefunnel"]), "--model-repository") == str(args.repository)
    for name in ("widefunnel", "widefunnel-router"):  # ClusterIP Services in front of the stateless tiers
        pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert services[name]["spec"]["selector"].items() <= pod_labels.items()


def test_autoscaling_reads_the_queue_time_metric_the_adapter_derives():
    (adapter,) = [c for c in _kind("ConfigMap") if c["metadata"]["name"] == "prometheus-adapter"]
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert "nv_inference_queue_duration_us" in rule["seriesQuery"] and "nv_inference_queue_duration_us" in \
        rule["metricsQuery"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    deployments = _named("Deployment")
    hpas = _kind("HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == set(deployments)
    for hpa in hpas:
        (metric,) = hpa["spec"]["metrics"]
        assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
        assert hpa["spec"]["minReplicas"] >= 1 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    for scaled in _kind("ScaledObject"):  # KEDA alternative: structure checked by hand
        spec = scaled["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus" and "nv_inference_queue_duration_us" in trigger["metadata"]["query"]
        assert float(trigger["metadata"]["threshold"]) > 0 and trigger["metricType"] == "Value"
        assert spec["minReplicaCount"] < spec["maxReplicaCount"]


def test_prometheus_scrape_config_feeds_the_adapter_and_dashboard_labels():
    config = yaml.safe_load((ROOT / "docker" / "observability" / "prometheus.yml").read_text())
    (k8s_job,) = [j for j in config["scrape_configs"] if "kubernetes_sd_configs" in j]
    targets = {r.get("target_label") for r in k8s_job["relabel_configs"]}
    assert {"namespace", "pod", "component", "shard"} <= targets
    namespaces = k8s_job["kubernetes_sd_configs"][0]["namespaces"]["names"]
    assert namespaces == [d["metadata"]["namespace"] for d in _kind("Deployment")][:1]
