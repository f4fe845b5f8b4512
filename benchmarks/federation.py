"""Federation benchmark: federated Poly-PRAG against centralised, expert-mass against FedAvg, and bytes.

One run on one machine, the default benchmark (6 sites, Dirichlet α=0.1):

1. expert-mass aggregation, the default rounds, evaluated beside closed-book, standard RAG, PRAG
   and centralised Poly-PRAG trained on the union of the data;
2. the same federation with plain FedAvg;
3. the bytes each site sends per round at a second corpus size (twice the passages).

    .venv/bin/python benchmarks/federation.py     # writes benchmarks/results/federation.{json,md}
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from common import setup  # benchmarks/common.py (scripts run from this folder)

from fedprag.cluster.demo import running_federation, traffic_table
from fedprag.shared.eval.federated import evaluate_federation
from fedprag.shared.io import atomic_write_text


def _run(config, work: Path, baselines=()):
    shutil.rmtree(work, ignore_errors=True)
    config = dataclasses.replace(config, federation=dataclasses.replace(config.federation, work_dir=str(work)))
    started = time.perf_counter()
    with running_federation(config, show_progress=False) as federation:
        report = evaluate_federation(federation, config.method_configs(), config.harness, config.augment,
                                     Path(config.federation.work_dir) / "eval", False, baselines)
    return report, federation.rounds, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    args, config = setup(__doc__, "runs/bench-federation", argv)
    work = Path(args.work)
    main_report, main_rounds, main_s = _run(config, work / "expert_mass", ("closed_book", "standard_rag", "prag", "poly"))
    fedavg_config = dataclasses.replace(config, federation=dataclasses.replace(config.federation, strategy="fedavg"))
    fedavg_report, fedavg_rounds, fedavg_s = _run(fedavg_config, work / "fedavg")
    bigger = dataclasses.replace(config, benchmark=dataclasses.replace(config.benchmark, people=2 * config.benchmark.people),
                                 federation=dataclasses.replace(config.federation, rounds=1))
    _, big_rounds, _ = _run(bigger, work / "bigger")

    em = {r.method: r.scores["single"].em for r in main_report.results}
    em["poly_federated_fedavg"] = next(r for r in fedavg_report.results if r.method == "poly_federated").scores["single"].em
    per_site = {config.benchmark.people: statistics.median(main_rounds[0].bytes_per_site.values()),
                bigger.benchmark.people: statistics.median(big_rounds[0].bytes_per_site.values())}
    summary = {
        "single_hop_em": em,
        "federated_minus_centralised": em["poly_federated"] - em["poly"],
        "expert_mass_minus_fedavg": em["poly_federated"] - em["poly_federated_fedavg"],
        "bytes_per_site_per_round_by_passages": per_site,
        "wall_seconds": {"expert_mass": main_s, "fedavg": fedavg_s},
        "rounds": config.federation.rounds, "local_epochs": config.federation.local_epochs,
        "sites": len(main_rounds[0].accepted), "alpha": config.benchmark.alpha,
        "runtime": config.federation.runtime,
    }
    json_path, md_path = main_report.write(args.out, stem="federation")
    payload = json.loads(json_path.read_text())
    payload.update(summary=summary, rounds_expert_mass=[r.__dict__ for r in main_rounds],
                   rounds_fedavg=[r.__dict__ for r in fedavg_rounds])
    atomic_write_text(json_path, json.dumps(payload, indent=2))
    lines = [
        "", (f"Federation: {summary['sites']} sites, Dirichlet α={config.benchmark.alpha}, "
             f"{config.federation.rounds} rounds × {config.federation.local_epochs} local epochs, "
             f"{config.federation.runtime} runtime."), "",
        "| single-hop EM | value |", "|---|---|",
        f"| federated Poly-PRAG, expert-mass aggregation | {em['poly_federated']:.3f} |",
        f"| federated Poly-PRAG, plain FedAvg | {em['poly_federated_fedavg']:.3f} |",
        f"| centralised Poly-PRAG (union of the data) | {em['poly']:.3f} |",
        f"| federated − centralised | {summary['federated_minus_centralised']:+.3f} |",
        f"| expert-mass − FedAvg | {summary['expert_mass_minus_fedavg']:+.3f} |",
        "", "Bytes each site sends per round (median over sites):", "", "| passages | bytes |", "|---|---|",
        *[f"| {n} | {b:,.0f} |" for n, b in per_site.items()],
        "", "Rounds (expert-mass):", "", traffic_table(main_rounds),
        "", "Rounds (FedAvg):", "", traffic_table(fedavg_rounds),
    ]
    atomic_write_text(md_path, md_path.read_text() + "\n".join(lines) + "\n")
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
