"""Round time: the deployment runtime against the Ray simulation, side by side.

The deployment runtime is a SuperLink and one site daemon per site, as processes over TLS with
node authentication; each daemon holds the base model warm, and the ClientApp its SuperNode starts
for a message hands the round to it. The simulation runs every site as a Ray actor in one process.

Both train the same federation (the default benchmark's sites, the default pool and local epochs)
from a fresh registry, alternately, ``--repeats`` times. A round's time is the coordinator's wall
time from broadcast to publish, the same in both runtimes; start-up (processes, Ray) is not in it.
Round i of a deployment run is paired with round i of the simulation run beside it; the headline
is the median of those per-round ratios over rounds 2 and later, where the simulation's actors
have loaded the model too (round 1 is reported apart).

    .venv/bin/python benchmarks/rounds.py       # writes benchmarks/results/rounds.{json,md}
    .venv/bin/python benchmarks/rounds.py --config benchmarks/poly_all_layers.toml --stem rounds_all_layers
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import sys
from pathlib import Path

from common import setup  # benchmarks/common.py (scripts run from this folder)

from fedprag.cluster.deployment import federate
from fedprag.cluster.simulation import prepare_sites
from fedprag.coordinator.app import recorded_rounds
from fedprag.coordinator.registry import registry_dir
from fedprag.shared.data.benchmark import make_benchmark
from fedprag.shared.eval.resources import machine_description
from fedprag.shared.io import atomic_write_text

RUNTIMES = ("deployment", "simulation")


def round_seconds(config, work: Path, runtime: str) -> list[float]:
    """Run the federation from nothing under ``runtime``; returns each round's seconds."""
    shutil.rmtree(work, ignore_errors=True)
    config = dataclasses.replace(config, federation=dataclasses.replace(config.federation, work_dir=str(work),
                                                                        runtime=runtime))
    stores = prepare_sites(make_benchmark(config.benchmark), work / "sites")
    federate(config, [s.root for s in stores])
    return [r.seconds for r in recorded_rounds(registry_dir(config.federation))]


def main(argv: list[str] | None = None) -> int:
    args, config = setup(__doc__, "runs/bench-rounds", argv, extra={
        "--repeats": {"type": int, "default": 2, "help": "alternating runs of each runtime"},
        "--rounds": {"type": int, "default": 3, "help": "rounds per run"},
        "--stem": {"default": "rounds", "help": "results file name (without .json/.md)"}})
    config = dataclasses.replace(config, federation=dataclasses.replace(config.federation, rounds=args.rounds))
    runs: dict[str, list[list[float]]] = {name: [] for name in RUNTIMES}
    for repeat in range(args.repeats):
        for name in (RUNTIMES if repeat % 2 == 0 else RUNTIMES[::-1]):
            runs[name].append(round_seconds(config, Path(args.work) / name, name))
    pairs = [(d, s) for dep, sim in zip(runs["deployment"], runs["simulation"]) for d, s in zip(dep[1:], sim[1:])]
    warm = [d / s for d, s in pairs]
    first = [dep[0] / sim[0] for dep, sim in zip(runs["deployment"], runs["simulation"])]
    summary = {
        "machine": machine_description(), "sites": config.benchmark.sites, "passages": config.benchmark.people,
        "rounds": args.rounds, "repeats": args.repeats, "local_epochs": config.federation.local_epochs,
        "round_seconds": runs, "median_seconds_warm": {
            name: statistics.median(t for run in runs[name] for t in run[1:]) for name in RUNTIMES},
        "deployment_vs_simulation_warm": statistics.median(warm),
        "deployment_minus_simulation_warm_s": statistics.median(d - s for d, s in pairs),
        "deployment_vs_simulation_round_1": statistics.median(first),
    }
    out = Path(args.out)
    atomic_write_text(out / f"{args.stem}.json", json.dumps(summary, indent=2))
    machine = ", ".join(f"{k} {v}" for k, v in summary["machine"].items())
    lines = [
        (f"Round time, deployment runtime (SuperLink + {config.benchmark.sites} site daemons as processes, TLS, "
         f"node auth) against the Ray simulation, on the default benchmark ({config.benchmark.people} passages), "
         f"{args.rounds} rounds × {config.federation.local_epochs} local epochs, {args.repeats} alternating runs "
         "of each. A round is timed at the coordinator, broadcast to publish."), "",
        "| run | round | deployment s | simulation s | difference s | ratio |", "|---|---|---|---|---|---|",
        *[f"| {r + 1} | {i + 1} | {d:.1f} | {s:.1f} | {d - s:+.1f} | {d / s:.2f}× |"
          for r, (dep, sim) in enumerate(zip(runs["deployment"], runs["simulation"]))
          for i, (d, s) in enumerate(zip(dep, sim))],
        "", (f"Deployed minus simulated round time, median of per-round differences over rounds 2 and later: "
             f"**{summary['deployment_minus_simulation_warm_s']:+.1f} s**; the median of per-round ratios is "
             f"{summary['deployment_vs_simulation_warm']:.2f}× (round 1, where the simulation's actors also "
             f"load the model: {summary['deployment_vs_simulation_round_1']:.2f}×)."), "",
        f"Machine: {machine}.",
    ]
    atomic_write_text(out / f"{args.stem}.md", "\n".join(lines) + "\n")
    print((out / f"{args.stem}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
