"""The query API as the Kubernetes manifests deploy it: the RayService's serveConfigV2, rendered
from deploy/k8s, deployed to the test session's Ray the way the KubeRay operator deploys it, and
asked over HTTPS by a stock ``openai`` client that verifies the certificate.

Only what names the cluster's files and ports is mapped onto this machine: the configuration
file (base/fedprag.toml, its paths pointed at the session's Poly-PRAG federation and at fresh
TLS material), the certificate and key, and the two ports.
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
from fedprag.cluster.serving.app import deploy
from fedprag.shared.metrics import exact_match
from fedprag.shared.processes import free_port
from tests.integration.federation_support import LAST_LAYER
from tests.kustomize import CLUSTER_CONFIG, K8S, serve_config_v2

pytestmark = pytest.mark.integration

KEY = "k8s-key-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def deployed(poly_federation, ray_session, tmp_path_factory):
    """The production overlay's serveConfigV2 running on the session's Ray; yields its HTTPS URL and CA."""
    here = tmp_path_factory.mktemp("k8s")
    tls = write_tls(here / "tls")
    settings = tomllib.loads((K8S / "base" / "fedprag.toml").read_text())
    port, grpc_port = free_port(), free_port()
    settings["federation"]["work_dir"] = str(here / "work")
    settings["serve"] |= {"tls_cert": str(tls.server_cert), "tls_key": str(tls.server_key), "port": port,
                          "grpc_port": grpc_port, "registry": str(poly_federation.work / "registry"),
                          "api_keys": [KEY]}
    settings["poly"] = tomllib.loads(LAST_LAYER.read_text())["poly"]  # the federation's pool
    config_file = here / "fedprag.toml"
    config_file.write_text(tomli_w.dumps(settings))

    config = serve_config_v2()
    assert config["applications"][0]["args"] == {"config": CLUSTER_CONFIG}
    config["applications"][0]["args"]["config"] = str(config_file)
    config["http_options"] |= {"port": port, "ssl_certfile": str(tls.server_cert), "ssl_keyfile": str(tls.server_key)}
    config["grpc_options"]["port"] = grpc_port
    deploy(config)
    yield f"https://127.0.0.1:{port}", tls.ca_cert
    serve.shutdown()


def test_a_verifying_openai_client_gets_the_right_answers_over_https(deployed, poly_federation):
    url, ca = deployed
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0,
                           http_client=httpx.Client(verify=ssl.create_default_context(cafile=str(ca))))
    questions = [q for q in poly_federation.dataset.questions if q.kind == "single"][:12]
    answers = [client.chat.completions.create(model="fedprag", messages=[{"role": "user", "content": q.text}])
               .choices[0].message.content for q in questions]
    em = np.mean([exact_match(a, q.answers) for a, q in zip(answers, questions)])
    print(f"\nthe manifests' serveConfigV2, learned router over HTTPS: exact match {em:.2f} on {len(questions)}")
    assert em >= 0.5  # the learned router, no site asked; closed-book is about 0.04 on these questions


def test_the_api_speaks_only_tls_with_a_certificate_from_the_federations_ca(deployed):
    url, _ = deployed
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{url}/healthz", timeout=10)  # the system's CAs do not know it
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https://", "http://") + "/healthz", timeout=10)  # no plaintext on the port
