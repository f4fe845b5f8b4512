"""The query API's routing step: fan a query out to the sites and combine their replies into one routing.

Each site daemon answers over gRPC (:class:`RemoteSite`) with one
:class:`~fedprag.shared.wire.RoutingReply` per query: the scores of its top-k passages (under ids
fresh for the reply) and one expert mixture, their routing rows blended by score. The query API
keeps the global top-k scores across sites, weighs each site's mixture by the softmax(score /
temperature) mass of its passages among them, and keeps the top-m experts: one mixture per query,
handed to the query engine as :attr:`Routing.weights <fedprag.shared.methods.base.Routing>`.

In distilled mode each site answers with a :class:`~fedprag.shared.wire.FactorReply`: its top-k
scores, those passages' token counts, and the LoRA its generator made from them. The query API
keeps the global top-k scores across sites; the sites holding one of them contribute their LoRAs,
weighed by the softmax of their best scores (ranks concatenated), and their passages' mask tokens,
best site first (:func:`combine_factor_replies`).

A federation serves one mode: a site that answers in the other mode is skipped and named in the
trace (a Poly-PRAG mixture and a generated LoRA are not two encodings of one thing to add).

Every site is asked at once, with a deadline. A site that is down, late or refuses is skipped;
:class:`FanOutTrace` names it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import grpc
import numpy as np
import torch

from fedprag.cluster.serving.messages import FanOutTrace
from fedprag.shared.data.schema import MAX_PASSAGE_CHARS
from fedprag.shared.log import get_logger
from fedprag.shared.methods.base import Routing
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.layers import keep_top_m
from fedprag.shared.proto import routing_pb2_grpc
from fedprag.shared.wire import (
    EMBEDDINGS,
    MAX_MESSAGE_BYTES,
    MIXTURE,
    ROUTING_REPLIES,
    FactorReply,
    RoutingReply,
    RoutingRequest,
    WireError,
    decode_proto,
)

log = get_logger(__name__)

MIN_SITE_SHARE = 0.1
"""A site whose LoRA would weigh less than this in a distilled-mode query is left out."""
MAX_PASSAGE_TOKENS = 4 * MAX_PASSAGE_CHARS
"""The most tokens a stored passage can have (a byte-level tokenizer spends at most four per character)."""


def blend_replies(replies: Sequence[RoutingReply], k: int, config: PolyConfig) -> Routing:
    """One query's routing from every site's reply: site mixtures weighted by their share of the
    softmax over the global top-``k`` scores, then the top-m experts."""
    hits = sorted(((s, site) for site, r in enumerate(replies) for s in r.scores.values()), key=lambda h: -h[0])[:k]
    if not hits:
        raise ValueError("no site returned a passage for this query")
    scores = torch.tensor([s for s, _ in hits])
    share = torch.softmax(scores / config.score_temperature, dim=0)
    per_site = torch.zeros(len(replies)).index_add_(0, torch.tensor([site for _, site in hits]), share)
    mixtures = torch.from_numpy(np.stack([r.mixture[MIXTURE] for r in replies]))
    mixed = (per_site[:, None, None] * mixtures).sum(0)
    return Routing(scores=tuple(scores.tolist()), weights=keep_top_m(mixed, config.top_m))


def combine_factor_replies(replies: Sequence[FactorReply], k: int, temperature: float) -> Routing:
    """One query's routing from every site's generated LoRA: a convex combination of the LoRAs of
    the sites that hold any of the global top-``k`` passages, best site first, each with all the
    passages its LoRA was made from.

    Site ``s`` weighs ``w_s = softmax(best score / temperature)`` over those sites, and a site
    below :data:`MIN_SITE_SHARE` is left out (the others renormalised); ``w_s`` is folded into its
    ``lora_B``, so the ranks concatenate to ``ΔW = Σ_s w_s B_s A_s``. A plain sum would add every
    LoRA's document-independent part once per site: measured on the built-in model, summing the
    top-3 passages' sites fell to closed-book (docs/experiments.md §9.3).
    """
    hits = sorted(((s, site) for site, r in enumerate(replies) for s in r.scores.values()), key=lambda h: -h[0])[:k]
    if not hits:
        raise ValueError("no site returned a passage for this query")
    order = list(dict.fromkeys(site for _, site in hits))
    best = np.array([max(replies[site].scores.values()) for site in order])
    share = np.exp((best - best.max()) / temperature)
    keep = share / share.sum() >= MIN_SITE_SHARE
    order, share = [site for site, kept in zip(order, keep) if kept], share[keep] / share[keep].sum()
    factors = tuple({key: value * w if key.endswith(".lora_B") else value for key, value in replies[site].factors.items()}
                    for site, w in zip(order, share.astype(np.float32)))
    lengths = tuple(tuple(int(replies[site].lengths[i])  # as the site read them, best first
                          for i, _ in sorted(replies[site].scores.items(), key=lambda item: -item[1]))
                    for site in order)
    return Routing(scores=tuple(s for s, _ in hits), factors=factors, lengths=lengths)


def check_factor_reply(reply: FactorReply) -> None:
    """Refuse a distilled-mode reply the query API could not use: token counts that are not the
    scored passages' or not plausible passage lengths, or factors that are not ``lora_A [r, in]``
    and ``lora_B [out, r]`` pairs of one rank (none at all only when no passage was found)."""
    if set(reply.lengths) != set(reply.scores):
        raise WireError("its token counts are not its passages'")
    if any(not float(n).is_integer() or not 0 < n <= MAX_PASSAGE_TOKENS for n in reply.lengths.values()):
        raise WireError(f"token counts must be whole numbers in 1..{MAX_PASSAGE_TOKENS}")
    if bool(reply.scores) != bool(reply.factors):
        raise WireError("factors come with passages, and only with them")
    modules = {key.rsplit(".", 1)[0] for key in reply.factors}
    if set(reply.factors) != {f"{m}.{part}" for m in modules for part in ("lora_A", "lora_B")}:
        raise WireError("factors must come as <module>.lora_A and <module>.lora_B pairs")
    ranks = set()
    for module in modules:
        a, b = reply.factors[f"{module}.lora_A"], reply.factors[f"{module}.lora_B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise WireError(f"{module}: lora_A must be [r, in] and lora_B [out, r]")
        ranks.add(a.shape[0])
    if len(ranks) > 1:
        raise WireError("every module's factors must have one rank")


def signature(replies: Sequence[RoutingReply] | Sequence[FactorReply]) -> object:
    """What must agree across the sites answering one batch: the mixture's shape, or the names and
    shapes of the generated factors (``None`` for a site that found no passage at all)."""
    if isinstance(replies[0], RoutingReply):
        return replies[0].mixture[MIXTURE].shape
    return next((tuple(sorted((k, v.shape) for k, v in r.factors.items())) for r in replies if r.factors), None)


class SiteUnavailable(RuntimeError):
    """A site did not answer in time, refused the call, or sent a reply the wire schema refuses."""


class RoutingSite(Protocol):
    """Anything that answers routing requests for one site (a :class:`RemoteSite`, or in a unit test a fake)."""

    name: str

    def route(self, query_embeddings: np.ndarray, k: int,
              score_temperature: float) -> list[RoutingReply] | list[FactorReply]: ...


class Combination(Protocol):
    """What the fan-out needs of the federation's mode (:class:`fedprag.cluster.serving.modes.ServingMode`)."""

    name: str
    reply: type
    noun: str

    def combine(self, replies: Sequence, k: int, poly: PolyConfig) -> Routing: ...


class RemoteSite:
    """A site daemon's routing service over gRPC: TLS against the federation's CA, a bearer token,
    and ``deadline`` seconds per call."""

    def __init__(self, name: str, address: str, ca_cert: str | Path, token: str, deadline: float = 5.0):
        self.name, self.address, self.deadline = name, address, deadline
        self._metadata = (("authorization", f"Bearer {token}"),)
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_cert).read_bytes())
        self._channel = grpc.secure_channel(address, credentials, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        self._stub = routing_pb2_grpc.SiteRoutingStub(self._channel)

    def route(self, query_embeddings: np.ndarray, k: int,
              score_temperature: float) -> list[RoutingReply] | list[FactorReply]:
        request = RoutingRequest(k=k, score_temperature=score_temperature,
                                 queries={EMBEDDINGS: np.asarray(query_embeddings, dtype=np.float32)})
        try:
            reply = self._stub.Route(request.to_proto(), timeout=self.deadline, metadata=self._metadata)
            replies = [decode_proto(r, ROUTING_REPLIES) for r in reply.replies]
        except grpc.RpcError as exc:
            raise SiteUnavailable(f"{exc.code().name}: {exc.details()}") from None
        except WireError as exc:
            raise SiteUnavailable(f"malformed reply: {exc}") from None
        if len(replies) != len(query_embeddings):
            raise SiteUnavailable(f"{len(replies)} replies for {len(query_embeddings)} queries")
        if len({type(r) for r in replies}) > 1:
            raise SiteUnavailable("replies of two modes in one answer")
        if any(isinstance(r, RoutingReply) and (MIXTURE not in r.mixture or r.mixture[MIXTURE].ndim != 2)
               for r in replies):
            raise SiteUnavailable(f"a reply without a [G, K] '{MIXTURE}'")
        try:
            for reply in replies:
                if isinstance(reply, FactorReply):
                    check_factor_reply(reply)
        except WireError as exc:
            raise SiteUnavailable(f"malformed reply: {exc}") from None
        return replies  # type: ignore[return-value]

    def close(self) -> None:
        self._channel.close()


class FanOut:
    """Routing for queries from a set of sites' routing services, asked in parallel.

    Sites route with the pool the coordinator last released to them. While a new release reaches
    them one by one, replies come from two versions; the fan-out blends only the newest version's
    replies (never one older than ``min_version``, or another than a pinned ``version``) and names
    the other sites in the trace, so a query is never answered with a mixture of two pools.
    """

    def __init__(self, sites: Sequence[RoutingSite], k: int, config: PolyConfig, mode: Combination):
        self.sites, self.k, self.config, self.mode = list(sites), k, config, mode
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.sites)), thread_name_prefix="fanout")
        self.last_trace = FanOutTrace()

    def close(self) -> None:
        """Shut the worker threads down and close every site's channel."""
        self._pool.shutdown()
        for site in self.sites:
            if isinstance(site, RemoteSite):
                site.close()

    def routings(self, query_embeddings: np.ndarray) -> list[Routing]:
        """One routing per query (the mode's combination of the answering sites' replies)."""
        routings, self.last_trace = self.route(query_embeddings)
        return routings

    def route(self, query_embeddings: np.ndarray, k: int | None = None, version: int | None = None,
              min_version: int = 0) -> tuple[list[Routing], FanOutTrace]:
        """Ask every site at once; each query's blended mixture and the trace. Raises
        :class:`SiteUnavailable` when no site answers with a usable pool version."""
        k = k or self.k
        started = time.perf_counter()
        trace = FanOutTrace(asked=[site.name for site in self.sites])
        calls = [self._pool.submit(site.route, query_embeddings, k, self.config.score_temperature)
                 for site in self.sites]
        answers: dict[str, list] = {}
        for site, call in zip(self.sites, calls):
            try:
                answers[site.name] = call.result()
            except SiteUnavailable as exc:
                trace.failed[site.name] = str(exc)[:200]
                continue
            if not isinstance(answers[site.name][0], self.mode.reply):
                trace.failed[site.name] = (f"answers in the other mode ({answers.pop(site.name)[0].KIND}); this query "
                                           f"API serves federation.mode = '{self.mode.name}'")
        wanted = version if version is not None else max((r[0].version for r in answers.values()), default=0)
        for name, replies in list(answers.items()):
            if replies[0].version != wanted or wanted < min_version:
                trace.failed[name] = f"routes with pool version {replies[0].version}, not {wanted}"
                del answers[name]
        shapes = {name: signature(replies) for name, replies in answers.items()}
        if len(set(shapes.values()) - {None}) > 1:  # one version, two shapes: a site misconfigured; keep the commonest
            common = max(set(shapes.values()) - {None}, key=list(shapes.values()).count)
            for name, shape in shapes.items():
                if shape is not None and shape != common:
                    trace.failed[name] = f"{self.mode.noun} of another shape than the other sites'"
                    del answers[name]
        for name, reason in trace.failed.items():
            log.warning("fanout.site.failed", site=name, reason=reason)
        if not answers:
            raise SiteUnavailable(f"no site answered with a usable pool: {trace.failed}")
        trace.answered, trace.version = list(answers), wanted
        trace.seconds = time.perf_counter() - started
        replies = list(answers.values())
        return [self.mode.combine([site[q] for site in replies], k, self.config)
                for q in range(len(query_embeddings))], trace
