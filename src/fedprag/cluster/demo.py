"""The main job's federation half, ``fedprag demo``: a whole federation on one machine.

1. Build (or load) the base model and generate the benchmark, split over sites by Dirichlet(α).
2. Lay out one site store per data owner; text stays in those stores.
3. Start one site daemon per store and run the federated rounds: a SuperLink (the coordinator's
   ServerApp) and the daemons' SuperNodes as separate processes over TLS with node authentication
   (or, with ``federation.runtime = "simulation"``, every site as a Ray actor, then the daemons).
   The coordinator releases the last pool to every site.
4. Start the query API on Ray Serve (``fedprag serve``), pointed at every daemon's routing service
   over gRPC, with a key made for this run. No process but a site's own daemon opens that site's
   store from here on.

:func:`fedprag.shared.eval.federated.evaluate_federation` then asks every test question over HTTP
and puts the federated model (Poly-PRAG, or DistilledPRAG with ``federation.mode = "distilled"``)
beside the centralised methods; :func:`write_results` adds the bytes
each site sent. (Without ``serving``, as in the federation benchmark, the questions go through an
in-process fan-out to the same daemons instead.)
"""

from __future__ import annotations

import contextlib
import json
import secrets
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from fedprag.cluster.deployment import LocalDeployment
from fedprag.cluster.serving import app as serving_app
from fedprag.cluster.serving.client import QueryClient
from fedprag.cluster.serving.fanout import FanOut
from fedprag.cluster.serving.modes import serving_mode
from fedprag.cluster.simulation import prepare_sites, simulate
from fedprag.coordinator.app import RoundReport, recorded_rounds
from fedprag.coordinator.registry import registry_dir
from fedprag.shared.config import FedpragConfig
from fedprag.shared.data.augment import own_augmentations
from fedprag.shared.data.benchmark import make_benchmark
from fedprag.shared.data.schema import Dataset
from fedprag.shared.eval.report import Report
from fedprag.shared.io import atomic_write_text
from fedprag.shared.log import get_logger
from fedprag.shared.methods.base import MethodModel
from fedprag.shared.models.loading import BaseModel, load_causal_lm
from fedprag.shared.processes import free_port

log = get_logger(__name__)


@dataclass
class Federation:
    """A finished federation: its data, base model, the model its latest release answers with in
    process (named ``<mode>_federated``) and that release's size, the sites' fan-out, its rounds,
    and the query API serving it (when started)."""

    dataset: Dataset
    base: BaseModel
    model: MethodModel
    stored_bytes: int
    fanout: FanOut
    rounds: list[RoundReport]
    baselines: tuple[str, ...]  # what the results table trains centrally beside the release (by mode)
    api: QueryClient | None = None


def traffic_table(reports: list[RoundReport]) -> str:
    """Markdown: per round, the sites that contributed and the bytes each sent."""
    lines = ["| round | pool version | sites accepted | rejected | bytes per site (median) |", "|---|---|---|---|---|"]
    for r in reports:
        sent = statistics.median(r.bytes_per_site.values()) if r.bytes_per_site else 0
        lines.append(f"| {r.round} | {r.version if r.version is not None else '–'} | {len(r.accepted)} | "
                     f"{len(r.rejected)} | {sent:,.0f} |")
    return "\n".join(lines)


@contextlib.contextmanager
def running_federation(config: FedpragConfig, show_progress: bool = True, serving: bool = False) -> Iterator[Federation]:
    """Steps 1–4 of the module docstring (step 4 with ``serving``); the query API, the site daemons
    and the SuperLink stop on exit."""
    federation = config.federation
    work = Path(federation.work_dir)
    base = load_causal_lm(config.model.path, show_progress=show_progress)
    dataset = make_benchmark(config.benchmark)
    # Without the benchmark's own augmentation file, each site's augmenter writes its encoding data.
    stores = prepare_sites(own_augmentations(dataset, config.augment.use_dataset), work / "sites")
    log.info("demo.sites", sites=len(stores), passages=[len(s.passages()) for s in stores])
    sites = [(s.root.name, s.root) for s in stores]
    simulated = federation.runtime == "simulation"
    if simulated:
        simulate(config, len(stores))
    with LocalDeployment(work, sites, config.model.path, rounds=not simulated, augment=config.augment,
                         mode=federation.mode) as deployment:
        reports = recorded_rounds(registry_dir(federation)) if simulated else deployment.run(config)
        mode = serving_mode(federation.mode)
        # The release's model, named <mode>_federated; the query API holds the pool, or in distilled
        # mode no more than the base model (the sites hold the generator, whose bytes are counted).
        model, stored_bytes = mode.federated_model(registry_dir(federation), base, config.poly,
                                                   f"{mode.name}_federated")
        fanout = FanOut(deployment.routing_sites(), config.harness.top_k, config.poly, mode)
        api = None
        try:
            api = _start_serving(config, deployment) if serving else None
            yield Federation(dataset, base, model, stored_bytes, fanout, reports, mode.baselines, api)
        finally:
            fanout.close()
            if serving:
                if api is not None:
                    api.close()
                serving_app.stop()


def _start_serving(config: FedpragConfig, deployment: LocalDeployment) -> QueryClient:
    """The query API on a local Ray, over the deployment's daemons, with a key made for this run."""
    key = secrets.token_urlsafe(24)
    settings = replace(config.serve, **deployment.serve_settings(), api_keys=(key,), port=free_port(), grpc_port=0,
                       top_k=config.harness.top_k, max_new_tokens=config.harness.max_new_tokens,
                       rate_limit_qps=10_000.0, rate_limit_burst=10_000)
    settings.validate()
    served = replace(config, serve=settings)
    endpoints = serving_app.start(served)
    log.info("demo.serving", url=endpoints.http)
    return QueryClient(endpoints.http, key)


def write_results(report: Report, rounds: list[RoundReport], work_dir: str | Path) -> Path:
    """Write ``demo.{md,json}`` under the work dir: the report plus each round's traffic; returns the Markdown path."""
    json_path, md_path = report.write(work_dir, stem="demo")
    payload = json.loads(json_path.read_text())
    payload["rounds"] = [r.__dict__ for r in rounds]
    atomic_write_text(json_path, json.dumps(payload, indent=2))
    atomic_write_text(md_path, md_path.read_text() + "\nFederated rounds (bytes each site sent):\n\n"
                      + traffic_table(rounds) + "\n")
    return md_path
