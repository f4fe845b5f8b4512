"""The main job, ``fedprag demo``: a whole federation on one machine, then the results table.

1. Build (or load) the base model and generate the benchmark, split over sites by Dirichlet(α).
2. Lay out one site store per data owner; text stays in those stores.
3. Run the federated rounds: a SuperLink (the coordinator's ServerApp) and one SuperNode per site
   as separate processes over TLS with node authentication (or, with ``federation.runtime =
   "simulation"``, every site as a Ray actor).
4. Answer every test question through routed inference: each site's routing service searches its
   own index and returns opaque ids, scores and routing vectors; the query API mixes the latest
   federated pool. The table puts federated Poly-PRAG beside centralised Poly-PRAG (trained on the
   union of the data), PRAG, standard RAG and closed-book, and lists the bytes each site sent.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from client.routing_service import SiteRouter
from cluster.deployment import federate
from cluster.fanout import FederatedPoly
from cluster.simulation import prepare_sites
from coordinator.app import RoundReport, registry_dir
from coordinator.registry import PoolRegistry
from shared.config import FedpragConfig
from shared.data.benchmark import make_benchmark
from shared.eval.harness import evaluate
from shared.eval.methods import build_methods
from shared.eval.report import Report
from shared.io import atomic_write_text
from shared.log import get_logger
from shared.models.loading import load_causal_lm
from shared.retrieval.encoder import SentenceEncoder

log = get_logger(__name__)
BASELINES = ("closed_book", "standard_rag", "standard_rag_top1", "prag", "poly")


def traffic_table(reports: list[RoundReport]) -> str:
    """Markdown: per round, the sites that contributed and the bytes each sent."""
    lines = ["| round | pool version | sites accepted | rejected | bytes per site (median) |", "|---|---|---|---|---|"]
    for r in reports:
        sent = statistics.median(r.bytes_per_site.values()) if r.bytes_per_site else 0
        lines.append(f"| {r.round} | {r.version if r.version is not None else '–'} | {len(r.accepted)} | "
                     f"{len(r.rejected)} | {sent:,.0f} |")
    return "\n".join(lines)


def run_demo(config: FedpragConfig, show_progress: bool = True,
             baselines: tuple[str, ...] = BASELINES) -> tuple[Report, list[RoundReport]]:
    """Run the federation and the evaluation; writes ``demo.{md,json}`` under the federation work dir."""
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
    routers = [SiteRouter(s, encoder, base.digest, pool.n_groups, pool.n_experts) for s in stores]
    pool_bytes = sum(f.stat().st_size for f in registry.path(manifest["version"]).iterdir())
    federated = FederatedPoly(pool, routers, config.poly, pool_bytes, config.harness.top_k)
    methods = [*build_methods(list(baselines), config.prag, config.poly), federated]
    report = evaluate(dataset, base, methods, config.harness, work / "eval", show_progress)
    json_path, md_path = report.write(work, stem="demo")
    payload = json.loads(json_path.read_text())
    payload["rounds"] = [r.__dict__ for r in reports]
    atomic_write_text(json_path, json.dumps(payload, indent=2))
    atomic_write_text(md_path, md_path.read_text() + "\nFederated rounds (bytes each site sent):\n\n"
                      + traffic_table(reports) + "\n")
    return report, reports
