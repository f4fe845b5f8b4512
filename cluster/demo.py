"""The main job's federation half, ``fedprag demo``: a whole federation on one machine.

1. Build (or load) the base model and generate the benchmark, split over sites by Dirichlet(α).
2. Lay out one site store per data owner; text stays in those stores.
3. Run the federated rounds: a SuperLink (the coordinator's ServerApp) and one SuperNode per site
   as separate processes over TLS with node authentication (or, with ``federation.runtime =
   "simulation"``, every site as a Ray actor).
4. Start each site's routing service and the query API's fan-out over them.

:func:`fedprag.shared.eval.federated.evaluate_federation` then answers every test question through
that fan-out and puts federated Poly-PRAG beside the centralised methods; :func:`write_results`
adds the bytes each site sent.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from fedprag.client.routing_service import SiteRouter
from fedprag.cluster.deployment import federate
from fedprag.cluster.fanout import FanOut
from fedprag.cluster.simulation import prepare_sites
from fedprag.coordinator.app import RoundReport, registry_dir
from fedprag.coordinator.registry import PoolRegistry
from fedprag.shared.config import FedpragConfig
from fedprag.shared.data.benchmark import make_benchmark
from fedprag.shared.data.schema import Dataset
from fedprag.shared.eval.report import Report
from fedprag.shared.io import atomic_write_text, dir_bytes
from fedprag.shared.log import get_logger
from fedprag.shared.methods.poly.layers import ExpertPool
from fedprag.shared.models.loading import BaseModel, load_causal_lm
from fedprag.shared.retrieval.encoder import SentenceEncoder

log = get_logger(__name__)


@dataclass
class Federation:
    """A finished federation: its data, base model, latest pool, the sites' fan-out and its rounds."""

    dataset: Dataset
    base: BaseModel
    pool: ExpertPool
    pool_bytes: int
    fanout: FanOut
    rounds: list[RoundReport]


def traffic_table(reports: list[RoundReport]) -> str:
    """Markdown: per round, the sites that contributed and the bytes each sent."""
    lines = ["| round | pool version | sites accepted | rejected | bytes per site (median) |", "|---|---|---|---|---|"]
    for r in reports:
        sent = statistics.median(r.bytes_per_site.values()) if r.bytes_per_site else 0
        lines.append(f"| {r.round} | {r.version if r.version is not None else '–'} | {len(r.accepted)} | "
                     f"{len(r.rejected)} | {sent:,.0f} |")
    return "\n".join(lines)


def run_federation(config: FedpragConfig, show_progress: bool = True) -> Federation:
    """Steps 1–4 of the module docstring."""
    federation = config.federation
    work = Path(federation.work_dir)
    base = load_causal_lm(config.model.path, show_progress=show_progress)
    dataset = make_benchmark(config.benchmark)
    stores = prepare_sites(dataset, work / "sites")
    log.info("demo.sites", sites=len(stores), passages=[len(s.passages()) for s in stores])
    reports = federate(config, [s.root for s in stores])
    registry = PoolRegistry(registry_dir(federation), base.digest)
    latest = registry.latest()
    if latest is None:
        raise RuntimeError("the federation published no pool; see the coordinator log")
    pool, manifest = latest
    encoder = SentenceEncoder()
    routers = [SiteRouter(s, encoder, base.digest, pool) for s in stores]
    pool_bytes = dir_bytes(registry.path(manifest["version"]))
    return Federation(dataset, base, pool, pool_bytes, FanOut(routers, config.harness.top_k, config.poly), reports)


def write_results(report: Report, rounds: list[RoundReport], work_dir: str | Path) -> Path:
    """Write ``demo.{md,json}`` under the work dir: the report plus each round's traffic; returns the Markdown path."""
    json_path, md_path = report.write(work_dir, stem="demo")
    payload = json.loads(json_path.read_text())
    payload["rounds"] = [r.__dict__ for r in rounds]
    atomic_write_text(json_path, json.dumps(payload, indent=2))
    atomic_write_text(md_path, md_path.read_text() + "\nFederated rounds (bytes each site sent):\n\n"
                      + traffic_table(rounds) + "\n")
    return md_path
