"""Federated DistilledPRAG against the centralised generator, both evaluated on documents they never saw.

One run, one machine, one base model, one harness and one retrieval:

1. **Training documents**: a benchmark of ``benchmark.people`` people (``benchmark.seed``) split over
   ``benchmark.sites`` sites by Dirichlet(``benchmark.alpha``) over sectors. Each site distils the
   generator on its own passages and their QA pairs, teacher and student both at the site.
2. **Federated**: ``federation.rounds`` rounds of ``distilled.local_steps`` steps at every site, the
   coordinator's weighted FedAvg of the generators (simulation runtime: the same ServerApp and
   ClientApp as a deployment, sites as Ray actors).
3. **Centralised**: the same starting generator distilled on the union of the sites' passages at
   the same rate, twice: for as many steps as one site's path through the rounds (rounds × local
   steps: ``distilled_central``), and for as many as all sites took together (sites × rounds ×
   local steps: ``distilled_central_all_steps``). The federated one is compared with the better.
4. **Evaluation**: another benchmark of as many people (seed + 1), none of them in the training
   documents. Single-hop, held-out-phrasing and multi-hop exact match of both generators and the
   one they started from, beside closed-book and standard RAG.
5. **Traffic**: the bytes each site sends per round (the coordinator's record) and per query (one
   :class:`~fedprag.shared.wire.FactorReply` as it crosses gRPC), and the time per round.

    cd benchmarks && ../.venv/bin/python federated_distilled.py --config federated_distilled.toml
    # writes results/federated_distilled.{json,md}
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import statistics
import time
from pathlib import Path

import torch
from common import setup  # benchmarks/common.py (scripts run from this folder)

from fedprag.client.routing_service import FactorRouter
from fedprag.cluster.simulation import prepare_sites, simulate
from fedprag.coordinator.registry import GeneratorRegistry, registry_dir
from fedprag.shared.data.benchmark import make_benchmark
from fedprag.shared.data.schema import Passage
from fedprag.shared.eval.harness import evaluate
from fedprag.shared.eval.methods import Baseline, build_methods
from fedprag.shared.io import atomic_write_text
from fedprag.shared.lora.layers import attach_lora
from fedprag.shared.methods.distilled.model import DistilledModel
from fedprag.shared.methods.distilled.serializer import starting_encoder
from fedprag.shared.methods.distilled.trainer import Schedule, distil, document_sampler
from fedprag.shared.models.loading import load_causal_lm
from fedprag.shared.retrieval.encoder import SentenceEncoder


def main(argv: list[str] | None = None) -> int:
    args, config = setup(__doc__, "runs/bench-federated-distilled", argv)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    config = dataclasses.replace(config, federation=dataclasses.replace(
        config.federation, mode="distilled", runtime="simulation", work_dir=str(work / "federation"),
        min_sites=1))
    torch.set_num_threads(2)
    base = load_causal_lm(config.model.path)
    layers = attach_lora(base.model)
    training = make_benchmark(config.benchmark)
    unseen = make_benchmark(dataclasses.replace(config.benchmark, seed=config.benchmark.seed + 1))
    overlap = {p.text for p in training.passages} & {p.text for p in unseen.passages}
    if overlap:
        raise RuntimeError(f"{len(overlap)} evaluation passages are also training passages")

    stores = prepare_sites(training, work / "federation" / "sites")
    started = time.perf_counter()
    rounds = simulate(config, len(stores))
    federated_s = time.perf_counter() - started
    released, _ = GeneratorRegistry(registry_dir(config.federation), base.digest).latest(base, layers)
    federated = DistilledModel(released, name="distilled_federated")

    distilled = config.distilled
    initial = DistilledModel(starting_encoder(base, layers, distilled, show_progress=False), name="distilled_start")
    union = [Passage(p.passage_id, 0, p.text) for s in stores for p in s.passages()]
    augmentations = {k: v for s in stores for k, v in s.supplied_augmentations().items()}
    path_steps = config.federation.rounds * distilled.local_steps
    centralised, central_s = [], {}
    for name, steps in (("distilled_central", path_steps), ("distilled_central_all_steps", len(stores) * path_steps)):
        encoder = starting_encoder(base, layers, distilled, show_progress=False)
        started = time.perf_counter()
        distil(encoder, document_sampler(union, augmentations, distilled),
               Schedule(steps, distilled.finetune_lr, decay=False), random.Random(distilled.seed), show_progress=False)
        central_s[name] = time.perf_counter() - started
        centralised.append(DistilledModel(encoder, name=name))

    methods = [*build_methods(["closed_book", "standard_rag"], config.method_configs()),
               Baseline(initial), *map(Baseline, centralised), Baseline(federated)]
    report = evaluate(unseen, base, methods, config.harness, work / "eval", show_progress=False, augment=config.augment)

    router = FactorRouter(stores[0], SentenceEncoder(), released, rounds[-1].version or 0)
    query = SentenceEncoder().embed([unseen.questions[0].text])
    per_query = router.route(query, config.harness.top_k, 1.0)[0].to_proto().ByteSize()

    em = {r.method: {kind: r.scores[kind].em for kind in r.scores} for r in report.results}
    round_bytes = [statistics.median(r.bytes_per_site.values()) for r in rounds if r.bytes_per_site]
    best_central = max(("distilled_central", "distilled_central_all_steps"), key=lambda n: em[n]["single"])
    summary = {
        "exact_match": em,
        "best_centralised": best_central,
        "federated_minus_centralised_single": em["distilled_federated"]["single"] - em[best_central]["single"],
        "bytes_per_site_per_round_median": statistics.median(round_bytes),
        "bytes_per_query_per_site": per_query,
        "seconds_per_round_median": statistics.median(r.seconds for r in rounds if r.seconds),
        "federated_seconds": federated_s, "centralised_seconds": central_s,
        "centralised_steps": {"distilled_central": path_steps, "distilled_central_all_steps": len(stores) * path_steps},
        "sites": len(stores), "passages_per_site": [len(s.passages()) for s in stores],
        "alpha": config.benchmark.alpha, "rounds": config.federation.rounds, "local_steps": distilled.local_steps,
        "start": distilled.start, "finetune_lr": distilled.finetune_lr,
    }
    json_path, md_path = report.write(args.out, stem="federated_distilled")
    payload = json.loads(json_path.read_text())
    payload.update(summary=summary, rounds=[dataclasses.asdict(r) for r in rounds])
    atomic_write_text(json_path, json.dumps(payload, indent=2))
    kinds = report.kinds()
    lines = [
        "", (f"Federated DistilledPRAG: {len(stores)} sites, Dirichlet α={config.benchmark.alpha}, "
             f"{config.federation.rounds} rounds × {distilled.local_steps} steps per site, start = {distilled.start}; "
             f"centralised: {path_steps} and {len(stores) * path_steps} steps on the union. Evaluated on "
             f"{len(unseen.passages)} passages about other "
             f"people (benchmark seed {config.benchmark.seed + 1})."), "",
        "| exact match | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds),
        *[f"| {name} | " + " | ".join(f"{em[name].get(k, float('nan')):.3f}" for k in kinds) + " |"
          for name in ("distilled_start", "distilled_central", "distilled_central_all_steps", "distilled_federated")],
        "", (f"Federated − best centralised ({best_central}), single-hop: "
             f"{summary['federated_minus_centralised_single']:+.3f}"), "",
        "| traffic and time | value |", "|---|---|",
        f"| bytes per site per round (median) | {summary['bytes_per_site_per_round_median']:,.0f} |",
        f"| bytes per query per site (one FactorReply) | {per_query:,} |",
        f"| seconds per round (median, simulation) | {summary['seconds_per_round_median']:.1f} |",
        f"| federated rounds, total seconds | {federated_s:.0f} |",
        *[f"| {name}, distillation seconds | {seconds:.0f} |" for name, seconds in central_s.items()],
    ]
    md_path.write_text(md_path.read_text() + "\n".join(lines) + "\n")
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
