"""Evaluate a federation's pool, routed by its sites, beside the centralised methods on the same data.

The federation is passed in (anything with the attributes of
:class:`fedprag.cluster.demo.Federation`), so evaluation depends on no launcher.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from fedprag.shared.data.schema import Dataset
from fedprag.shared.eval.config import HarnessConfig
from fedprag.shared.eval.harness import evaluate
from fedprag.shared.eval.methods import EvalMethod, Routed, Served, build_methods
from fedprag.shared.eval.report import Report
from fedprag.shared.methods.base import MethodModel, Routing
from fedprag.shared.methods.config import MethodConfig
from fedprag.shared.models.augment_config import AugmentConfig
from fedprag.shared.models.loading import BaseModel


class FanOutLike(Protocol):
    """Routing for queries from the federation's sites (:class:`fedprag.cluster.serving.fanout.FanOut`)."""

    def routings(self, query_embeddings: np.ndarray) -> list[Routing]: ...


class ServedLike(Protocol):
    """The query API's client (:class:`fedprag.cluster.serving.client.QueryClient`)."""

    def answers(self, questions: list[str]) -> list[str]: ...


class FederationLike(Protocol):
    """A finished federation (:class:`fedprag.cluster.demo.Federation`)."""

    dataset: Dataset
    base: BaseModel
    model: MethodModel
    stored_bytes: int
    fanout: FanOutLike
    baselines: tuple[str, ...]
    api: ServedLike | None


def evaluate_federation(federation: FederationLike, method_configs: Mapping[str, MethodConfig], harness: HarnessConfig,
                        augment: AugmentConfig, work_dir: Path, show_progress: bool = True,
                        baselines: tuple[str, ...] | None = None) -> Report:
    """The results table: ``baselines`` trained centrally on the union of the data (default: the
    federation's own, those of its mode), and the federation's latest release, ``<mode>_federated``, routed by
    fan-out to its site daemons over gRPC with what the sites send: asked over HTTP through the
    query API when the federation serves one, else through an in-process fan-out. The methods are
    configured by ``method_configs``, encode with ``augment`` and work under ``work_dir``."""
    baselines = federation.baselines if baselines is None else baselines
    if federation.api is not None:
        federated: EvalMethod = Served(federation.model.name, federation.api.answers, federation.stored_bytes)
    else:
        federated = Routed(federation.model, federation.fanout.routings, federation.stored_bytes)
    methods = [*build_methods(baselines, method_configs), federated]
    return evaluate(federation.dataset, federation.base, methods, harness, work_dir, show_progress, augment=augment)
