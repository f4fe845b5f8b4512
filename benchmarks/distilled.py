"""DistilledPRAG benchmark: the generator's LoRAs next to closed-book, standard RAG and PRAG.

One run, one machine, one base model, one dataset and one retrieval. Every benchmark passage is
one the generator never saw (it is distilled on synthetic documents about other people). It
measures:

* exact match per question kind (single-hop, held-out phrasings, multi-hop) of DistilledPRAG with
  the top-k passages, with the top passage only, and with irrelevant passages (someone else's),
  next to closed-book, standard RAG (top-k and top passage) and PRAG;
* the share of the closed-book → standard-RAG gap DistilledPRAG closes;
* encoding seconds per passage (one generator forward) against PRAG's per-passage training, both
  on the same 60 passages in interleaved rounds; the speed-up is the median of per-round ratios;
* how much the generated LoRAs differ across documents (:func:`document_spread`), and the
  generator's size on disk.

    cd benchmarks && ../.venv/bin/python distilled.py      # writes results/distilled.{json,md}
    cd benchmarks && ../.venv/bin/python distilled.py --config bridge_hop.toml --stem distilled_bridge_hop
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch
from common import (  # benchmarks/common.py (scripts run from this folder)
    augmentations_for,
    median_ratio,
    setup,
    timed_side_by_side,
)

from fedprag.shared.config import FedpragConfig
from fedprag.shared.data.benchmark import make_benchmark
from fedprag.shared.data.schema import Dataset
from fedprag.shared.eval.harness import evaluate
from fedprag.shared.eval.methods import build_methods
from fedprag.shared.io import atomic_write_text
from fedprag.shared.lora.layers import attach_lora
from fedprag.shared.methods.distilled import serializer as distilled_serializer
from fedprag.shared.methods.distilled.layers import document_spread
from fedprag.shared.methods.distilled.trainer import DistilledEncoder
from fedprag.shared.methods.prag.trainer import encode_passages
from fedprag.shared.models.loading import BaseModel, load_causal_lm

METHODS = ["closed_book", "standard_rag", "standard_rag_top1", "prag", "distilled", "distilled_top1",
           "distilled_irrelevant"]
SPREAD_PASSAGES = 32


def encoding_side_by_side(base: BaseModel, encoder: DistilledEncoder, dataset: Dataset, config: FedpragConfig,
                          repeats: int, work: Path) -> dict[str, object]:
    """Seconds per passage to encode the benchmark's passages: PRAG's training against generator forwards."""
    passages = dataset.passages
    augmentations = augmentations_for(config, base, dataset, work)
    texts = [p.text for p in passages]
    seconds = timed_side_by_side({
        "prag": lambda: encode_passages(base, encoder.layers, passages, augmentations, config.prag, show_progress=False),
        "distilled": lambda: encoder.encode(texts),
    }, repeats)
    return {"repeats": repeats, "passages": len(passages),
            "seconds_per_passage": {name: statistics.median(t) / len(passages) for name, t in seconds.items()},
            "speedup": median_ratio(seconds, "prag", "distilled")}


def main(argv: list[str] | None = None) -> int:
    args, config = setup(__doc__, "runs/bench-distilled", argv, extra={
        "--repeats": {"type": int, "default": 7, "help": "interleaved encoding-timing rounds (medians)"},
        "--stem": {"default": "distilled", "help": "result file names: <stem>.json and <stem>.md"}})
    base = load_causal_lm(config.model.path)
    dataset = make_benchmark(config.benchmark)
    report = evaluate(dataset, base, build_methods(METHODS, config.method_configs()),
                      config.harness, Path(args.work), augment=config.augment)
    em = {r.method: {kind: s.em for kind, s in r.scores.items()} for r in report.results}
    by = {r.method: r for r in report.results}

    encoder, _ = distilled_serializer.cached_generator(base, attach_lora(base.model), config.distilled)
    with torch.no_grad():
        spread = document_spread(encoder.adapters([[p.text] for p in dataset.passages[:SPREAD_PASSAGES]]))
    module_types = sorted({name.rsplit(".", 1)[-1] for name in spread})
    spread_by_type = {t: max(v for n, v in spread.items() if n.endswith(t)) for t in module_types}
    encoding = encoding_side_by_side(base, encoder, dataset, config, args.repeats, Path(args.work))
    floor, ceiling = em["closed_book"]["single"], em["standard_rag"]["single"]
    summary = {
        "gap_closed_single": (em["distilled"]["single"] - floor) / (ceiling - floor) if ceiling != floor else float("nan"),
        "encoding_side_by_side": encoding,
        "document_spread": spread,
        "document_spread_max_by_module_type": spread_by_type,
        "generator_parameters": sum(p.numel() for p in encoder.generator.parameters()),
        "generator_bytes": by["distilled"].stored_bytes,
        "generator_steps": config.distilled.steps,
    }
    checks = [
        ("single-hop EM ≥ PRAG's", f"{em['distilled']['single']:.3f} vs {em['prag']['single']:.3f}",
         em["distilled"]["single"] >= em["prag"]["single"]),
        ("closes ≥ 60% of the closed-book → standard-RAG gap", f"{summary['gap_closed_single']:.2f}",
         summary["gap_closed_single"] >= 0.6),
        ("multi-hop EM above PRAG's", (f"{em['distilled']['multihop']:.3f} vs {em['prag']['multihop']:.3f} (both "
                                       f"passages retrieved for {report.complete_at_k.get('multihop', 0):.0%} of questions)"),
         em["distilled"]["multihop"] > em["prag"]["multihop"]),
        ("encoding ≥ 20× faster per passage than PRAG", (f"{encoding['speedup']:.0f}× (median of {args.repeats} "
                                                         "interleaved rounds)"), encoding["speedup"] >= 20),
        ("irrelevant passages: EM near closed-book (within 0.05)",
         f"{em['distilled_irrelevant']['single']:.3f} vs {floor:.3f}", abs(em["distilled_irrelevant"]["single"] - floor) <= 0.05),
    ]

    json_path, md_path = report.write(args.out, stem=args.stem)
    payload = json.loads(json_path.read_text())
    payload.update(summary=summary, acceptance=[{"check": c, "value": v, "met": m} for c, v, m in checks])
    atomic_write_text(json_path, json.dumps(payload, indent=2))
    lines = [
        "", (f"Generator: {summary['generator_parameters']:,} parameters, {summary['generator_bytes']:,} bytes, "
             f"{summary['generator_steps']} distillation steps. Relative spread of the generated ΔW across "
             f"{SPREAD_PASSAGES} benchmark passages (largest per module type): "
             + ", ".join(f"{t} {v:.3f}" for t, v in spread_by_type.items()) + "."), "",
        (f"Encoding the {encoding['passages']} benchmark passages, timed side by side in {args.repeats} interleaved "
         f"rounds (medians): PRAG {encoding['seconds_per_passage']['prag']:.4f} s per passage, DistilledPRAG "
         f"{encoding['seconds_per_passage']['distilled']:.4f} s; median per-round ratio {encoding['speedup']:.1f}×. "
         "The table's enc s/passage column is one timing of each inside the harness."), "",
        "| check | measured | met |", "|---|---|---|",
        *[f"| {c} | {v} | {'yes' if m else 'no'} |" for c, v, m in checks],
    ]
    atomic_write_text(md_path, md_path.read_text() + "\n".join(lines) + "\n")
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
