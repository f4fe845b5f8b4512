"""Poly-PRAG incremental ("Poly-z") encoding against the size of the routing row.

Incremental encoding trains only new passages' routing rows against a frozen expert pool. This
benchmark asks what limits it: the pool is fitted to the benchmark's even passages (optionally
also to a population of other people), then routing rows are trained for the odd passages, and
each added passage's single-hop questions are answered under that passage's own routing (no
retrieval, so only the encoding is measured). Variants grow the row (per-layer routing, more
experts) and the training (more incremental epochs); a reference trains pool and routing on all
passages. It also reports how many of the added passages' answers occur among the answers the
pool was fitted to, and the incremental time per passage against PRAG's training of the same
passages (median of three timings).

    cd benchmarks && ../.venv/bin/python poly_incremental.py   # writes results/poly_incremental.{json,md}
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from common import setup  # benchmarks/common.py (scripts run from this folder)

from shared import prompts
from shared.data.augment import augmentations_of
from shared.data.benchmark import BenchmarkSpec, make_benchmark
from shared.data.schema import Augmentation, Dataset, Passage, Question
from shared.eval.generate import generate_answers
from shared.eval.metrics import exact_match
from shared.eval.resources import machine_description
from shared.io import atomic_write_text
from shared.lora.layers import LoRALinear, applied, attach_lora
from shared.methods.poly import ExpertPool, PolyConfig, RoutingTable
from shared.methods.poly.trainer import TrainedPool, encode_incremental, train_pool
from shared.methods.prag.trainer import encode_passages
from shared.models.loading import BaseModel, load_causal_lm

POPULATION = 240  # other people the population variant's pool is also fitted to


@dataclasses.dataclass(frozen=True)
class Variant:
    """One pool (routing mode, experts, population) and how long its new rows train."""

    label: str
    routing: str = "shared"
    n_experts: int = 20
    incremental_epochs: int = 2
    population: bool = False

    def config(self, base: PolyConfig) -> PolyConfig:
        return dataclasses.replace(base, routing=self.routing, n_experts=self.n_experts,
                                   top_m=min(base.top_m, self.n_experts), incremental_epochs=self.incremental_epochs)


VARIANTS = [
    Variant("default: shared row, 2 epochs"),
    Variant("shared row, 20 epochs", incremental_epochs=20),
    Variant("per-layer rows, 20 epochs", routing="per_layer", incremental_epochs=20),
    Variant("per-layer rows, 80 experts, 20 epochs", routing="per_layer", n_experts=80, incremental_epochs=20),
    Variant(f"shared row, pool also fitted to {POPULATION} other people, 20 epochs", incremental_epochs=20,
            population=True),
]


def single_hop(dataset: Dataset, passages: list[Passage]) -> list[Question]:
    """The single-hop questions whose gold passage is one of ``passages``."""
    ids = {p.passage_id for p in passages}
    return [q for q in dataset.questions if q.kind == "single" and q.gold_passage_ids[0] in ids]


def single_hop_em(base: BaseModel, layers: dict[str, LoRALinear], pool: ExpertPool, routing: RoutingTable,
                  dataset: Dataset, passages: list[Passage]) -> float:
    """Exact match on the passages' single-hop questions, each under its gold passage's routing."""
    questions = single_hop(dataset, passages)
    predictions: list[str] = []
    for start in range(0, len(questions), 64):
        chunk = questions[start:start + 64]
        with applied(layers, pool.adapter(routing.weights([q.gold_passage_ids[0] for q in chunk]))):
            predictions += generate_answers(base.model, base.tokenizer, [prompts.closed_book(q.text) for q in chunk])
    return statistics.fmean(exact_match(p, q.answers) for p, q in zip(predictions, questions))


def population() -> tuple[list[Passage], dict[str, Augmentation]]:
    """Passages and augmentations about other people, under ids that cannot clash with the benchmark's."""
    others = make_benchmark(BenchmarkSpec(people=POPULATION, sites=1, seed=77))
    passages = [dataclasses.replace(p, passage_id=f"population-{p.passage_id}") for p in others.passages]
    augmentations = {f"population-{pid}": a for pid, a in augmentations_of(others).items()}
    return passages, augmentations


def answer_coverage(dataset: Dataset, initial: list[Passage], added: list[Passage]) -> float:
    """Share of the added passages' single-hop questions whose answer is among the initial passages' answers."""
    seen = {a.lower() for q in single_hop(dataset, initial) for a in q.answers}
    return statistics.fmean(any(a.lower() in seen for a in q.answers) for q in single_hop(dataset, added))


def main(argv: list[str] | None = None) -> int:
    args, config = setup(__doc__, "runs/bench-poly-incremental", argv)
    base = load_causal_lm(config.model.path)
    layers = attach_lora(base.model)
    dataset = make_benchmark(config.benchmark)
    augmentations = augmentations_of(dataset)
    initial, added = dataset.passages[0::2], dataset.passages[1::2]
    others, other_augmentations = population()
    every_augmentation = {**augmentations, **other_augmentations}

    prag_seconds = []
    for _ in range(3):
        started = time.perf_counter()
        encode_passages(base, layers, added, augmentations, config.prag, show_progress=False)
        prag_seconds.append((time.perf_counter() - started) / len(added))
    prag_per_passage = statistics.median(prag_seconds)

    full = train_pool(base, layers, dataset.passages, augmentations, config.poly, show_progress=True)
    rows = [{"variant": "reference: pool and routing trained on all passages", "routing_numbers": full.routing.logits[0].numel(),
             "em_added": single_hop_em(base, layers, full.pool, full.routing, dataset, added),
             "em_initial": single_hop_em(base, layers, full.pool, full.routing, dataset, initial)}]
    pools: dict[tuple[str, int, bool], TrainedPool] = {}
    for variant in VARIANTS:
        poly = variant.config(config.poly)
        key = (variant.routing, variant.n_experts, variant.population)
        if key not in pools:
            fitted = initial + (others if variant.population else [])
            pools[key] = train_pool(base, layers, fitted, every_augmentation, poly, show_progress=True)
        trained = pools[key]
        started = time.perf_counter()
        new_rows = encode_incremental(base, layers, trained.pool, added, augmentations, poly, show_progress=True)
        seconds = (time.perf_counter() - started) / len(added)
        rows.append({"variant": variant.label, "routing_numbers": new_rows.logits[0].numel(),
                     "incremental_epochs": variant.incremental_epochs,
                     "em_added": single_hop_em(base, layers, trained.pool, new_rows, dataset, added),
                     "em_initial": single_hop_em(base, layers, trained.pool, trained.routing, dataset, initial),
                     "incremental_seconds_per_passage": seconds, "vs_prag": seconds / prag_per_passage})
        print(json.dumps(rows[-1]), flush=True)

    payload = {"machine": machine_description(), "base_model": base.path.name, "base_model_digest": base.digest[:16],
               "passages_initial": len(initial), "passages_added": len(added), "population": POPULATION,
               "prag_seconds_per_passage": prag_per_passage, "answer_coverage": answer_coverage(dataset, initial, added),
               "rows": rows}
    out = Path(args.out)
    atomic_write_text(out / "poly_incremental.json", json.dumps(payload, indent=2))
    lines = [
        (f"Base model `{payload['base_model']}` ({payload['base_model_digest']}); pool fitted to {len(initial)} passages, routing rows "
         f"trained for {len(added)} added passages; EM on the added passages' single-hop questions, each "
         "under its own passage's routing."), "",
        "| variant | routing numbers per passage | EM added passages | EM pool's own passages | incremental s/passage | × PRAG's time |",
        "|---|---|---|---|---|---|",
        *[(f"| {r['variant']} | {r['routing_numbers']} | {r['em_added']:.3f} | {r['em_initial']:.3f} | "
           + (f"{r['incremental_seconds_per_passage']:.4f} | {r['vs_prag']:.2f}× |" if "vs_prag" in r else "– | – |"))
          for r in rows], "",
        (f"Answers of the added passages' single-hop questions that occur among the answers of the pool's "
         f"passages: {payload['answer_coverage']:.0%}. PRAG trains the added passages in {prag_per_passage:.4f} s "
         "per passage (median of 3)."), "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in payload["machine"].items()) + ".",
    ]
    atomic_write_text(out / "poly_incremental.md", "\n".join(lines) + "\n")
    print((out / "poly_incremental.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
