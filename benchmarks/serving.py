"""Serving benchmark: throughput and latency through the query API over HTTP, methods side by side.

One run on one machine. A federation (site daemons as processes, the default pool) is trained on
the benchmark, then served by ``fedprag serve``'s application on Ray Serve. Four paths answer the
same single-hop questions over HTTP, at concurrency 1, 8 and 32, interleaved (every repeat runs
every path once, in a rotated order), on replicas of the same size:

* ``poly``: Poly-PRAG, each question routed by fan-out to the site daemons over gRPC (mixed routings
  in every batch), through ``/v1/query``; the daemons share this machine's cores with the API;
* ``poly_router``: Poly-PRAG routed by the federation's learned router (mixed routings, no site asked);
* ``closed_book``: the bare base model, through the same ``/v1/query`` (``method: closed_book``);
* ``prag_merge``: PRAG as published, each question's retrieved passages' LoRAs merged into the base
  weights for its own generate, one question at a time (:class:`~fedprag.shared.query.PerRequestMerge`);
* ``prag``: PRAG's LoRAs on Poly-PRAG's batched LoRA path instead (what batching alone gives PRAG);
* ``standard_rag``: the retrieved passages in the prompt.

PRAG and standard RAG need the passages (and their per-passage LoRAs) in one place, which the query
API never has; they are served by a second application built here for the measurement only (central
retrieval, batched like the replicas' routing, then a replica of the same class and size).

It also measures the API's own overhead: the same Poly-PRAG question answered in process (embed,
fan out, generate) against over HTTP, at concurrency 1, interleaved.

    .venv/bin/python benchmarks/serving.py     # writes benchmarks/results/serving.{json,md}
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
from common import RESULTS, augmentations_for, setup  # benchmarks/common.py (scripts run from this folder)
from fastapi import FastAPI, HTTPException
from ray import serve
from ray.serve.handle import DeploymentHandle

from fedprag.cluster.demo import running_federation
from fedprag.cluster.serving.app import registry_of
from fedprag.cluster.serving.client import QueryClient
from fedprag.cluster.serving.messages import GenerateItem
from fedprag.cluster.serving.replica import Batching, replica_deployment
from fedprag.shared.eval.resources import machine_description
from fedprag.shared.io import atomic_write_text
from fedprag.shared.lora.layers import attach_lora
from fedprag.shared.methods.base import Corpus, Routing
from fedprag.shared.methods.baselines import StandardRAGModel
from fedprag.shared.methods.prag.model import encode_corpus as encode_prag
from fedprag.shared.query import PerRequestMerge, QueryEngine
from fedprag.shared.retrieval.encoder import SentenceEncoder
from fedprag.shared.retrieval.index import PassageIndex

CONCURRENCY = (1, 8, 32)
PATHS = ("poly", "poly_router", "closed_book", "prag_merge", "prag", "standard_rag")
BASELINES = ("closed_book", "prag_merge", "prag", "standard_rag")

baselines_api = FastAPI()


@serve.deployment(name="BaselineIngress", num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=512)
@serve.ingress(baselines_api)
class BaselineIngress:
    """For the measurement only: central retrieval over the benchmark's passages (indexed in float32,
    questions embedded as the replicas embed them), then a generator."""

    def __init__(self, generator: DeploymentHandle, texts: list[str], ids: list[str], top_k: int, max_new_tokens: int, encoder_dtype: str):
        self.generator, self.texts, self.ids, self.top_k, self.max_new_tokens = generator, texts, ids, top_k, max_new_tokens
        self.index = PassageIndex.build(SentenceEncoder().embed(texts), list(range(len(texts))))
        self.encoder = SentenceEncoder(dtype=encoder_dtype)

    def _search(self, questions: list[str]) -> list[Routing]:
        scores, rows = self.index.search(self.encoder.embed(questions), self.top_k)
        routings = []
        for score_row, row in zip(scores, rows):
            found = [int(r) for r in row if r >= 0]
            routings.append(Routing(passage_ids=tuple(self.ids[r] for r in found),
                                    scores=tuple(float(s) for s in score_row[:len(found)]),
                                    documents=tuple(self.texts[r] for r in found)))
        return routings

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def retrieve(self, questions: list[str]) -> list[Routing]:
        """A batch of questions retrieved at once, as a serving replica routes them."""
        return await asyncio.to_thread(self._search, questions)

    @baselines_api.post("/v1/query")
    async def query(self, body: dict) -> dict:
        routing = await self.retrieve(body["question"])
        generated = await self.generator.generate.remote(GenerateItem(body["question"], self.max_new_tokens,
                                                                      body["method"], routing=routing))
        if generated.error:  # a failed answer must not count as a fast one
            raise HTTPException(503, generated.error)
        return {"answer": generated.answer, "pool_version": 0, "trace": {"batch_size": generated.batch_size}}


def _baselines(config, federation, work: Path) -> QueryClient:
    """PRAG (encoded here, centrally) and standard RAG, served by a second application on the same Ray."""
    dataset, base = federation.dataset, federation.base
    corpus = Corpus(base, attach_lora(base.model), list(dataset.passages), augmentations_for(config, base, dataset, work),
                    SentenceEncoder().embed, work / "prag", show_progress=False)
    prag, _ = encode_prag(corpus, config.prag)
    settings = config.serve
    one_replica = dataclasses.replace(settings, replicas=1, max_replicas=0)
    generator = replica_deployment(one_replica).options(name="BaselineReplica").bind(
        config.model.path, registry_of(config), config.poly, max(1, int(settings.replica_cpus)), Batching.of(settings),
        {"prag": prag, "prag_merge": PerRequestMerge(prag), "standard_rag": StandardRAGModel()})
    serve.run(BaselineIngress.bind(generator, [p.text for p in dataset.passages], [p.passage_id for p in dataset.passages],
                                   config.harness.top_k, config.harness.max_new_tokens, settings.encoder_dtype),
              name="baselines", route_prefix="/baselines")
    return QueryClient(f"{federation.api.url}/baselines", "unused")


def _measure(paths: dict, questions: list[str], repeats: int) -> dict:
    """Per concurrency and path: throughput per repeat, and every request's latency."""
    runs: dict = {c: {name: {"throughput": [], "latency": []} for name in paths} for c in CONCURRENCY}
    names = list(paths)
    for concurrency in CONCURRENCY:
        batch = questions[:max(32, 4 * concurrency)]
        for name in names:  # warm-up
            paths[name](batch[:concurrency], concurrency)
        for repeat in range(repeats):
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                started = time.perf_counter()
                answers = paths[name](batch, concurrency)
                elapsed = time.perf_counter() - started
                runs[concurrency][name]["throughput"].append(len(batch) / elapsed)
                runs[concurrency][name]["latency"] += [a.seconds * 1e3 for a in answers]
    return runs


def _overhead(federation, config, questions: list[str], repeats: int) -> dict:
    """p50 latency of one Poly-PRAG question in process (the replicas' encoder, the same fan-out
    and generate) against over HTTP, interleaved."""
    engine, encoder = QueryEngine(federation.base), SentenceEncoder(dtype=config.serve.encoder_dtype)
    model = federation.model
    local, remote = [], []
    for i in range(repeats):
        question = questions[i % len(questions)]
        started = time.perf_counter()
        routings, _ = federation.fanout.route(encoder.embed([question]), config.serve.top_k)
        engine.answer(model, [question], routings, config.harness.max_new_tokens)
        local.append((time.perf_counter() - started) * 1e3)
        remote.append(federation.api.ask_one(question).seconds * 1e3)
    return {"in_process_p50_ms": statistics.median(local), "http_p50_ms": statistics.median(remote),
            "overhead_p50_ms": statistics.median(r - q for r, q in zip(remote, local))}


def _summary(runs: dict) -> dict:
    out = {}
    for concurrency, paths in runs.items():
        row = {}
        for name, measured in paths.items():
            row[name] = {"throughput_qps": statistics.median(measured["throughput"]),
                         "p50_ms": float(np.percentile(measured["latency"], 50)),
                         "p95_ms": float(np.percentile(measured["latency"], 95))}
        row["vs"] = {mine: {other: statistics.median(p / o for p, o in zip(paths[mine]["throughput"],
                                                                          paths[other]["throughput"]))
                            for other in BASELINES} for mine in ("poly", "poly_router")}
        out[concurrency] = row
    return out


def _markdown(summary: dict, overhead: dict, meta: dict) -> str:
    machine = ", ".join(f"{k}: {v}" for k, v in meta["machine"].items())
    header = (f"# Serving benchmark\n\nMachine: {machine}. Model: {meta['model']}. {meta['questions']} single-hop "
              f"questions, {meta['repeats']} interleaved repeats per concurrency, {meta['sites']} site daemons, "
              f"{meta['replicas']} replica(s) of {meta['replica_cpus']} CPU each, answers of at most "
              f"{meta['max_new_tokens']} tokens (greedy, stopping at end-of-text).\n")
    lines = [header, "| concurrency | path | throughput (q/s, median) | p50 ms | p95 ms |", "|---|---|---|---|---|"]
    for concurrency, row in summary.items():
        for name in PATHS:
            r = row[name]
            lines.append(f"| {concurrency} | {name} | {r['throughput_qps']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} |")
    lines += ["", "Poly-PRAG's throughput over each path's (median of per-repeat ratios):", "",
              "| concurrency | routing | vs closed-book | vs PRAG merge | vs PRAG batched | vs standard RAG |",
              "|---|---|---|---|---|---|"]
    for concurrency, row in summary.items():
        for mine in ("poly", "poly_router"):
            ratio = row["vs"][mine]
            ratios = " | ".join(f"{ratio[b]:.2f}×" for b in BASELINES)
            lines.append(f"| {concurrency} | {'fan-out' if mine == 'poly' else 'learned router'} | {ratios} |")
    lines += ["", (f"API overhead at concurrency 1 (Poly-PRAG, {meta['overhead_questions']} questions, interleaved): "
                   f"in process p50 {overhead['in_process_p50_ms']:.1f} ms, over HTTP p50 {overhead['http_p50_ms']:.1f} "
                   f"ms, median difference {overhead['overhead_p50_ms']:.1f} ms."), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args, config = setup(__doc__, "runs/bench-serving", argv, extra={
        "--repeats": {"type": int, "default": 3, "help": "interleaved repeats per concurrency"},
        "--rounds": {"type": int, "default": 2, "help": "federated rounds before serving"}})
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    config = dataclasses.replace(config, federation=dataclasses.replace(
        config.federation, work_dir=str(work / "federation"), rounds=args.rounds))
    with running_federation(config, show_progress=False, serving=True) as federation:
        baselines = _baselines(config, federation, work)
        questions = [q.text for q in federation.dataset.questions if q.kind == "single"]
        paths = {"poly": lambda qs, c: federation.api.ask_many(qs, c),
                 "poly_router": lambda qs, c: federation.api.ask_many(qs, c, routing="router"),
                 "closed_book": lambda qs, c: federation.api.ask_many(qs, c, method="closed_book"),
                 "prag_merge": lambda qs, c: baselines.ask_many(qs, c, method="prag_merge"),
                 "prag": lambda qs, c: baselines.ask_many(qs, c, method="prag"),
                 "standard_rag": lambda qs, c: baselines.ask_many(qs, c, method="standard_rag")}
        runs = _measure(paths, questions, args.repeats)
        overhead = _overhead(federation, config, questions, 40)
        meta = {"machine": machine_description(), "model": federation.base.path.name, "questions": len(questions),
                "repeats": args.repeats, "sites": len(federation.fanout.sites), "replicas": config.serve.replicas,
                "replica_cpus": config.serve.replica_cpus, "max_new_tokens": config.harness.max_new_tokens,
                "overhead_questions": 40}
        baselines.close()
    summary = _summary(runs)
    out = Path(args.out or RESULTS)
    atomic_write_text(out / "serving.json", json.dumps({"meta": meta, "summary": summary, "overhead": overhead,
                                                        "runs": runs}, indent=2))
    atomic_write_text(out / "serving.md", _markdown(summary, overhead, meta))
    print(_markdown(summary, overhead, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
