"""The pod's config (deploy/k8s/configmap.yaml) on a real TorchServe, and the Deployment's three
probe commands against it: all pass once the models are up. Addresses are moved to free
loopback ports (the pod's 0.0.0.0:8080 is not for a test machine); the probes get those URLs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from servekit.serve.server import TorchServe, running
from tests.e2e.conftest import ROOT, wait_ready

pytestmark = pytest.mark.e2e
K8S = ROOT / "deploy" / "k8s"


def container() -> dict[str, object]:
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text())
    containers = deployment["spec"]["template"]["spec"]["containers"]
    (spec,) = [c for c in containers if c["name"] == "torchserve"]  # not the exporter sidecar
    assert isinstance(spec, dict)
    return spec


@pytest.fixture(scope="module")
def pod_server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    workdir = tmp_path_factory.mktemp("k8s")
    configmap = yaml.safe_load((K8S / "configmap.yaml").read_text())
    config = workdir / "pod.properties"
    config.write_text(configmap["data"]["config.properties"])
    with running(config, workdir / "server", model_store=model_store) as server:
        wait_ready(server, ["iris", "digits", "empty_model"])
        yield server


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_deployment_probe_passes_on_the_pod_config(pod_server: TorchServe, probe: str) -> None:
    spec = container()[probe]
    assert isinstance(spec, dict)
    _python, script, *args = spec["exec"]["command"]
    local_script = ROOT / Path(script).relative_to("/opt/servekit")
    urls = ["--inference-url", pod_server.inference_url]
    urls += ["--management-url", pod_server.management_url]
    # startup/readiness with --customized wait out warmup like the kubelet would, by retrying.
    done = subprocess.run(
        [sys.executable, str(local_script), *args, *urls, "--wait", "120"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
