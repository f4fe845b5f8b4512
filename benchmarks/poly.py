"""Poly-PRAG benchmark: every method side by side, plus storage, incremental encoding and throughput.

One run, one machine, one base model, one dataset and one retrieval. It measures:

* exact match of Poly-PRAG (learned routing, uniform-routing ablation, incremental, query router)
  next to closed-book, standard RAG and PRAG;
* incremental encoding: its time against PRAG's training of the same added passages, timed side by
  side in interleaved rounds (the median of per-round ratios), and exact match on the passages it
  encoded against full training's exact match on the same passages;
* storage: pool + routing rows against one LoRA per passage, at 1,000 passages (real files: 1,000
  new passages are encoded routing-only against the frozen pool) and at 10,000 (computed from the
  measured per-passage sizes);
* throughput at batch 16 with mixed routings (as answered, and at equal decode length): Poly-PRAG
  batched, PRAG's per-query merge path and the bare base model closed-book, timed in interleaved
  rounds; q/s are medians over rounds and the ratios are medians of per-round ratios.

    .venv/bin/python benchmarks/poly.py          # writes benchmarks/results/poly.{json,md}
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
from common import (  # benchmarks/common.py (scripts run from this folder)
    augmentations_for,
    median_ratio,
    prag_bytes_at,
    setup,
    timed_side_by_side,
)

from fedprag.shared import prompts
from fedprag.shared.data.benchmark import BenchmarkSpec, make_benchmark
from fedprag.shared.eval.harness import evaluate
from fedprag.shared.eval.methods import build_methods
from fedprag.shared.eval.report import Report
from fedprag.shared.io import atomic_write_text
from fedprag.shared.lora.layers import attach_lora, merged
from fedprag.shared.methods.base import Routing
from fedprag.shared.methods.baselines import ClosedBookModel
from fedprag.shared.methods.poly import serializer as poly_serializer
from fedprag.shared.methods.poly.model import PolyModel
from fedprag.shared.methods.poly.trainer import encode_incremental
from fedprag.shared.methods.prag import serializer as prag_serializer
from fedprag.shared.methods.prag.trainer import encode_passages
from fedprag.shared.metrics import exact_match
from fedprag.shared.models.generate import MAX_NEW_TOKENS, generate_answers
from fedprag.shared.models.loading import BaseModel, load_causal_lm
from fedprag.shared.query import QueryEngine
from fedprag.shared.retrieval.encoder import SentenceEncoder
from fedprag.shared.retrieval.index import PassageIndex

METHODS = ["closed_book", "standard_rag", "standard_rag_top1", "prag", "poly", "poly_uniform", "poly_incremental", "poly_router"]


def subset_em(report: Report, method: str, rows: list[int], answers: list[list[str]]) -> float:
    predictions = next(r for r in report.results if r.method == method).predictions
    return statistics.fmean(exact_match(predictions[i], answers[i]) for i in rows)


def throughput(base: BaseModel, work: Path, dataset, config, batch: int = 16,
               repeats: int = 21) -> dict[str, dict]:
    """Batch-16 throughput with mixed routings: Poly batched vs PRAG per-query merge vs bare model.

    Measured twice on the same batch: ``as_answered``, where decoding stops at end-of-text, and
    ``fixed_length``, where every request decodes ``MAX_NEW_TOKENS`` tokens. A batch runs until
    its longest answer ends, so paths whose answers differ in length do different work; the
    second isolates what routing itself costs.
    """
    engine = QueryEngine(base)
    layers = engine.layers
    pool, _ = poly_serializer.load_pool(work / "poly" / "pool", base.digest)
    routing = poly_serializer.load_routing(work / "poly" / "routing", pool, base.digest)
    prag = prag_serializer.load(work / "prag", base.digest)
    singles = [i for i, q in enumerate(dataset.questions) if q.kind == "single"]
    # one question per person, so every request in the batch has a different mixture
    rows = singles[::6][:batch]
    batch = len(rows)
    texts = [dataset.questions[r].text for r in rows]
    encoder, index = SentenceEncoder(), PassageIndex.load(work / "passages.faiss")
    scores, hit_rows = index.search(encoder.embed(texts), config.harness.top_k)
    routings = [Routing(passage_ids=tuple(dataset.passages[int(p)].passage_id for p in row),
                        scores=tuple(float(s) for s in srow)) for row, srow in zip(hit_rows, scores)]
    closed = [prompts.closed_book(t) for t in texts]
    tok, model = base.tokenizer, base.model
    closed_book, poly_model = ClosedBookModel(), PolyModel(pool, config.poly, routing)

    def bare(min_tokens: int):
        engine.answer(closed_book, texts, routings, min_new_tokens=min_tokens)

    def poly(min_tokens: int):
        engine.answer(poly_model, texts, routings, min_new_tokens=min_tokens)

    def prag_merge(min_tokens: int):
        for q in range(batch):
            with merged(layers, prag.summed(torch.tensor(hit_rows[q:q + 1], dtype=torch.long))):
                generate_answers(model, tok, closed[q:q + 1], min_new_tokens=min_tokens)

    paths = {"closed_book": bare, "poly_batched": poly, "prag_merge_per_query": prag_merge}
    measured = {}
    for length, min_tokens in (("as_answered", 0), ("fixed_length", MAX_NEW_TOKENS)):
        seconds = timed_side_by_side({name: partial(fn, min_tokens) for name, fn in paths.items()}, repeats)
        measured[length] = {
            "qps": {name: batch / statistics.median(t) for name, t in seconds.items()},
            "poly_vs_prag_merge": median_ratio(seconds, "prag_merge_per_query", "poly_batched"),
            "closed_book_vs_poly": median_ratio(seconds, "poly_batched", "closed_book"),
        }
    return measured


def incremental_without_population(base: BaseModel, work: Path, dataset, config, rows: list[int]) -> float:
    """Single-hop EM on the added passages when the pool is fitted to the initial passages alone."""
    alone = dataclasses.replace(config.poly, incremental_population=0)
    report = evaluate(dataset, base, build_methods(["poly_incremental"], {"poly": alone}), config.harness,
                      work / "without-population", show_progress=False, augment=config.augment)
    return subset_em(report, "poly_incremental", rows, [q.answers for q in dataset.questions])


def incremental_cost(base: BaseModel, work: Path, dataset, config, repeats: int = 5) -> dict[str, float]:
    """Routing-only encoding of the added half against PRAG training the same passages, interleaved."""
    layers = attach_lora(base.model)
    pool, _ = poly_serializer.load_pool(work / "poly_incremental" / "pool", base.digest)
    added = dataset.passages[1::2]
    augmentations = augmentations_for(config, base, dataset, work, added)
    seconds = timed_side_by_side({
        "prag": lambda: encode_passages(base, layers, added, augmentations, config.prag, show_progress=False),
        "poly_incremental": lambda: encode_incremental(base, layers, pool, added, augmentations, config.poly,
                                                       show_progress=False),
    }, repeats)
    return {"rounds": repeats,
            "seconds_per_passage": statistics.median(seconds["poly_incremental"]) / len(added),
            "prag_seconds_per_passage": statistics.median(seconds["prag"]) / len(added),
            "cost_vs_prag": median_ratio(seconds, "poly_incremental", "prag")}


def storage(base: BaseModel, work: Path, config, scratch: Path) -> dict[str, object]:
    """Bytes at 1,000 passages (real files) and 10,000 (computed), plus the cost of adding 1,000."""
    layers = attach_lora(base.model)
    pool, _ = poly_serializer.load_pool(work / "poly" / "pool", base.digest)
    added = make_benchmark(BenchmarkSpec(people=1000, sites=1, seed=11))
    augmentations = augmentations_for(config, base, added, work)
    before = pool.digest()
    started = time.perf_counter()
    rows = encode_incremental(base, layers, pool, added.passages, augmentations, config.poly, show_progress=True)
    add_seconds = time.perf_counter() - started
    assert pool.digest() == before, "incremental encoding changed the expert pool"
    pool_bytes = poly_serializer.save_pool(scratch / "pool", pool, config.poly, base.digest)
    routing_bytes = poly_serializer.save_routing(scratch / "routing", rows, pool, base.digest)
    prag_bytes = prag_bytes_at(1000, prag_serializer.load(work / "prag", base.digest), config.prag, base.digest,
                               scratch / "prag")
    prag_per_passage = prag_bytes / 1000
    routing_per_passage = routing_bytes / 1000
    at_10k_prag = prag_per_passage * 10_000
    at_10k_poly = pool_bytes + routing_per_passage * 10_000
    return {
        "added_passages": 1000, "add_seconds": add_seconds, "add_seconds_per_passage": add_seconds / 1000,
        "pool_unchanged": True,
        "bytes_1000": {"prag": prag_bytes, "poly_pool": pool_bytes, "poly_routing": routing_bytes,
                       "ratio": prag_bytes / (pool_bytes + routing_bytes)},
        "bytes_10000_computed": {"prag": at_10k_prag, "poly": at_10k_poly, "ratio": at_10k_prag / at_10k_poly},
    }


def main(argv: list[str] | None = None) -> int:
    args, config = setup(__doc__, "runs/bench-poly", argv, extra={"--repeats": {"type": int, "default": 21, "help": "interleaved timing rounds for throughput (medians)"}})
    work = Path(args.work)
    base = load_causal_lm(config.model.path)
    dataset = make_benchmark(config.benchmark)
    report = evaluate(dataset, base, build_methods(METHODS, config.method_configs()), config.harness, work,
                      augment=config.augment)

    answers = [q.answers for q in dataset.questions]
    added_ids = {p.passage_id for p in dataset.passages[1::2]}
    added_single = [i for i, q in enumerate(dataset.questions) if q.kind == "single" and q.gold_passage_ids[0] in added_ids]
    incremental = {
        "questions": len(added_single),
        "em_incremental": subset_em(report, "poly_incremental", added_single, answers),
        "em_full_training": subset_em(report, "poly", added_single, answers),
        "population": config.poly.incremental_population,
        "em_incremental_pool_fitted_to_initial_only": incremental_without_population(base, work, dataset, config,
                                                                                     added_single),
        **incremental_cost(base, work, dataset, config),
    }
    sizes = storage(base, work, config, work / "storage")
    measured = throughput(base, work, dataset, config, repeats=args.repeats)
    qps, qps_fixed = measured["as_answered"]["qps"], measured["fixed_length"]["qps"]
    qps_ratios = {"poly_vs_prag_merge": measured["as_answered"]["poly_vs_prag_merge"],
                  "closed_book_vs_poly": measured["as_answered"]["closed_book_vs_poly"],
                  "closed_book_vs_poly_fixed_length": measured["fixed_length"]["closed_book_vs_poly"]}

    json_path, md_path = report.write(args.out, stem="poly")
    payload = json.loads(json_path.read_text())
    payload.update(incremental=incremental, storage=sizes, throughput_qps_batch16=qps,
                   throughput_qps_batch16_fixed_length=qps_fixed, throughput_ratios=qps_ratios)
    atomic_write_text(json_path, json.dumps(payload, indent=2))
    s1, s10 = sizes["bytes_1000"], sizes["bytes_10000_computed"]
    lines = [
        "", (f"Incremental encoding (the pool fitted to half the passages plus {incremental['population']:,} other "
             "people, a stand-in for the corpus a deployed pool has seen; the other half encoded routing-only):"), "",
        "| | value |", "|---|---|",
        f"| single-hop EM on the added passages, incremental | {incremental['em_incremental']:.3f} |",
        (f"| same, with the pool fitted to the initial half alone | "
         f"{incremental['em_incremental_pool_fitted_to_initial_only']:.3f} |"),
        f"| same questions, full training | {incremental['em_full_training']:.3f} |",
        (f"| seconds per passage, incremental / PRAG (medians of {incremental['rounds']} interleaved rounds) | "
         f"{incremental['seconds_per_passage']:.4f} / {incremental['prag_seconds_per_passage']:.4f} |"),
        f"| incremental / PRAG time, median of per-round ratios | {incremental['cost_vs_prag']:.3f}× |",
        f"| adding 1,000 passages to the frozen pool | {sizes['add_seconds']:.1f} s, pool unchanged |",
        "", "Storage:", "", "| passages | PRAG bytes | Poly pool + routing bytes | PRAG / Poly |", "|---|---|---|---|",
        f"| 1,000 (files) | {s1['prag']:,} | {s1['poly_pool']:,} + {s1['poly_routing']:,} | {s1['ratio']:.1f}× |",
        f"| 10,000 (computed) | {s10['prag']:,.0f} | {s10['poly']:,.0f} | {s10['ratio']:.1f}× |",
        "", (f"Throughput at batch 16, mixed routings (queries/s, median of {args.repeats} interleaved rounds; "
             "ratios are medians of per-round ratios):"), "",
        "| path | q/s, answers end at end-of-text | q/s, every request decodes the same tokens |", "|---|---|---|",
        *[f"| {k} | {v:.1f} | {qps_fixed[k]:.1f} |" for k, v in qps.items()],
        "", (f"Poly batched / PRAG per-query merge: {qps_ratios['poly_vs_prag_merge']:.2f}×; "
             f"closed-book / Poly batched: {qps_ratios['closed_book_vs_poly']:.2f}× as answered, "
             f"{qps_ratios['closed_book_vs_poly_fixed_length']:.2f}× at equal decode length."),
    ]
    atomic_write_text(md_path, md_path.read_text() + "\n".join(lines) + "\n")
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
