"""The messages between the query API's ingress and its serving replicas: plain dataclasses that
import no torch (a tensor field is typed only), so the ingress, which holds no model, loads none."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from fedprag.shared.methods.base import Routing


@dataclass
class FanOutTrace:
    """One fan-out: which sites answered, which did not and why, the pool version routed with, and how long it took."""

    asked: list[str] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    version: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class RouteRequest:
    """A question the replica routes before answering it, and how."""

    question: str
    top_k: int
    mode: str
    """``fanout`` or ``router``."""
    version: int | None = None
    """A pinned pool version (``fedprag@<version>``), else the newest."""
    min_version: int = 0
    """The oldest version an unpinned request may be routed with: the newest the ingress returned."""


@dataclass
class RouteResult:
    """A question's expert mixture ``[G, K]`` and how it was found; ``error`` says why there is none
    (``unavailable``: no site or router could route it; ``not_found``: the pinned version is not there)."""

    weights: torch.Tensor | None = None
    routing: Routing | None = None
    """The whole routing (distilled mode: the sites' generated factors and mask-token counts)."""
    version: int = 0
    trace: FanOutTrace = field(default_factory=FanOutTrace)
    error: str = ""
    reason: str = ""


@dataclass(frozen=True)
class GenerateItem:
    """One question to answer with ``method``. ``route`` asks the replica to route it first (Poly-PRAG
    and distilled mode: the expert mixture, or the sites' generated factors, and the pool version);
    without it the item brings its own ``weights`` and ``version``, or a ``routing`` (a method the
    replica was given: retrieved passage ids and scores, and for standard RAG their text)."""

    question: str
    max_new_tokens: int
    method: str = "poly"
    route: RouteRequest | None = None
    weights: torch.Tensor | None = None
    version: int | None = None
    routing: Routing | None = None


@dataclass(frozen=True)
class Generated:
    """One answer and how it was routed, or why the question could not be answered: ``error`` says
    why, ``kind`` is ``question`` (the question itself: too long for the context), ``not_found``
    (the pinned version is not there), ``unavailable`` (no site or router could route it) or ``failed``."""

    answer: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    batch_size: int = 0
    version: int | None = None
    """The pool version the request was routed with (``None``: it was not routed here)."""
    sites: FanOutTrace | None = None
    """The sites asked, answered and failed (fan-out)."""
    experts: tuple[tuple[int, int, float], ...] = ()
    """The heaviest experts of its mixture: ``(group, expert, weight)``."""
    timings: tuple[float, float] = (0.0, 0.0)
    """Seconds routing and generating this request's batch."""
    error: str = ""
    kind: str = ""
