"""Poly-PRAG incremental ("Poly-z") encoding against the size of the routing row.

Incremental encoding trains only new passages' routing rows against a frozen expert pool. This
benchmark asks what limits it: the pool is fitted to the benchmark's even passages (optionally
also to a population of other people), then routing rows are trained for the odd passages, and
each added passage's single-hop questions are answered under that passage's own routing (no
retrieval, so only the encoding is measured).

* All-layer variants grow the row (per-layer routing, more experts) and the training (more
  incremental epochs); their reference trains the default pool and routing on all passages.
* Last-layer variants use ``poly_last_layer.toml``: 128 rank-1 experts on the last layer's FFN
  output projection only, fitted to 2,000 other people, so that the pool learns to decode routing
  rows; new rows take a few full-batch steps on cached answer states. They are compared with the
  same pool trained on the other people and all passages.

It reports the incremental time per passage against PRAG's training of the same passages, the
bytes of the pool plus 1,000 rows against 1,000 PRAG LoRAs, and how many of the added passages'
answers occur among the answers of the benchmark passages the pool was fitted to.

    cd benchmarks && ../.venv/bin/python poly_incremental.py   # writes results/poly_incremental.{json,md}
    ../.venv/bin/python poly_incremental.py --only last --stem poly_incremental_last
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from common import augmentations_for, prag_bytes_at, setup  # benchmarks/common.py (scripts run from this folder)

from fedprag.shared import prompts
from fedprag.shared.config import load_config
from fedprag.shared.data.benchmark import make_benchmark, synthetic_population
from fedprag.shared.data.schema import Dataset, Passage, Question
from fedprag.shared.eval.resources import machine_description
from fedprag.shared.io import atomic_write_text
from fedprag.shared.lora.layers import LoRALinear, applied, attach_lora
from fedprag.shared.methods.poly import PolyConfig
from fedprag.shared.methods.poly import serializer as poly_serializer
from fedprag.shared.methods.poly.layers import ExpertPool, RoutingTable
from fedprag.shared.methods.poly.trainer import TrainedPool, encode_incremental, train_pool
from fedprag.shared.methods.prag import PRAGConfig
from fedprag.shared.methods.prag.layers import PRAGAdapters
from fedprag.shared.methods.prag.trainer import encode_passages
from fedprag.shared.metrics import exact_match
from fedprag.shared.models.generate import generate_answers
from fedprag.shared.models.loading import BaseModel, load_causal_lm

POPULATION = 240  # other people the all-layer population variant's pool is also fitted to
LAST_LAYER = Path(__file__).resolve().parent / "poly_last_layer.toml"  # the last-layer pool's settings


@dataclasses.dataclass(frozen=True)
class Variant:
    """One pool (placement, routing mode, experts, population) and how long its new rows train."""

    label: str
    routing: str = "shared"
    n_experts: int = 20
    incremental_epochs: int = 2
    population: int = 0
    layers: str = "all"

    def config(self, base: PolyConfig, last_layer: PolyConfig) -> PolyConfig:
        if self.layers == "last":
            return dataclasses.replace(last_layer, incremental_epochs=self.incremental_epochs)
        return dataclasses.replace(base, routing=self.routing, n_experts=self.n_experts,
                                   top_m=min(base.top_m, self.n_experts), incremental_epochs=self.incremental_epochs)

    @property
    def pool_key(self) -> tuple[str, str, int, int]:
        return self.layers, self.routing, self.n_experts, self.population

    @property
    def reference(self) -> Variant:
        """Its full-training counterpart: the default pool for all-layer variants, the same pool otherwise."""
        if self.layers == "all":
            return Variant("reference: pool and routing trained on all passages")
        return dataclasses.replace(self, label=f"reference: last-layer pool trained on the {self.population:,} "
                                               "other people and all passages")


def variants(last_layer: PolyConfig) -> list[Variant]:
    """Every variant; the last-layer ones use ``last_layer``'s pool with more or fewer row steps."""
    def last(steps: int) -> Variant:
        return Variant(f"last-layer pool ({last_layer.n_experts} experts on {', '.join(last_layer.targets)}), fitted "
                       f"to {last_layer.incremental_population:,} other people, {steps} steps",
                       n_experts=last_layer.n_experts, incremental_epochs=steps,
                       population=last_layer.incremental_population, layers="last")
    return [
        Variant("default: shared row, 2 epochs"),
        Variant("shared row, 20 epochs", incremental_epochs=20),
        Variant("per-layer rows, 20 epochs", routing="per_layer", incremental_epochs=20),
        Variant("per-layer rows, 80 experts, 20 epochs", routing="per_layer", n_experts=80, incremental_epochs=20),
        Variant(f"shared row, pool also fitted to {POPULATION} other people, 20 epochs", incremental_epochs=20,
                population=POPULATION),
        *(last(steps) for steps in (6, 8, 10, 12, 20)),
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


def answer_coverage(dataset: Dataset, initial: list[Passage], added: list[Passage]) -> float:
    """Share of the added passages' single-hop questions whose answer is among the initial passages' answers."""
    seen = {a.lower() for q in single_hop(dataset, initial) for a in q.answers}
    return statistics.fmean(any(a.lower() in seen for a in q.answers) for q in single_hop(dataset, added))


def stored_bytes(base: BaseModel, pool: ExpertPool, poly: PolyConfig, prag_like: PRAGAdapters, prag: PRAGConfig,
                 scratch: Path, passages: int = 1000) -> dict[str, float]:
    """Pool plus ``passages`` routing rows against as many per-passage LoRAs (real files)."""
    rows = RoutingTable([f"x{i}" for i in range(passages)], torch.zeros(passages, pool.n_groups, pool.n_experts))
    pool_bytes = poly_serializer.save_pool(scratch / "pool", pool, poly, base.digest)
    routing_bytes = poly_serializer.save_routing(scratch / "routing", rows, pool, base.digest)
    prag_bytes = prag_bytes_at(passages, prag_like, prag, base.digest, scratch / "prag")
    return {"pool_bytes": pool_bytes, "routing_bytes": routing_bytes, "prag_bytes": prag_bytes,
            "storage_ratio": prag_bytes / (pool_bytes + routing_bytes)}


def main(argv: list[str] | None = None) -> int:
    args, config = setup(__doc__, "runs/bench-poly-incremental", argv, extra={
        "--only": {"choices": ["all", "last"], "help": "run only the all-layer or only the last-layer variants"},
        "--repeats": {"type": int, "default": 3, "help": "timings of each incremental encoding (median)"},
        "--stem": {"default": "poly_incremental", "help": "result file name, without extension"},
        "--population": {"type": int, "help": "other people the last-layer pool is fitted to (default: "
                                              "poly.incremental_population of poly_last_layer.toml)"}})
    base = load_causal_lm(config.model.path)
    layers = attach_lora(base.model)
    dataset = make_benchmark(config.benchmark)
    augmentations = augmentations_for(config, base, dataset, Path(args.work))
    initial, added = dataset.passages[0::2], dataset.passages[1::2]
    last_layer = load_config(str(LAST_LAYER)).poly
    if args.population is not None:
        last_layer = dataclasses.replace(last_layer, incremental_population=args.population)
    chosen = [v for v in variants(last_layer) if args.only in (None, v.layers)]
    populations = {n: synthetic_population(n) for n in {v.population for v in chosen if v.population}}
    every_augmentation = dict(augmentations)
    for _, other_augmentations in populations.values():
        every_augmentation |= other_augmentations

    prag_seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        prag_adapters = encode_passages(base, layers, added, augmentations, config.prag, show_progress=False)
        prag_seconds.append((time.perf_counter() - started) / len(added))
    prag_per_passage = statistics.median(prag_seconds)

    def fitted(variant: Variant, passages: list[Passage]) -> list[Passage]:
        return passages + (populations[variant.population][0] if variant.population else [])

    rows = []
    references: dict[tuple[str, str, int, int], float] = {}
    for reference in {v.reference.pool_key: v.reference for v in chosen}.values():  # trained on the added ones too
        full = train_pool(base, layers, fitted(reference, dataset.passages), every_augmentation,
                          reference.config(config.poly, last_layer), show_progress=True)
        references[reference.pool_key] = single_hop_em(base, layers, full.pool, full.routing, dataset, added)
        rows.append({"variant": reference.label, "routing_numbers": full.routing.logits[0].numel(),
                     "em_added": references[reference.pool_key],
                     "em_initial": single_hop_em(base, layers, full.pool, full.routing, dataset, initial)})
        print(json.dumps(rows[-1]), flush=True)
    pools: dict[tuple[str, str, int, int], TrainedPool] = {}
    for variant in chosen:
        poly = variant.config(config.poly, last_layer)
        if variant.pool_key not in pools:
            pools[variant.pool_key] = train_pool(base, layers, fitted(variant, initial), every_augmentation, poly,
                                                 show_progress=True)
        trained = pools[variant.pool_key]
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            new_rows = encode_incremental(base, layers, trained.pool, added, augmentations, poly, show_progress=False)
            seconds.append((time.perf_counter() - started) / len(added))
        reference = references[variant.reference.pool_key]
        em_added = single_hop_em(base, layers, trained.pool, new_rows, dataset, added)
        rows.append({"variant": variant.label, "routing_numbers": new_rows.logits[0].numel(),
                     "incremental_epochs": variant.incremental_epochs, "em_added": em_added,
                     "em_full_training": reference, "points_below_full": 100 * (reference - em_added),
                     "em_initial": single_hop_em(base, layers, trained.pool, trained.routing, dataset, initial),
                     "incremental_seconds_per_passage": statistics.median(seconds),
                     "vs_prag": statistics.median(seconds) / prag_per_passage,
                     **stored_bytes(base, trained.pool, poly, prag_adapters, config.prag, Path(args.work) / "storage")})
        print(json.dumps(rows[-1]), flush=True)

    payload = {"machine": machine_description(), "base_model": base.path.name, "base_model_digest": base.digest[:16],
               "passages_initial": len(initial), "passages_added": len(added),
               "populations": sorted(populations), "prag_seconds_per_passage": prag_per_passage,
               "answer_coverage": answer_coverage(dataset, initial, added), "rows": rows}
    out = Path(args.out)
    atomic_write_text(out / f"{args.stem}.json", json.dumps(payload, indent=2))
    lines = [
        (f"Base model `{payload['base_model']}` ({payload['base_model_digest']}); pool fitted to {len(initial)} passages "
         f"(plus, where named, other people), routing rows trained for {len(added)} added passages; EM on the added "
         "passages' single-hop questions, each under its own passage's routing. Storage: pool plus 1,000 routing "
         "rows against 1,000 PRAG LoRAs (real files)."), "",
        ("| variant | routing numbers per passage | EM added passages | EM full training | points below | "
         "EM pool's own passages | incremental s/passage | × PRAG's time | PRAG / Poly bytes at 1,000 |"),
        "|---|---|---|---|---|---|---|---|---|",
        *[(f"| {r['variant']} | {r['routing_numbers']} | {r['em_added']:.3f} | "
           + (f"{r['em_full_training']:.3f} | {r['points_below_full']:.1f} | " if "vs_prag" in r else "– | – | ")
           + f"{r['em_initial']:.3f} | "
           + (f"{r['incremental_seconds_per_passage']:.4f} | {r['vs_prag']:.2f}× | {r['storage_ratio']:.1f}× |"
              if "vs_prag" in r else "– | – | – |"))
          for r in rows], "",
        (f"Answers of the added passages' single-hop questions that occur among the answers of the pool's "
         f"passages (benchmark passages only): {payload['answer_coverage']:.0%}. PRAG trains the added passages in "
         f"{prag_per_passage:.4f} s per passage; every time is the median of {args.repeats}."), "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in payload["machine"].items()) + ".",
    ]
    atomic_write_text(out / f"{args.stem}.md", "\n".join(lines) + "\n")
    print((out / f"{args.stem}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
