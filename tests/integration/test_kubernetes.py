"""The query API as it is deployed: the Kubernetes manifests' serveConfigV2, deployed to the test
session's Ray the way the KubeRay operator deploys it, answers; and ``fedprag serve`` with a
certificate answers a stock ``openai`` client that verifies it, over HTTPS.

Only what names the cluster's files and ports is mapped onto this machine: the configuration
file (base/fedprag.toml, its paths pointed at the session's Poly-PRAG federation) and the two ports.
"""

import secrets
import ssl
import tomllib

import httpx
import numpy as np
import openai
import pytest
import tomli_w
from ray import serve

from fedprag.cluster.certs import write_tls
from fedprag.cluster.serving.app import deploy, start
from fedprag.shared.config import load_config
from fedprag.shared.metrics import exact_match
from fedprag.shared.processes import free_port
from tests.integration.federation_support import LAST_LAYER
from tests.kustomize import CLUSTER_CONFIG, K8S, serve_config_v2

pytestmark = pytest.mark.integration

KEY = "k8s-key-" + secrets.token_hex(8)


def _cluster_settings(federation, work) -> dict:
    """base/fedprag.toml, its paths on this machine: the federation's registry and pool, a work folder."""
    settings = tomllib.loads((K8S / "base" / "fedprag.toml").read_text())
    settings["federation"]["work_dir"] = str(work)
    settings["serve"] |= {"registry": str(federation.work / "registry"), "api_keys": [KEY]}
    settings["poly"] = tomllib.loads(LAST_LAYER.read_text())["poly"]  # the federation's pool
    return settings


def _exact_match(client: openai.OpenAI, federation) -> float:
    questions = [q for q in federation.dataset.questions if q.kind == "single"][:12]
    answers = [client.chat.completions.create(model="fedprag", messages=[{"role": "user", "content": q.text}])
               .choices[0].message.content for q in questions]
    return float(np.mean([exact_match(a, q.answers) for a, q in zip(answers, questions)]))


def test_the_manifests_serve_config_deployed_as_kuberay_does_answers(poly_federation, ray_session, tmp_path):
    settings = _cluster_settings(poly_federation, tmp_path / "work")
    port, grpc_port = free_port(), free_port()
    settings["serve"] |= {"port": port, "grpc_port": grpc_port}
    config_file = tmp_path / "fedprag.toml"
    config_file.write_text(tomli_w.dumps(settings))
    config = serve_config_v2()
    assert config["applications"][0]["args"] == {"config": CLUSTER_CONFIG}
    config["applications"][0]["args"]["config"] = str(config_file)
    config["http_options"]["port"], config["grpc_options"]["port"] = port, grpc_port
    deploy(config)
    try:
        em = _exact_match(openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0),
                          poly_federation)
    finally:
        serve.shutdown()
    print(f"\nthe manifests' serveConfigV2, learned router: exact match {em:.2f} on 12 questions")
    assert em >= 0.5  # the learned router, no site asked; closed-book is about 0.04 on these questions


def test_fedprag_serve_with_a_certificate_answers_a_verifying_openai_client_over_https(
        poly_federation, ray_session, tmp_path):
    tls = write_tls(tmp_path / "tls")
    settings = _cluster_settings(poly_federation, tmp_path / "work")
    settings["serve"] |= {"port": free_port(), "grpc_port": 0, "plaintext": False, "tls_cert": str(tls.server_cert),
                          "tls_key": str(tls.server_key)}
    config_file = tmp_path / "fedprag.toml"
    config_file.write_text(tomli_w.dumps(settings))
    endpoints = start(load_config(config_file))
    try:
        assert endpoints.http.startswith("https://")
        url = endpoints.http.replace("0.0.0.0", "127.0.0.1")
        verifying = httpx.Client(verify=ssl.create_default_context(cafile=str(tls.ca_cert)))
        em = _exact_match(openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, http_client=verifying),
                          poly_federation)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{url}/healthz", timeout=10)  # the system's CAs do not know the federation's
        with pytest.raises(httpx.HTTPError):
            httpx.get(url.replace("https://", "http://") + "/healthz", timeout=10)  # no plaintext on the port
    finally:
        serve.shutdown()
    print(f"\nfedprag serve over HTTPS, learned router: exact match {em:.2f} on 12 questions")
    assert em >= 0.5
