"""deploy/: Kubernetes manifests against the Kubernetes schema (offline, strict), the KServe
InferenceService, the PodMonitor and the Prometheus adapter's rules against our schemas of the
fields they use, and the probes, config, scrape and autoscaling wiring and Dockerfiles against
what the project really ships."""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import math
import re
import shlex
from collections.abc import Iterator
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from servekit.config.check_properties import check_properties
from servekit.config.specs import effective_config, load_spec, read_yaml
from servekit.health.cli import build_parser
from servekit.health.probe import DEFAULT_INFERENCE_URL, DEFAULT_MANAGEMENT_URL
from servekit.observe.exporter import build_parser as exporter_parser
from servekit.ops.drain import STOP_TIMEOUT
from servekit.ops.drain import build_parser as stop_parser
from servekit.ops.supervise import build_parser as run_parser
from servekit.serve.server import read_properties
from tests.promql import EXPORTER_METRICS

ROOT = Path(__file__).resolve().parent.parent.parent
K8S = ROOT / "deploy" / "k8s"
ISVC = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
SCHEMAS = ROOT / "tests" / "schemas"
ISVC_SCHEMA = SCHEMAS / "kserve-inferenceservice-v1beta1.schema.json"
PODMONITOR_SCHEMA = SCHEMAS / "prometheus-operator-podmonitor-v1.schema.json"
ADAPTER_SCHEMA = SCHEMAS / "prometheus-adapter-config.schema.json"
PDB_SCHEMA = SCHEMAS / "kubernetes-poddisruptionbudget-policy-v1.schema.json"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
# The oldest and the newest Kubernetes minor versions we check (kubernetes-validate ships both).
K8S_VERSIONS = ("1.30.0", "1.37.0")
MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
# Custom resources: checked against our schemas, not Kubernetes'.
CRDS = ("podmonitor.yaml", "prometheusrule.yaml")
# Applied apart (kubectl apply -f): a CRD that may be absent, the adapter's own ConfigMap.
APPLIED_APART = ("podmonitor.yaml", "prometheus-adapter.yaml", "prometheusrule.yaml")
APP = "/opt/servekit"  # WORKDIR of deploy/docker/Dockerfile
PROBES = {
    "startupProbe": ("startup", False),
    "readinessProbe": ("readiness", True),
    "livenessProbe": ("liveness", False),
}
# Graceful drain: the slowest rate (req/s) at which the served models are assumed to work off
# full job queues (a tenth of the ~300 req/s they serve on 2 cores): deploy/k8s/deployment.yaml.
QUEUE_FLOOR_RPS = 30


def load(path: Path) -> dict[str, Any]:
    (document,) = yaml.safe_load_all(path.read_text())
    assert isinstance(document, dict)
    return document


def manifests() -> dict[str, dict[str, Any]]:
    return {name: load(K8S / name) for name in MANIFESTS}


def pod_container(deployment: dict[str, Any], name: str = "torchserve") -> dict[str, Any]:
    (container,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name
    ]
    assert isinstance(container, dict)
    return container


def named_ports(container: dict[str, Any]) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container["ports"]}


def isvc_container() -> dict[str, Any]:
    (container,) = load(ISVC)["spec"]["predictor"]["containers"]
    assert isinstance(container, dict)
    return container


def pod_config() -> dict[str, str]:
    return read_properties(manifests()["configmap.yaml"]["data"]["config.properties"])


# --- Kubernetes schema --------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(set(MANIFESTS) - set(CRDS)))
def test_manifest_is_valid_kubernetes(name: str, version: str) -> None:
    validated = kubernetes_validate.validate(load(K8S / name), version, strict=True)
    assert validated == version.rsplit(".", 1)[0]


def test_strict_validation_rejects_unknown_and_mistyped_fields() -> None:
    typo = copy.deepcopy(manifests()["deployment.yaml"])
    pod_container(typo)["livenesProbe"] = pod_container(typo).pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(typo, K8S_VERSIONS[-1], strict=True)
    wrong_type = copy.deepcopy(manifests()["hpa.yaml"])
    wrong_type["spec"]["maxReplicas"] = "six"
    with pytest.raises(kubernetes_validate.ValidationError, match="six"):
        kubernetes_validate.validate(wrong_type, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(set(MANIFESTS) - set(APPLIED_APART))


def test_resources_point_at_each_other() -> None:
    docs = manifests()
    deployment, service = docs["deployment.yaml"], docs["service.yaml"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    policy = docs["networkpolicy.yaml"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    target = docs["hpa.yaml"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == docs["configmap.yaml"]["metadata"]["name"]
    (service_port,) = service["spec"]["ports"]
    assert named_ports(pod_container(deployment))[service_port["targetPort"]] == 8080


def test_network_policy_admits_clients_to_inference_and_prometheus_to_metrics() -> None:
    policy = manifests()["networkpolicy.yaml"]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert all(rule["from"] for rule in policy["ingress"]), "an empty 'from' admits everyone"
    clients, monitoring = policy["ingress"]
    assert clients["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert clients["from"] == [{"podSelector": {"matchLabels": {"torchserve-kit/client": "true"}}}]
    assert monitoring["ports"] == [
        {"port": 8082, "protocol": "TCP"},
        {"port": 8083, "protocol": "TCP"},
    ]
    # one peer holding both selectors (AND), not two peers (OR: any pod of the namespace, or
    # any pod named prometheus in this namespace)
    (peer,) = monitoring["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    deployment = manifests()["deployment.yaml"]
    metrics_ports = {
        **named_ports(pod_container(deployment)),
        **named_ports(pod_container(deployment, "exporter")),
    }
    assert [metrics_ports["metrics"], metrics_ports["exporter"]] == [8082, 8083]


# --- the pod's config.properties ---------------------------------------------------------


def test_pod_config_is_the_project_config_with_inference_opened() -> None:
    project, pod = read_properties((ROOT / "config.properties").read_text()), pod_config()
    changed = {key for key in project.keys() | pod.keys() if project.get(key) != pod.get(key)}
    assert changed == {"inference_address", "model_store", "metrics_address"}
    assert pod["inference_address"] == "http://0.0.0.0:8080"
    assert pod["model_store"] == f"{APP}/model_store"
    assert pod["metrics_address"] == "http://0.0.0.0:8082"
    assert pod["metrics_mode"] == "prometheus"


def test_servekit_validate_reports_only_the_documented_trade_offs(tmp_path: Path) -> None:
    # The pod's config through the project's own validator: the open inference API without a
    # token (error) and the open metrics API (warning) are the trade-offs configmap.yaml and
    # networkpolicy.yaml document; nothing else may be reported.
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "log4j2.xml").write_bytes((ROOT / "config" / "log4j2.xml").read_bytes())
    config = tmp_path / "config.properties"
    config.write_text(manifests()["configmap.yaml"]["data"]["config.properties"])
    findings, _ = check_properties(config, "configmap.yaml")
    reported = {(f.severity, f.code, f.key) for f in findings}
    assert reported == {
        ("error", "open-without-token", "inference_address"),
        ("warning", "metrics-open", "metrics_address"),
    }


def test_pod_config_keys_the_probes_and_image_rely_on() -> None:
    config, container = pod_config(), pod_container(manifests()["deployment.yaml"])
    # The probes use health_check.py's default URLs: inference on any address, port 8080;
    # management on the pod's loopback only.
    assert config["inference_address"].rsplit(":", 1)[1] == DEFAULT_INFERENCE_URL.rsplit(":", 1)[1]
    assert config["management_address"] == DEFAULT_MANAGEMENT_URL
    metrics_port = int(config["metrics_address"].rsplit(":", 1)[1])
    assert named_ports(container)["metrics"] == metrics_port
    assert config["disable_token_authorization"] == "true"  # no key file for the probes
    assert config["enable_model_api"] == "false"
    args = container["args"]
    assert args[args.index("--model-store") + 1] == config["model_store"]
    assert args[args.index("--ts-config") + 1] == "/etc/servekit/config.properties"
    # the image's copy of config/log4j2.xml; --log-config replaces vmargs' relative path
    assert args[args.index("--log-config") + 1] == f"{APP}/config/log4j2.xml"
    assert config["vmargs"] == "-Dlog4j.configurationFile=config/log4j2.xml"
    for archive in config["load_models"].split(","):
        assert (ROOT / "config" / archive.replace(".mar", ".yml")).is_file(), archive


# --- probes ------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["deployment", "inferenceservice"])
@pytest.mark.parametrize("probe", sorted(PROBES))
def test_probe_runs_health_check_in_its_mode(where: str, probe: str) -> None:
    container = (
        pod_container(manifests()["deployment.yaml"]) if where == "deployment" else isvc_container()
    )
    spec = container[probe]
    python, script, *argv = spec["exec"]["command"]
    assert (python, script) == ("python", f"{APP}/scripts/health_check.py")
    args = build_parser().parse_args(argv)  # the real CLI: unknown flags would exit here
    mode, customized = PROBES[probe]
    assert (args.probe, args.customized, args.key_file) == (mode, customized, None)
    assert args.inference_url == DEFAULT_INFERENCE_URL
    assert args.management_url == DEFAULT_MANAGEMENT_URL
    # Every HTTP request of the check fits in the probe's own timeout.
    requests_made = 1 if mode == "liveness" else 2 + len(pod_config()["load_models"].split(","))
    assert spec["timeoutSeconds"] >= requests_made * args.timeout


def test_inferenceservice_runs_the_same_pod_as_the_deployment() -> None:
    deployment = pod_container(manifests()["deployment.yaml"])
    isvc = isvc_container()
    for key in ("image", "args", "workingDir", "volumeMounts", "resources", "lifecycle", *PROBES):
        assert isvc[key] == deployment[key], key
    predictor = load(ISVC)["spec"]["predictor"]
    config_volume = {v["name"]: v for v in predictor["volumes"]}["config"]
    assert config_volume["configMap"]["name"] == "torchserve-kit-config"
    pod = manifests()["deployment.yaml"]["spec"]
    grace = "terminationGracePeriodSeconds"
    assert predictor[grace] == pod["template"]["spec"][grace]
    assert predictor["deploymentStrategy"] == pod["strategy"]


# --- KServe InferenceService: a CRD, checked against our schema of the fields it uses -----


def isvc_validator() -> jsonschema.Draft202012Validator:
    return crd_validator(ISVC_SCHEMA)


def test_inferenceservice_matches_schema() -> None:
    errors = [error.message for error in isvc_validator().iter_errors(load(ISVC))]
    assert errors == []


def mutations() -> Iterator[tuple[str, Any]]:
    """(what breaks, how): each must fail validation."""

    def typo(doc: Any) -> None:
        doc["spec"]["predictor"]["minReplica"] = doc["spec"]["predictor"].pop("minReplicas")

    def metric(doc: Any) -> None:
        doc["spec"]["predictor"]["scaleMetric"] = "gpu"

    def container_field(doc: Any) -> None:
        doc["spec"]["predictor"]["containers"][0]["readinesProbe"] = {}

    def container_name(doc: Any) -> None:
        doc["spec"]["predictor"]["containers"][0]["name"] = "torchserve"

    def mode(doc: Any) -> None:
        doc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Raw"

    def grace(doc: Any) -> None:
        doc["spec"]["predictor"]["terminationGracePeriodSeconds"] = "70s"

    def strategy(doc: Any) -> None:
        rolling = doc["spec"]["predictor"]["deploymentStrategy"]["rollingUpdate"]
        rolling["maxUnavailble"] = rolling.pop("maxUnavailable")

    def hook(doc: Any) -> None:
        lifecycle = doc["spec"]["predictor"]["containers"][0]["lifecycle"]
        lifecycle["preStopp"] = lifecycle.pop("preStop")

    yield from [
        ("typo", typo),
        ("metric", metric),
        ("container_field", container_field),
        ("container_name", container_name),
        ("mode", mode),
        ("grace", grace),
        ("strategy", strategy),
        ("hook", hook),
    ]


@pytest.mark.parametrize(("what", "mutate"), list(mutations()))
def test_inferenceservice_schema_rejects(what: str, mutate: Any) -> None:
    document = load(ISVC)
    mutate(document)
    assert list(isvc_validator().iter_errors(document)), what


# --- the exporter sidecar, the PodMonitor, the Prometheus adapter and the HPA ----------------


def test_exporter_sidecar_shares_image_uid_and_volumes_and_never_restarts_the_pod() -> None:
    deployment = manifests()["deployment.yaml"]
    torchserve, exporter = pod_container(deployment), pod_container(deployment, "exporter")
    assert exporter["image"] == torchserve["image"]
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsUser"] == 1000 and "runAsUser" not in exporter["securityContext"]
    assert "runAsUser" not in torchserve["securityContext"]
    assert exporter["securityContext"] == torchserve["securityContext"]
    args = exporter["args"]
    assert args[:2] == ["servekit", "exporter"]
    options = dict(zip(args[2::2], args[3::2], strict=True))
    assert options == {
        "--host": "0.0.0.0",
        "--port": "8083",
        "--management-url": DEFAULT_MANAGEMENT_URL,
        "--inference-url": "http://127.0.0.1:8080",
        "--log-dir": "/var/lib/servekit/logs",
    }
    assert options["--management-url"] == pod_config()["management_address"]
    parsed = exporter_parser().parse_args(args[2:])  # the real CLI: unknown flags exit here
    assert (parsed.host, parsed.port, str(parsed.log_dir)) == (
        "0.0.0.0",
        8083,
        options["--log-dir"],
    )
    assert named_ports(exporter) == {"exporter": 8083}
    # the workers' status files: $TMPDIR/servekit-<uid>/... on the same /tmp, same TMPDIR
    env = {e["name"]: e["value"] for e in exporter["env"]}
    assert env["TMPDIR"] == {e["name"]: e["value"] for e in torchserve["env"]}["TMPDIR"] == "/tmp"
    mounts = {m["name"]: m for m in exporter["volumeMounts"]}
    ts_mounts = {m["name"]: m for m in torchserve["volumeMounts"]}
    assert mounts["tmp"]["mountPath"] == ts_mounts["tmp"]["mountPath"] == "/tmp"
    assert (
        mounts["workdir"]["mountPath"]
        == ts_mounts["workdir"]["mountPath"]
        == torchserve["workingDir"]
    )
    assert mounts["workdir"]["readOnly"] is True and set(mounts) == {"tmp", "workdir"}
    assert options["--log-dir"].startswith(mounts["workdir"]["mountPath"] + "/")
    assert not {"livenessProbe", "startupProbe", "readinessProbe"} & exporter.keys()
    requests, limits = exporter["resources"]["requests"], exporter["resources"]["limits"]
    assert requests["cpu"] == "50m" and limits["memory"] == "256Mi"


@cache
def crd_validator(schema_path: Path) -> jsonschema.Draft202012Validator:
    """A CRD's resource against our schema of the fields we use; its ``$ref``s resolve to the
    Kubernetes strict schemas kubernetes-validate ships."""
    version = f"v{K8S_VERSIONS[-1]}-local-strict"
    definitions = files("kubernetes_validate") / "kubernetes-json-schema" / version
    k8s = Resource.from_contents(json.loads((definitions / "_definitions.json").read_text()))
    schema = json.loads(schema_path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    registry: Registry[Any] = k8s @ Registry()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def adapter_config() -> dict[str, Any]:
    config = yaml.safe_load(manifests()["prometheus-adapter.yaml"]["data"]["config.yaml"])
    assert isinstance(config, dict)
    return config


def test_podmonitor_matches_schema() -> None:
    errors = [
        e.message
        for e in crd_validator(PODMONITOR_SCHEMA).iter_errors(load(K8S / "podmonitor.yaml"))
    ]
    assert errors == []


def test_adapter_config_matches_schema() -> None:
    errors = [e.message for e in crd_validator(ADAPTER_SCHEMA).iter_errors(adapter_config())]
    assert errors == []


def podmonitor_mutations() -> Iterator[tuple[str, Any]]:
    def endpoints(doc: Any) -> Any:
        return doc["spec"]["podMetricsEndpoints"]

    yield from [
        ("typo", lambda doc: endpoints(doc)[0].update(intervall=endpoints(doc)[0].pop("interval"))),
        ("duration", lambda doc: endpoints(doc)[0].update(interval="15 seconds")),
        ("action", lambda doc: endpoints(doc)[0]["relabelings"][0].update(action="rename")),
        ("port type", lambda doc: endpoints(doc)[0].update(port=8082)),
        ("no selector", lambda doc: doc["spec"].pop("selector")),
        ("kind", lambda doc: doc.update(kind="ServiceMonitor")),
    ]


@pytest.mark.parametrize(("what", "mutate"), list(podmonitor_mutations()))
def test_podmonitor_schema_rejects(what: str, mutate: Any) -> None:
    document = load(K8S / "podmonitor.yaml")
    mutate(document)
    assert list(crd_validator(PODMONITOR_SCHEMA).iter_errors(document)), what


@pytest.mark.parametrize(
    ("what", "mutate"),
    [
        ("typo", lambda rule: rule.update(seriesQuerry=rule.pop("seriesQuery"))),
        ("no series placeholder", lambda rule: rule.update(metricsQuery="sum(x)")),
        ("override", lambda rule: rule["resources"]["overrides"]["pod"].update(kind="pod")),
    ],
)
def test_adapter_schema_rejects(what: str, mutate: Any) -> None:
    config = adapter_config()
    mutate(config["rules"][0])
    assert list(crd_validator(ADAPTER_SCHEMA).iter_errors(config)), what


def test_podmonitor_scrapes_both_ports_as_the_rules_jobs() -> None:
    monitor = load(K8S / "podmonitor.yaml")["spec"]
    deployment = manifests()["deployment.yaml"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    ports = {
        **named_ports(pod_container(deployment)),
        **named_ports(pod_container(deployment, "exporter")),
    }
    jobs = {}
    for endpoint in monitor["podMetricsEndpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
        (relabel,) = endpoint["relabelings"]
        assert (relabel["action"], relabel["targetLabel"]) == ("replace", "job")
        jobs[relabel["replacement"]] = ports[endpoint["port"]]
    # the same jobs, on the same ports, as the single-machine prometheus.yml
    single = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    expected = {
        job["job_name"]: int(job["static_configs"][0]["targets"][0].rsplit(":", 1)[1])
        for job in single
    }
    assert jobs == expected == {"torchserve": 8082, "servekit-exporter": 8083}


def series_metric(series_query: str) -> str:
    return series_query.split("{", 1)[0].strip()


def test_hpa_scales_on_the_metric_the_adapter_makes_from_the_exporter() -> None:
    hpa = manifests()["hpa.yaml"]["spec"]
    pods_metric, cpu = hpa["metrics"]
    assert pods_metric["type"] == "Pods" and cpu["type"] == "Resource"
    assert cpu["resource"]["name"] == "cpu"
    assert pods_metric["pods"]["target"]["type"] == "AverageValue"
    (rule,) = adapter_config()["rules"]
    source = series_metric(rule["seriesQuery"])
    assert source == "servekit_model_pending_requests" and source in EXPORTER_METRICS
    # the adapter names the metric by applying name.matches/as to the series' name (Go regexp
    # replacement: $1 for groups, as Python's \1)
    name = rule["name"]
    produced = re.sub(name["matches"], re.sub(r"\$(\d+)", r"\\\1", name["as"]), source)
    assert pods_metric["pods"]["metric"]["name"] == produced
    # per pod: the series carry the PodMonitor's namespace/pod labels, mapped to resources
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    assert rule["metricsQuery"].startswith("sum by (<<.GroupBy>>) (<<.Series>>")


def test_adapter_config_is_for_the_adapter_namespace() -> None:
    adapter = manifests()["prometheus-adapter.yaml"]
    assert adapter["kind"] == "ConfigMap" and list(adapter["data"]) == ["config.yaml"]
    assert adapter["metadata"]["namespace"] == "monitoring"


# --- graceful drain: servekit run, the preStop hook, the grace period, rollouts ------------


def run_command(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """``servekit run [drain options] -- torchserve ...`` through the real CLI (unknown flags
    exit here): the options and the server command."""
    assert argv[:2] == ["servekit", "run"], argv
    options = run_parser().parse_args(argv[2:])
    assert options.command[:1] == ["--"], "the server command follows --"
    return options, options.command[1:]


def stop_command(argv: list[str]) -> argparse.Namespace:
    assert argv[:2] == ["servekit", "stop"], argv
    return stop_parser().parse_args(argv[2:])


def docker_steps() -> dict[str, str]:
    return dict(instructions(ROOT / "deploy/docker/Dockerfile"))


def pods() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, TorchServe container) of the Deployment and of the KServe predictor."""
    deployment = manifests()["deployment.yaml"]
    return {
        "deployment": (deployment["spec"]["template"]["spec"], pod_container(deployment)),
        "inferenceservice": (load(ISVC)["spec"]["predictor"], isvc_container()),
    }


def served_models() -> dict[str, dict[str, Any]]:
    """The effective model config of every archive the pod's config.properties loads:
    model-config.yml with the spec's overrides (what ``servekit archive`` puts in the .mar)."""
    defaults = read_yaml(ROOT / "model-config.yml")
    models = {}
    for archive in pod_config()["load_models"].split(","):
        name = archive.removesuffix(".mar")
        models[name] = effective_config(load_spec(ROOT / "config" / f"{name}.yml", ROOT), defaults)
    return models


def response_timeout(name: str, model: dict[str, Any]) -> int:
    """What TorchServe uses: the archive's responseTimeout, else ``models=`` in
    config.properties, else default_response_timeout, else 120 (values <= 0 ignored)."""
    config = pod_config()
    per_model = json.loads(config.get("models", "{}")).get(name, {})
    per_model = next(iter(per_model.values()), {}) if per_model else {}
    for value in (
        model.get("responseTimeout"),
        per_model.get("responseTimeout"),
        config.get("default_response_timeout"),
    ):
        if value is not None and int(value) > 0:
            return int(value)
    return 120


def queue_size(model: dict[str, Any]) -> int:
    size = model.get("jobQueueSize")
    return int(size) if size and int(size) > 0 else int(pod_config().get("job_queue_size", 100))


@pytest.mark.parametrize("where", ["deployment", "inferenceservice"])
def test_pod_runs_torchserve_under_servekit_run(where: str) -> None:
    _, container = pods()[where]
    options, server = run_command(container["args"])
    assert server[:3] == ["torchserve", "--start", "--foreground"]
    assert options.announce > 0 and options.timeout > 0
    # the server command is what the pod served before the wrapper: the other tests' checks
    # of --ts-config, --model-store and --log-config read the same args
    assert "--ts-config" in server and "--model-store" in server


@pytest.mark.parametrize("where", ["deployment", "inferenceservice"])
def test_prestop_drains_with_the_supervisors_figures(where: str) -> None:
    _, container = pods()[where]
    run, _ = run_command(container["args"])
    hook = container["lifecycle"]["preStop"]
    assert list(hook) == ["exec"], "an exec hook: servekit stop runs inside the container"
    stop = stop_command(hook["exec"]["command"])
    assert (stop.announce, stop.timeout) == (run.announce, run.timeout)
    assert stop.retry_after == run.retry_after
    # the hook finds TorchServe by its pid file in $TMPDIR: the container's own environment
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert stop.pid_file is None and stop.pid is None and env.get("TMPDIR", "/tmp") == "/tmp"
    assert stop.management_url in (None, DEFAULT_MANAGEMENT_URL)
    assert stop.key_file is None and run.key_file is None  # token authorization is off


@pytest.mark.parametrize("where", ["deployment", "inferenceservice"])
def test_grace_period_covers_announce_timeout_and_the_stop(where: str) -> None:
    pod, container = pods()[where]
    stop = stop_command(container["lifecycle"]["preStop"]["exec"]["command"])
    # the hook takes at most --timeout (announce included) + TorchServe's own stop; the
    # announce on top leaves time to start the hook's Python
    assert pod["terminationGracePeriodSeconds"] >= stop.announce + stop.timeout + STOP_TIMEOUT


def test_drain_timeout_covers_the_longest_batch_and_full_queues() -> None:
    # After the announce, an in-flight batch may run up to its model's responseTimeout and the
    # full job queues drain at (at least) QUEUE_FLOOR_RPS.
    models = served_models()
    assert models, "the pod serves no model"
    longest = max(response_timeout(name, model) for name, model in models.items())
    queued = sum(queue_size(model) for model in models.values())
    needed = longest + math.ceil(queued / QUEUE_FLOOR_RPS)
    for where, (_, container) in pods().items():
        run, _ = run_command(container["args"])
        # --timeout bounds the whole drain, the announce included
        assert run.timeout - run.announce >= needed, (
            f"{where}: --timeout {run.timeout:g} - --announce {run.announce:g} < "
            f"responseTimeout {longest} s + {queued} queued requests at {QUEUE_FLOOR_RPS} req/s"
        )


def test_response_timeout_is_read_from_the_model_configs(tmp_path: Path) -> None:
    # the helper the timeout check rests on: an override in a spec wins over model-config.yml
    (name, model), *_ = served_models().items()
    assert response_timeout(name, model) == model["responseTimeout"]
    assert response_timeout(name, {**model, "responseTimeout": 600}) == 600
    assert response_timeout(name, {**model, "responseTimeout": 0}) == int(
        pod_config()["default_response_timeout"]
    )


@pytest.mark.parametrize("where", ["deployment", "inferenceservice"])
def test_rolling_update_keeps_every_ready_pod_until_its_successor_is_ready(where: str) -> None:
    if where == "deployment":
        strategy = manifests()["deployment.yaml"]["spec"]["strategy"]
    else:
        strategy = load(ISVC)["spec"]["predictor"]["deploymentStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}


def test_liveness_never_fails_on_a_drain() -> None:
    # A drain fails readiness (handlers report `draining`); liveness asks /ping only, which
    # stays up until TorchServe itself stops, and tolerates more than that stop takes.
    for where, (_, container) in pods().items():
        live = container["livenessProbe"]
        argv = live["exec"]["command"][2:]
        args = build_parser().parse_args(argv)
        assert (args.probe, args.customized) == ("liveness", False), where
        assert live["periodSeconds"] * live["failureThreshold"] > STOP_TIMEOUT, where
        ready = build_parser().parse_args(container["readinessProbe"]["exec"]["command"][2:])
        assert (ready.probe, ready.customized) == ("readiness", True), where


def test_pod_disruption_budget_lets_one_pod_go_at_a_time() -> None:
    docs = manifests()
    pdb, deployment = docs["pdb.yaml"], docs["deployment.yaml"]
    assert (pdb["apiVersion"], pdb["kind"]) == ("policy/v1", "PodDisruptionBudget")
    spec = pdb["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["selector"] == deployment["spec"]["selector"]
    # exactly one of the two (the API server refuses both), as a plain count of pods
    (kind,) = {"minAvailable", "maxUnavailable"} & spec.keys()
    assert isinstance(spec[kind], int)
    hpa = docs["hpa.yaml"]["spec"]
    sizes = range(min(hpa["minReplicas"], deployment["spec"]["replicas"]), hpa["maxReplicas"] + 1)
    for replicas in sizes:
        evictable = spec[kind] if kind == "maxUnavailable" else replicas - spec[kind]
        # a node drain can always proceed, and one pod always serves while another drains
        assert 1 <= evictable < replicas, (kind, replicas)
    assert spec.get("unhealthyPodEvictionPolicy") == "AlwaysAllow"


def test_pod_disruption_budget_matches_schema() -> None:
    # besides Kubernetes' own strict schema (test_manifest_is_valid_kubernetes): what the API
    # server checks that its OpenAPI schema leaves to prose
    errors = [e.message for e in crd_validator(PDB_SCHEMA).iter_errors(manifests()["pdb.yaml"])]
    assert errors == []


def pdb_mutations() -> Iterator[tuple[str, Any]]:
    def spec(doc: Any) -> Any:
        return doc["spec"]

    yield from [
        ("typo", lambda doc: spec(doc).update(maxUnavailble=spec(doc).pop("maxUnavailable"))),
        ("both", lambda doc: spec(doc).update(minAvailable=1)),
        ("neither", lambda doc: spec(doc).pop("maxUnavailable")),
        ("percent", lambda doc: spec(doc).update(maxUnavailable="50")),
        ("policy", lambda doc: spec(doc).update(unhealthyPodEvictionPolicy="Always")),
        ("no selector", lambda doc: spec(doc).pop("selector")),
        ("version", lambda doc: doc.update(apiVersion="policy/v1beta1")),
    ]


@pytest.mark.parametrize(("what", "mutate"), list(pdb_mutations()))
def test_pod_disruption_budget_schema_rejects(what: str, mutate: Any) -> None:
    document = copy.deepcopy(manifests()["pdb.yaml"])
    mutate(document)
    assert list(crd_validator(PDB_SCHEMA).iter_errors(document)), what


def test_image_runs_torchserve_under_servekit_run() -> None:
    steps = docker_steps()
    # tini -g passes SIGTERM to the supervisor's process group; TorchServe has a group of its own
    assert json.loads(steps["ENTRYPOINT"]) == ["/usr/bin/tini", "-g", "--"]
    assert steps["STOPSIGNAL"] == "SIGTERM"
    options, server = run_command(json.loads(steps["CMD"]))
    assert server[:3] == ["torchserve", "--start", "--foreground"]
    assert server[server.index("--ts-config") + 1] == f"{APP}/config.properties"
    # one set of drain figures for the image and the pods
    pod, _ = run_command(pod_container(manifests()["deployment.yaml"])["args"])
    assert (options.announce, options.timeout) == (pod.announce, pod.timeout)
    # `docker stop` waits 10 s by default: the label documents the -t the drain needs
    (label,) = shlex.split(steps["LABEL"])
    key, _, value = label.partition("=")
    assert key == "io.github.torchserve-kit.stop-timeout"
    assert int(value) >= options.announce + options.timeout + STOP_TIMEOUT


# --- Dockerfiles -------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    joined = text.replace("\\\n", " ")
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), " ".join(rest.split())))
    return result


def included(source: str, dockerignore: Path) -> bool:
    """Whether ``source`` survives ``dockerignore`` (its last matching rule wins)."""
    keep = True
    for rule in dockerignore.read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negated = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(source.rstrip("/"), pattern):
            keep = negated
    return keep


@pytest.mark.parametrize("image", ["docker", "sagemaker"])
def test_dockerfile_copies_what_exists_and_the_context_sends(image: str, model_store: Path) -> None:
    dockerfile = ROOT / "deploy" / image / "Dockerfile"
    copies = [shlex.split(args)[:-1] for word, args in instructions(dockerfile) if word == "COPY"]
    assert copies
    for sources in copies:
        for source in sources:
            assert list(ROOT.glob(source.rstrip("/"))), f"{dockerfile}: COPY {source}: no such path"
            assert included(source, dockerfile.with_name("Dockerfile.dockerignore")), source


def test_dockerfile_pins_torch_like_pyproject() -> None:
    runs = [args for word, args in instructions(ROOT / "deploy/docker/Dockerfile") if word == "RUN"]
    (torch_install,) = [run for run in runs if "torch==" in run]
    pinned = next(w for w in torch_install.split() if w.startswith("torch=="))
    assert f'"{pinned}"' in (ROOT / "pyproject.toml").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_install


def test_the_image_installs_the_toolkit_for_the_probe_script() -> None:
    # The probes run scripts/health_check.py, a thin entry point importing the *installed*
    # servekit: a regular install, no PYTHONPATH, and the copied sources gone after it.
    steps = instructions(ROOT / "deploy/docker/Dockerfile")
    runs = [args for word, args in steps if word == "RUN"]
    (install,) = [run for run in runs if "pip install '.[examples]'" in run]
    # the extra: the image serves every archive in model_store/, minilm (transformers) included
    assert "-e" not in install.split() and "rm -rf build servekit " in install
    assert not [args for word, args in steps if word == "ENV" and "PYTHONPATH" in args]
    copies = [shlex.split(args) for word, args in steps if word == "COPY"]
    assert ["scripts/health_check.py", "scripts/"] in copies


def test_sagemaker_image_runs_the_entrypoint_with_serve() -> None:
    steps = dict(instructions(ROOT / "deploy/sagemaker/Dockerfile"))
    entrypoint, cmd = json.loads(steps["ENTRYPOINT"]), json.loads(steps["CMD"])
    copied = shlex.split(steps["COPY"])[-1]
    assert entrypoint[-1] == copied and entrypoint[0] == "/usr/bin/tini"
    assert cmd == ["serve"]


def copied_paths(source: str, dockerignore: Path) -> Iterator[Path]:
    """Every file and directory a ``COPY source`` sends into the image."""
    for top in ROOT.glob(source.rstrip("/")):
        yield top
        if top.is_dir():
            for path in top.rglob("*"):
                relative = str(path.relative_to(ROOT))
                if "__pycache__" not in path.parts and included(relative, dockerignore):
                    yield path


@pytest.mark.parametrize("image", ["docker", "sagemaker"])
def test_everything_the_images_copy_is_readable_by_uid_1000(image: str, model_store: Path) -> None:
    # COPY keeps each file's mode and makes root its owner; the image runs as uid 1000, which
    # reads only through the "other" bits (r for files, r-x for directories).
    dockerfile = ROOT / "deploy" / image / "Dockerfile"
    dockerignore = dockerfile.with_name("Dockerfile.dockerignore")
    copies = [shlex.split(args)[:-1] for word, args in instructions(dockerfile) if word == "COPY"]
    unreadable = []
    checked = 0
    for source in (s for sources in copies for s in sources):
        for path in copied_paths(source, dockerignore):
            need = 0o005 if path.is_dir() else 0o004
            checked += 1
            if path.stat().st_mode & need != need:
                unreadable.append(f"{path.relative_to(ROOT)} {oct(path.stat().st_mode & 0o777)}")
    assert checked
    assert not unreadable, f"{dockerfile.relative_to(ROOT)} copies unreadable files: {unreadable}"
    if image == "docker":
        assert list(model_store.glob("*.mar")), "the archives are part of what is checked"
