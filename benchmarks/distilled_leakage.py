"""DistilledPRAG leakage benchmark (issue 22): what the generated LoRA factors give away, and what
protecting them costs in exact match.

One run, one machine, the default base model, its generator (the shipped or cached one; distilled
first if there is none, about 13 minutes) and the default benchmark's 60 passages. It measures:

* inversion (:func:`~fedprag.shared.eval.leakage.inversion`): the nearest-token, span
  and mixture attacks on each passage's own factors (the worst case: one document per LoRA) and on
  the factors of the harness's top-k for one question about the passage (what a site sends), raw
  and through :func:`~fedprag.shared.methods.distilled.layers.protect` at several noise levels
  (and with the embedding table's top principal directions projected out); and, for Poly-PRAG, the same attacks on the pool's experts under the passage's routing weights
  (a query's message is only those weights, but the server holds the pool);
* extraction (:func:`~fedprag.shared.eval.leakage.extraction`): the served model asked
  for each passage verbatim, for closed-book, standard RAG, Poly-PRAG, DistilledPRAG and
  DistilledPRAG with protection (``--extraction-noise``);
* exact match of DistilledPRAG with and without protection (``--noise``), through the evaluation
  harness (top-k retrieval), beside closed-book and standard RAG.

    flock /tmp/fedprag-heavy.lock .venv/bin/python benchmarks/distilled_leakage.py   # results/distilled_leakage.{json,md}
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from common import augmentations_for, setup  # benchmarks/common.py (scripts run from this folder)

from fedprag.shared import prompts
from fedprag.shared.data.benchmark import make_benchmark
from fedprag.shared.data.schema import Dataset
from fedprag.shared.eval import leakage
from fedprag.shared.eval.harness import Retriever, evaluate
from fedprag.shared.eval.methods import Encoded, EvalContext, EvalMethod, build_methods
from fedprag.shared.io import atomic_write_text
from fedprag.shared.lora.layers import Adapter, LowRank, attach_lora
from fedprag.shared.methods.base import Corpus, EncodingCost, MethodModel, Routing
from fedprag.shared.methods.baselines import ClosedBookModel, StandardRAGModel
from fedprag.shared.methods.distilled import serializer as distilled_serializer
from fedprag.shared.methods.distilled.model import DistilledModel
from fedprag.shared.methods.distilled.trainer import DistilledEncoder
from fedprag.shared.methods.poly import model as poly_model
from fedprag.shared.models.loading import load_causal_lm
from fedprag.shared.query import QueryEngine

ATTACKS = ("nearest", "span", "mixture")
PROJECTED = 32
"""Principal directions of the embedding table that the projection option removes from the factors."""


class Protected(EvalMethod):
    """DistilledPRAG in the harness with every request's factors through ``protect(noise)``; it
    shares the plain variant's encoding (the generator is loaded once)."""

    def __init__(self, distilled: Encoded, noise: float):
        self.distilled, self.noise = distilled, noise
        self.name = f"distilled_protected_{noise:g}"

    def encode(self, ctx: EvalContext) -> EncodingCost:
        return self.distilled.encode(ctx)

    def model(self, ctx: EvalContext) -> MethodModel:
        return leakage.ProtectedModel(self.distilled.model(ctx), self.noise)


def _row(adapter: Adapter, i: int) -> Adapter:
    """Row ``i`` of a batched adapter (factors the batch shares, as a Poly-PRAG pool's, stay as they are)."""
    def pick(t: torch.Tensor) -> torch.Tensor:
        return t if t.shape[0] == 1 else t[i:i + 1]

    return {name: LowRank(pick(d.A), pick(d.B), d.scale, None if d.gate is None else pick(d.gate))
            for name, d in adapter.items()}


def _summary(results: Sequence[leakage.Inversion]) -> dict[str, object]:
    """Per attack: median recovered share, mean false-positive share, mean share of facts recovered."""
    out: dict[str, object] = {}
    for attack in ATTACKS:
        scores = [getattr(r, attack) for r in results]
        facts = [s.facts for s in scores if s.facts is not None]
        out[attack] = {"recovered_median": statistics.median(s.recovered for s in scores),
                       "recovered_mean": statistics.fmean(s.recovered for s in scores),
                       "false_positive_mean": statistics.fmean(s.false_positive for s in scores),
                       "facts_mean": statistics.fmean(facts) if facts else None}
    out["vectors"] = statistics.median(r.vectors for r in results)
    out["directions"] = statistics.median(r.directions for r in results)
    return out


def _answers(dataset: Dataset) -> dict[str, list[str]]:
    """Each passage's facts: the answers of its single-hop questions."""
    answers: dict[str, set[str]] = {p.passage_id: set() for p in dataset.passages}
    for q in dataset.questions:
        if q.kind == "single":
            for pid in q.gold_passage_ids:
                answers[pid].update(q.answers)
    return {pid: sorted(found) for pid, found in answers.items()}


def _projected(adapter: Adapter, embeddings: torch.Tensor) -> tuple[Adapter, torch.Tensor]:
    """The option dropped for not protecting: the embedding table's top :data:`PROJECTED` principal
    directions projected out of every ``B`` of the model's width; with the table an attacker who
    knows it decodes against (projected alike)."""
    width = embeddings.shape[1]
    top = torch.linalg.svd(embeddings - embeddings.mean(0), full_matrices=False).Vh[:PROJECTED]
    keep = torch.eye(width) - top.T @ top
    factors = {name: LowRank(d.A, keep @ d.B if d.B.shape[1] == width else d.B, d.scale) for name, d in adapter.items()}
    return factors, embeddings @ keep


def inversion_table(encoder: DistilledEncoder, dataset: Dataset, facts: dict[str, list[list[int]]],
                    sets: list[list[int]], embeddings: torch.Tensor, noises: Sequence[float]) -> dict[str, dict[str, object]]:
    """The attacks on each document set's factors (``sets`` holds passage rows): raw, protected at
    each noise level, and with the projection option."""
    passages = dataset.passages
    texts = [[passages[r].text for r in rows] for rows in sets]
    with torch.no_grad():
        adapter = encoder.adapters(texts)
    ids = [encoder.ids("\n".join(t)) for t in texts]
    set_facts = [[f for r in rows for f in facts[passages[r].passage_id]] for rows in sets]
    variants = [("raw", adapter, embeddings),
                *((f"protected, noise {n:g}", leakage.protect(adapter, n), embeddings) for n in noises),
                (f"top {PROJECTED} embedding directions projected out", *_projected(adapter, embeddings))]
    return {label: _summary([leakage.inversion(_row(factors, i), table, ids[i], set_facts[i]) for i in range(len(sets))])
            for label, factors, table in variants}


def markdown(inversion: dict[str, dict[str, dict]], extraction: dict[str, dict], em: dict[str, float],
             noises: Sequence[float], vocab: int, machine: dict[str, object], command: str, seconds: float,
             generator: str) -> list[str]:
    """The run's tables and what they say, below the harness's exact-match table."""
    lines = ["", (f"Run on one {machine['cores']}-core {machine['cpu']} (accelerator: {machine['accelerator']}) in "
                  f"{seconds / 60:.1f} minutes: `{command}`. {generator}"), "",
             ("Attacks (`fedprag.shared.eval.leakage.inversion`), each on one document set's factors "
              "against the base model's input embedding table: **nearest**, every column of `B` and row of `A` of "
              "the model's width decoded to its nearest token by cosine (and the negated vector's); **span**, tokens "
              "whose embedding's residual after projection onto the column space of `ΔW = B·A` is below "
              f"{leakage.SPAN_THRESHOLD} of its norm; **mixture**, each direction of that column space decoded "
              f"greedily as a sum of {leakage.MIXTURE_ATOMS} token embeddings. Each cell: median share of the "
              "documents' distinct tokens recovered / mean share of the other vocabulary tokens flagged (chance "
              "level) / mean share of the documents' facts (the answers of their single-hop questions) recovered "
              "with every token."), ""]
    for setting, table in inversion.items():
        lines += [f"Inversion, {setting}:", "", "| factors | nearest | span | mixture | directions read |",
                  "|---|---|---|---|---|"]
        for label, row in table.items():
            cells = [f"{row[a]['recovered_median']:.3f} / {row[a]['false_positive_mean']:.4f} / "
                     f"{row[a]['facts_mean']:.3f}" for a in ATTACKS]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {row['directions']:g} |")
        lines.append("")
    lines += [(f"Extraction (`leakage.extraction`): each passage, as the method's only document, asked for verbatim in "
               f"{len(leakage.EXTRACTION_PROMPTS)} phrasings, greedy, up to {leakage.EXTRACTION_TOKENS} tokens; per "
               "passage the best phrasing counts. Longest common substring (LCS, case-insensitive) and token recall "
               "(the passage's distinct normalised words found in the output) are medians over passages; facts stated "
               "is the mean share of the passage's facts that some output states."), "",
              "| method | LCS chars | LCS share | token recall | largest LCS share | facts stated |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {e['lcs_chars']:.0f} | {e['lcs_share']:.3f} | {e['token_recall']:.3f} | "
              f"{e['lcs_share_max']:.3f} | {e['facts']:.3f} |" for name, e in extraction.items()]
    lines += ["", ("Single-hop exact match of DistilledPRAG with every request's factors through `protect(noise)` "
              "(the harness: top-k retrieval, 360 questions; the table above has every kind):"), "",
              "| noise | single EM | cost against unprotected |", "|---|---|---|"]
    lines += [f"| {n:g} | {em[f'distilled_protected_{n:g}']:.3f} | "
              f"{em['distilled'] - em[f'distilled_protected_{n:g}']:+.3f} |" for n in noises]
    single = inversion["single passage"]
    raw, poly = single["raw"], single["poly (pool under the passage's weights)"]
    flagged = raw["mixture"]["false_positive_mean"] * vocab
    lcs = [e["lcs_chars"] for name, e in extraction.items() if name != "closed_book"]
    noisy = [n for n in noises if n > 0]
    trade_off = ""
    if noisy:  # the noise level at which the mixture attack's recovery of facts is nearest to half the raw one
        half = min(noisy, key=lambda n: abs(single[f"protected, noise {n:g}"]["mixture"]["facts_mean"]
                                            - raw["mixture"]["facts_mean"] / 2))
        trade_off = (f"Noise costs exact match faster than it hides facts: at noise {half:g} the mixture attack "
                     f"still recovers {single[f'protected, noise {half:g}']['mixture']['facts_mean']:.0%} of them "
                     f"(from {raw['mixture']['facts_mean']:.0%}) while single-hop exact match falls from "
                     f"{em['distilled']:.3f} to {em[f'distilled_protected_{half:g}']:.3f}.")
    lines += ["", "What it says:", "",
              (f"* Raw factors of one passage: the mixture attack recovers {raw['mixture']['facts_mean']:.0%} of its "
               f"facts, while flagging about {flagged:.0f} wrong tokens of {vocab:,}; the nearest-token attack "
               f"{raw['nearest']['facts_mean']:.0%}, the span attack {raw['span']['facts_mean']:.0%}. The generated "
               f"`ΔW` has {raw['directions']:g} directions per document set, one per `down_proj`: the eight columns of "
               "each `B` are one vector, a mixture of the document's tokens, so no single token lies near the span. "
               "Not much of the text comes back, but much of what the text is for: names, places, years."),
              (f"* Top-k sets (what a site sends): the mixture attack recovers "
               f"{inversion[next(k for k in inversion if k.startswith('top'))]['raw']['mixture']['facts_mean']:.0%} of "
               "the set's facts; several documents share one LoRA, so each is diluted."),
              ("* A rank-space rotation of the factors (which keeps `ΔW` exact) was tried and hid nothing, since the "
               "columns it mixes are parallel, so `protect` offers noise only. " + trade_off + " At small levels noise even helps the nearest-token "
               "attack (eight noisy copies of one vector decode to eight neighbouring tokens). The model reads the "
               "same mixture the attacker decodes, so no noise level hides the facts and keeps the answers. "
               "Projecting the embedding table's top principal directions out of `B` does not lower recovery "
               "(attacker projecting alike), so it was not run for exact match. Protected rows draw fresh noise on "
               "every run, so they move by a few hundredths from run to run."),
              (f"* Poly-PRAG: a query's message is its expert weights, but the query API holds the pool, and the "
               f"pool's expert columns decode (nearest) to {poly['nearest']['facts_mean']:.0%} of each passage's facts "
               f"(flagging {poly['nearest']['false_positive_mean']:.0%} of the vocabulary: the corpus's answer "
               f"tokens); under the passage's weights the mixture attack recovers {poly['mixture']['facts_mean']:.0%}."),
              (f"* Extraction: no method gives a passage back. The built-in model answers in its QA format, so the "
               f"longest common substring is a name or a clause (medians {min(lcs):.0f} to {max(lcs):.0f} characters, "
               f"at most {max(e['lcs_share_max'] for e in extraction.values()):.0%} of a passage, against "
               f"{extraction['closed_book']['lcs_chars']:.0f} for closed-book, which has no passage); what comes back "
               "is facts, one per request, and DistilledPRAG's factors give them out about as standard RAG's context "
               "does. Whoever serves the model learns the facts by asking questions, however the factors are "
               "protected, at the rate of the exact match it keeps.")]
    return lines


def main(argv: list[str] | None = None) -> int:
    args, config = setup(__doc__, "runs/bench-distilled-leakage", argv, extra={
        "--noise": {"default": "0.5,1,2,3,4,8", "help": "protection noise levels (comma-separated) to measure"},
        "--extraction-noise": {"default": "3", "help": "protection noise levels of the extraction rows"},
        "--stem": {"default": "distilled_leakage", "help": "result file names: <stem>.json and <stem>.md"}})
    started = time.perf_counter()
    noises = [float(n) for n in args.noise.split(",")]
    work = Path(args.work)
    base = load_causal_lm(config.model.path)
    layers = attach_lora(base.model)
    dataset = make_benchmark(config.benchmark)
    path = distilled_serializer.cache_dir(base.digest, config.distilled)
    cached = (distilled_serializer.SHIPPED / path.name / "manifest.json").is_file() or (path / "manifest.json").is_file()
    encoder, _ = distilled_serializer.cached_generator(base, layers, config.distilled)
    embeddings = base.model.get_input_embeddings().weight.detach()
    k = config.harness.top_k

    # Inversion: one passage per LoRA, and the top-k retrieved for the passage's first single-hop question.
    retriever = Retriever(dataset, work / "retrieval", show_progress=False)
    position = dataset.passage_index()
    first = {}
    for q in dataset.questions:
        if q.kind == "single":
            first.setdefault(position[q.gold_passage_ids[0]], q.text)
    rows = sorted(first)
    top_k = retriever.top_k([first[r] for r in rows], k).rows
    answers = _answers(dataset)
    facts = {pid: [encoder.ids(prompts.completion(a)) for a in found] for pid, found in answers.items()}
    inversion = {"single passage": inversion_table(encoder, dataset, facts, [[r] for r in rows], embeddings, noises),
                 f"top-{k} set": inversion_table(encoder, dataset, facts, top_k, embeddings, noises)}

    # Poly-PRAG: the attacks on the pool's experts as the passage's routing weights mix them.
    corpus = Corpus(base, layers, list(dataset.passages), augmentations_for(config, base, dataset, work),
                    retriever.encoder.embed, work / "poly", show_progress=False)
    poly, _ = poly_model.encode_corpus(corpus, config.poly, "poly")
    poly_routings = [Routing(passage_ids=(p.passage_id,), scores=(1.0,)) for p in dataset.passages]
    with torch.no_grad():
        mixed = poly.adapter(poly_routings)
    inversion["single passage"]["poly (pool under the passage's weights)"] = _summary(
        [leakage.inversion(_row(mixed, i), embeddings, encoder.ids(p.text), facts[p.passage_id])
         for i, p in enumerate(dataset.passages)])

    # Extraction: each passage asked for verbatim, the passage as the method's only document.
    engine = QueryEngine(base, layers)
    distilled = DistilledModel(encoder)
    texts = [p.text for p in dataset.passages]
    text_routings = [Routing(passage_ids=(p.passage_id,), scores=(1.0,), documents=(p.text,)) for p in dataset.passages]
    extraction = {}
    for model, routings in ((ClosedBookModel(), text_routings), (StandardRAGModel(), text_routings),
                            (poly, poly_routings), (distilled, text_routings),
                            *((leakage.ProtectedModel(distilled, float(n)), text_routings)
                              for n in args.extraction_noise.split(","))):
        extraction[model.name] = dataclasses.asdict(leakage.extraction(
            engine, model, routings, texts, [answers[p.passage_id] for p in dataset.passages]))

    # Exact match with and without protection, through the harness.
    methods = build_methods(["closed_book", "standard_rag", "distilled"], config.method_configs())
    methods += [Protected(methods[-1], n) for n in noises]
    report = evaluate(dataset, base, methods, config.harness, work / "eval", show_progress=False,
                      augment=config.augment)
    em = {r.method: r.scores["single"].em for r in report.results}

    seconds = time.perf_counter() - started
    json_path, md_path = report.write(args.out, stem=args.stem)
    payload = json.loads(json_path.read_text())
    for result in payload["results"]:
        result.pop("predictions", None)
    payload.update(inversion=inversion, extraction=extraction, default_noise=leakage.DEFAULT_NOISE,
                   span_threshold=leakage.SPAN_THRESHOLD, mixture_atoms=leakage.MIXTURE_ATOMS,
                   generator_steps=config.distilled.steps, generator_cached=cached, seconds=round(seconds, 1))
    atomic_write_text(json_path, json.dumps(payload, indent=2))
    options = " ".join(sys.argv[1:] if argv is None else argv)
    command = f"flock /tmp/fedprag-heavy.lock .venv/bin/python benchmarks/distilled_leakage.py {options}".strip()
    generator = (f"The generator ({config.distilled.steps} steps) was {'the shipped or cached one' if cached else 'distilled in this run'} "
                 "for this base model; the Poly-PRAG pool was trained in the run (seconds).")
    lines = markdown(inversion, extraction, em, noises, len(embeddings), report.machine, command, seconds, generator)
    atomic_write_text(md_path, md_path.read_text() + "\n".join(lines) + "\n")
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
