"""Foundation benchmark: closed-book, standard RAG, PRAG and PRAG-combine side by side.

One run, one machine, one base model, one dataset and one retrieval for every method. Writes
``foundation.json`` and ``foundation.md`` under ``benchmarks/results/`` (or ``--out``), including
the machine description and ratios against the baselines.

    .venv/bin/python benchmarks/foundation.py            # the default benchmark (60 people)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common import setup  # benchmarks/common.py (scripts run from this folder)

from fedprag.shared.data.benchmark import make_benchmark
from fedprag.shared.eval.harness import evaluate
from fedprag.shared.eval.methods import build_methods
from fedprag.shared.eval.report import Report
from fedprag.shared.io import atomic_write_text
from fedprag.shared.models.loading import load_causal_lm


def ratios(report: Report, kind: str = "single") -> list[dict[str, object]]:
    """Per method: share of the closed-book→standard-RAG gap closed, and latency vs closed-book."""
    by = {r.method: r for r in report.results}
    floor, ceiling = by["closed_book"], by["standard_rag"]
    gap = ceiling.scores[kind].em - floor.scores[kind].em
    rows = []
    for r in report.results:
        rows.append({
            "method": r.method,
            "gap_closed": (r.scores[kind].em - floor.scores[kind].em) / gap if gap else float("nan"),
            "latency_p50_vs_closed_book": r.latency_ms_p50 / floor.latency_ms_p50 if floor.latency_ms_p50 else float("nan"),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    args, config = setup(__doc__, "runs/bench-foundation", argv)
    base = load_causal_lm(config.model.path)
    dataset = make_benchmark(config.benchmark)
    methods = build_methods(["closed_book", "standard_rag", "standard_rag_top1", "prag", "prag_combine"], config.method_configs())
    report = evaluate(dataset, base, methods, config.harness, Path(args.work), augment=config.augment)
    table = ratios(report)
    json_path, md_path = report.write(args.out, stem="foundation")
    payload = json.loads(json_path.read_text())
    payload["ratios_single_hop"] = table
    atomic_write_text(json_path, json.dumps(payload, indent=2))
    lines = ["", ("Ratios (single-hop): share of the closed-book → standard-RAG exact-match gap closed, "
                  "and p50 latency relative to closed-book."), "",
             "| method | gap closed | latency × closed-book |", "|---|---|---|"]
    lines += [f"| {r['method']} | {r['gap_closed']:.2f} | {r['latency_p50_vs_closed_book']:.2f} |" for r in table]
    atomic_write_text(md_path, md_path.read_text() + "\n".join(lines) + "\n")
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
