"""``fedprag serve``: the query API and the serving actor group, composed as one Ray Serve application.

    Ingress (FastAPI, HTTP + gRPC) ──handle──▶ Replica × N: a batch of questions routed at once
                                               (embed; fan out to the sites, or the learned router),
                                               then answered in one batched generate on the LoRA path

:func:`build_app` binds the two deployments from the one typed configuration. :func:`serve_config`
is the Ray Serve deploy config around it (KubeRay's ``serveConfigV2``): the proxies and the app,
which Serve builds on the cluster through :func:`app_builder` from a fedprag configuration file.
:func:`start` deploys exactly that config to a local Ray (or an existing cluster), as the KubeRay
operator deploys it to a RayService.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve._private.api import serve_start
from ray.serve.config import ProxyLocation, gRPCOptions
from ray.serve.schema import ServeDeploySchema

from fedprag.cluster.serving.ingress import Ingress, IngressSettings
from fedprag.cluster.serving.modes import serving_mode
from fedprag.cluster.serving.ray_start import init_ray
from fedprag.cluster.serving.replica import Batching, replica_deployment
from fedprag.cluster.serving.router import RoutingSettings
from fedprag.coordinator.registry import registry_dir
from fedprag.shared.config import FedpragConfig, ServeSection, config_to_toml, load_config
from fedprag.shared.io import atomic_write_text, read_tokens
from fedprag.shared.log import get_logger

log = get_logger(__name__)

APP_NAME = "fedprag"
GRPC_SERVICER = "fedprag.cluster.serving.grpc_service.add_query_service"


def registry_of(config: FedpragConfig) -> str:
    """The pool registry the app serves: ``serve.registry``, else the federation's."""
    return str(Path(config.serve.registry or registry_dir(config.federation)).resolve())


def build_app(config: FedpragConfig) -> serve.Application:
    """The application graph: the ingress holding a handle to the replica group."""
    settings = config.serve
    settings.check_files()
    registry = registry_of(config)
    token = read_tokens(settings.site_token_file)[-1] if settings.sites else ""
    mode = serving_mode(config.federation.mode)
    routing = RoutingSettings(settings.site_addresses(), settings.ca_cert, token, settings.site_deadline,
                              settings.encoder_dtype)
    threads = max(1, int(settings.replica_cpus))
    replicas = replica_deployment(settings).bind(config.model.path, registry, config.poly, threads,
                                                 Batching.of(settings), None, mode.name, routing)
    ingress = IngressSettings(settings.api_keys, settings.rate_limit_qps, settings.rate_limit_burst,
                              settings.key_rates(), settings.routing if mode.learned_router else "fanout",
                              settings.top_k, settings.max_new_tokens, registry, mode.name, mode.learned_router)
    return Ingress.bind(replicas, ingress)


@dataclass(frozen=True)
class Endpoints:
    """Where the running app answers."""

    http: str
    grpc: str | None


def app_builder(args: dict[str, str]) -> serve.Application:
    """Ray Serve's application builder, named by :func:`serve_config`: the app of the fedprag
    configuration file ``args['config']`` (plus ``FEDPRAG__*`` environment variables, which is
    where a cluster's API keys come from)."""
    return build_app(load_config(args["config"]))


def serve_config(settings: ServeSection, config_file: str) -> dict[str, Any]:
    """The Ray Serve deploy config of the query API (KubeRay's ``serveConfigV2``): Serve's HTTP
    proxy (HTTPS with ``serve.tls_cert``) and gRPC proxy, and the one application, which Serve
    builds on the cluster from ``config_file``, a path there."""
    http: dict[str, Any] = {"host": settings.host, "port": settings.port}
    if settings.tls_cert:
        http |= {"ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key}
    config: dict[str, Any] = {"proxy_location": "EveryNode", "http_options": http}
    if settings.grpc_port:
        config["grpc_options"] = {"port": settings.grpc_port, "grpc_servicer_functions": [GRPC_SERVICER]}
    config["applications"] = [{"name": APP_NAME, "route_prefix": "/", "import_path": f"{__name__}:app_builder",
                               "args": {"config": config_file}}]
    return config


def deploy(config: dict[str, Any], timeout: float = 600.0) -> None:
    """Start Serve's proxies and deploy the apps of a deploy config (validated as Ray Serve's
    ``ServeDeploySchema``, as the KubeRay operator does), the way Ray's own ``serve run
    config.yaml`` does; returns once every app runs, and raises with Serve's message if one fails."""
    schema = ServeDeploySchema.model_validate(config)
    location = ProxyLocation._to_deployment_mode(schema.proxy_location).value  # as `serve run` maps it
    serve_start(http_options={**schema.http_options.model_dump(), "location": location},
                grpc_options=gRPCOptions(**schema.grpc_options.model_dump())).deploy_apps(schema)
    names = [app.name for app in schema.applications]
    deadline = time.monotonic() + timeout
    while True:
        apps = serve.status().applications
        if all(name in apps and apps[name].status == "RUNNING" for name in names):
            return
        for name in names:
            if name in apps and apps[name].status in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise RuntimeError(f"Ray Serve could not deploy {name}: {apps[name].message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray Serve's apps {names} were not running after {timeout:.0f} s")
        time.sleep(0.5)


def start(config: FedpragConfig, address: str | None = None, num_cpus: int | None = None) -> Endpoints:
    """Start (or join) Ray and deploy the query API's :func:`serve_config`; returns once every
    replica is up.

    The configuration, as validated here, is written to ``<federation.work_dir>/serve/fedprag.toml``
    (mode 0600: it holds the API keys) for the app to be built from; on an existing cluster
    (``address``) that folder must be on a volume the cluster shares, as the registry already is.
    """
    settings = config.serve
    if not ray.is_initialized():
        init_ray(address, num_cpus)
    config_file = (Path(config.federation.work_dir) / "serve" / "fedprag.toml").resolve()
    atomic_write_text(config_file, config_to_toml(config))  # mode 0600, as every atomic write
    deploy(serve_config(settings, str(config_file)))
    scheme = "https" if settings.tls_cert else "http"
    endpoints = Endpoints(f"{scheme}://{settings.host}:{settings.port}",
                          f"{settings.host}:{settings.grpc_port}" if settings.grpc_port else None)
    log.info("serve.started", http=endpoints.http, grpc=endpoints.grpc, replicas=settings.replicas,
             sites=len(settings.sites), registry=registry_of(config))
    return endpoints


def stop() -> None:
    """Delete the app and shut Serve's proxies down (Ray itself keeps running)."""
    serve.shutdown()
