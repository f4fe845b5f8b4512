"""``fedprag serve``: the query API and the serving actor group, composed as one Ray Serve application.

    Ingress (FastAPI, HTTP + gRPC) ──handle──▶ Replica × N: a batch of questions routed at once
                                               (embed; fan out to the sites, or the learned router),
                                               then answered in one batched generate on the LoRA path

:func:`build_app` binds the two deployments from the one typed configuration; :func:`start`
starts Ray (a local one, or an existing cluster's), Serve's HTTP and gRPC proxies, and the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ray
from ray import serve
from ray.serve.config import HTTPOptions, gRPCOptions

from fedprag.cluster.serving.ingress import Ingress, IngressSettings
from fedprag.cluster.serving.modes import serving_mode
from fedprag.cluster.serving.replica import Batching, replica_deployment
from fedprag.cluster.serving.router import RoutingSettings
from fedprag.coordinator.registry import registry_dir
from fedprag.shared.config import FedpragConfig
from fedprag.shared.io import read_tokens
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


def init_ray(address: str | None, num_cpus: int | None) -> None:
    """Start (or join) Ray, tried up to three times: on a busy machine a new Ray's own GCS server or raylet can
    miss its start-up deadline ("Timed out waiting for file .../gcs_server_port_...", "The current
    node timed out during startup")."""
    for attempt in (1, 2, 3):
        try:
            ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                     log_to_driver=False)
            return
        except Exception as exc:  # Ray raises a bare Exception for a raylet's start-up timeout
            if attempt == 3 or "timed out" not in str(exc).lower():
                raise
            log.warning("serve.ray_start.retry", reason=str(exc)[:200])
            ray.shutdown()


def start(config: FedpragConfig, address: str | None = None, num_cpus: int | None = None) -> Endpoints:
    """Start (or join) Ray, Serve's proxies and the app; returns once every replica is up."""
    settings = config.serve
    if not ray.is_initialized():
        init_ray(address, num_cpus)
    grpc_options = (gRPCOptions(port=settings.grpc_port, grpc_servicer_functions=[GRPC_SERVICER])
                    if settings.grpc_port else None)
    serve.start(http_options=HTTPOptions(host=settings.host, port=settings.port), grpc_options=grpc_options)
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    endpoints = Endpoints(f"http://{settings.host}:{settings.port}",
                          f"{settings.host}:{settings.grpc_port}" if settings.grpc_port else None)
    log.info("serve.started", http=endpoints.http, grpc=endpoints.grpc, replicas=settings.replicas,
             sites=len(settings.sites), registry=registry_of(config))
    return endpoints


def stop() -> None:
    """Delete the app and shut Serve's proxies down (Ray itself keeps running)."""
    serve.shutdown()
