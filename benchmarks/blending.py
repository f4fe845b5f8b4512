"""Blending at the site: what one mixture per site costs against the exact blend of passages' rows.

A site's routing reply carries one expert mixture (its top-k passages' routing rows blended by
score), never a passage's own row. This runs the default federation (Ray simulation runtime,
6 sites, the default pool), then answers every question of the default benchmark twice in one
run, with the same pool and the same retrieval:

* ``poly_federated``: the mixtures the sites send, weighed by their share of the global top-k;
* ``poly_federated_rows``: the exact blend of the global top-k passages' own rows, which no site
  sends; computed here, in one process that opens every store, for this measurement only.

    .venv/bin/python benchmarks/blending.py     # writes benchmarks/results/blending.{json,md}
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import setup  # benchmarks/common.py (scripts run from this folder)

from fedprag.client.routing_service import SiteRouter
from fedprag.cluster.serving.fanout import FanOut
from fedprag.cluster.serving.modes import serving_mode
from fedprag.cluster.simulation import prepare_sites, simulate
from fedprag.coordinator.registry import PoolRegistry, registry_dir
from fedprag.shared.data.benchmark import make_benchmark
from fedprag.shared.eval.harness import evaluate
from fedprag.shared.eval.methods import Routed
from fedprag.shared.io import atomic_write_text
from fedprag.shared.methods.base import Routing
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.layers import combine
from fedprag.shared.methods.poly.model import PolyModel
from fedprag.shared.models.loading import load_causal_lm
from fedprag.shared.retrieval.encoder import SentenceEncoder


@dataclasses.dataclass
class InProcessSite:
    """A site's router called directly (this benchmark opens the stores; a deployment never does)."""

    name: str
    router: SiteRouter

    def route(self, query_embeddings, k, score_temperature):
        return self.router.route(query_embeddings, k, score_temperature)

    def rows(self, query_embeddings: np.ndarray, k: int) -> list[list[tuple[float, np.ndarray]]]:
        """Per query, the site's top-k passages' scores and their own routing rows."""
        scores, rows = self.router.index.search(query_embeddings, k)
        return [[(float(s), self.router.weights[int(r)]) for s, r in zip(srow, rrow) if r >= 0]
                for srow, rrow in zip(scores, rows)]


def exact_rows(sites: list[InProcessSite], k: int, config: PolyConfig) -> Callable[[np.ndarray], list[Routing]]:
    """The exact blend of the global top-k passages' own rows, per query (evaluation only)."""
    def routings(query_embeddings: np.ndarray) -> list[Routing]:
        per_site = [site.rows(query_embeddings, k) for site in sites]
        out = []
        for q in range(len(query_embeddings)):
            hits = sorted((h for site in per_site for h in site[q]), key=lambda h: -h[0])[:k]
            scores = torch.tensor([s for s, _ in hits])
            rows = torch.from_numpy(np.stack([w for _, w in hits]))
            out.append(Routing(scores=tuple(scores.tolist()),
                               weights=combine(rows[None], scores[None], config.top_m, config.score_temperature)[0]))
        return out
    return routings


def main(argv: list[str] | None = None) -> int:
    args, config = setup(__doc__, "runs/bench-blending", argv)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    config = dataclasses.replace(config, federation=dataclasses.replace(config.federation, work_dir=str(work),
                                                                        runtime="simulation"))
    dataset = make_benchmark(config.benchmark)
    stores = prepare_sites(dataset, work / "sites")
    simulate(config, len(stores))
    base = load_causal_lm(config.model.path)
    pool, _ = PoolRegistry(registry_dir(config.federation), base.digest).latest()
    encoder = SentenceEncoder()
    sites = [InProcessSite(s.root.name, SiteRouter(s, encoder, base.digest, pool)) for s in stores]
    k = config.harness.top_k
    methods = [Routed(PolyModel(pool, config.poly, name="poly_federated"), FanOut(sites, k, config.poly, serving_mode("poly")).routings),
               Routed(PolyModel(pool, config.poly, name="poly_federated_rows"), exact_rows(sites, k, config.poly))]
    report = evaluate(dataset, base, methods, config.harness, work / "eval", show_progress=False,
                      augment=config.augment)
    em = {r.method: r.scores["single"].em for r in report.results}
    _, md_path = report.write(args.out, stem="blending")
    atomic_write_text(md_path, md_path.read_text() + (
        f"\nOne run, {len(stores)} sites, {config.federation.rounds} rounds (simulation runtime), the default pool. "
        f"Single-hop exact match with the mixtures sites send: {em['poly_federated']:.3f}; with the exact blend of "
        f"the global top-{k} passages' own rows, which no site sends: {em['poly_federated_rows']:.3f} "
        f"({em['poly_federated'] - em['poly_federated_rows']:+.3f}).\n"))
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
