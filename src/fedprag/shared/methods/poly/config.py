"""Poly-PRAG's hyper-parameters (docs/design.md §2.2)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from fedprag.shared.lora.targets import FFN_TARGETS
from fedprag.shared.methods.config import MethodConfig

ROUTING_MODES = ("shared", "per_layer")
PLACEMENTS = ("all", "last")


@dataclass(frozen=True)
class PolyConfig(MethodConfig):
    """A pool of ``n_experts`` rank-``rank`` LoRA experts and one routing-logit row per passage.

    ``routing`` is ``"shared"`` (one row of K logits per passage, used by every layer) or
    ``"per_layer"`` (K logits per transformer layer). ``uniform`` trains and answers with equal
    weights on every expert: the ablation that shows what routing contributes.

    ``layers`` places the experts: on the FFN projections of ``"all"`` layers, or of the ``"last"``
    layer only. A last-layer pool is trained and routed on the base model's states entering that
    FFN, computed once per sequence, since nothing below it depends on the routing; and only on
    the answers of closed-book QA pairs, so a pool fitted to many passages becomes a decoder of
    routing rows, and rows for new passages are fitted in a few full-batch steps.
    """

    SECTION: ClassVar[str] = "poly"
    POSITIVE: ClassVar[tuple[str, ...]] = (
        "n_experts", "rank", "epochs", "batch_size", "incremental_epochs", "incremental_batch_size", "top_m",
        "alpha", "lr", "routing_lr", "temperature", "incremental_lr", "score_temperature")

    # The default pool takes new passages routing-only (see encodes_new_passages): 256 rank-1
    # experts on the last layer's FFN output projection, trained on cached answer states.
    n_experts: int = 256
    rank: int = 1
    alpha: float = 16.0
    targets: tuple[str, ...] = ("down_proj",)
    routing: str = "shared"
    layers: str = "last"
    uniform: bool = False
    # Offline encoding: multi-task training of pool and routing over every passage's augmentation.
    epochs: int = 100
    batch_size: int = 64
    lr: float = 3e-3
    routing_lr: float = 5e-2
    temperature: float = 1.0
    # Incremental encoding ("Poly-z"): routing rows only, pool frozen.
    incremental_epochs: int = 8
    incremental_lr: float = 0.5
    incremental_batch_size: int = 4096
    # New rows train under sampled weights, as the pool did, or (False) under the inference-time ones.
    incremental_sampling: bool = False
    # The harness's incremental variant fits the pool to the initial passages plus this many
    # synthetic people (names disjoint from the dataset's): a stand-in for the corpus a deployed
    # pool has already seen. A pool fitted to 30 passages alone encodes new ones far worse
    # (benchmarks/results/poly.md).
    incremental_population: int = 1000
    # Routed inference: passages' weights combined by softmax(score / score_temperature); top-m kept.
    top_m: int = 256
    score_temperature: float = 0.05
    seed: int = 0
    # The learned query router, trained in the federation: each round (and at the release) every
    # site continues the global router for router_epochs full-batch steps on its own questions.
    # 64 hidden units (165 KB on the wire) route as well as 256 at this learning rate
    # (docs/experiments.md §7).
    router_epochs: int = 20
    router_lr: float = 0.03
    router_hidden: int = 64
    # Federated rounds: FedProx's proximal weight μ (0 = plain local training), and FFA-LoRA's
    # frozen A factors, which make averaging the sites' experts exact (ΔW is linear in B).
    proximal_mu: float = 0.0
    freeze_a: bool = False

    @property
    def encodes_new_passages(self) -> bool:
        """Whether passages added after training can be encoded routing-only against this pool.

        Measured on the default benchmark (``benchmarks/results/poly_incremental*.md``): a
        last-layer pool fitted to a large corpus reaches the exact match of full training on
        passages it never saw; the all-layer pool reaches 0.078 against 1.000.
        """
        return self.layers == "last"

    def check(self) -> None:
        if self.routing not in ROUTING_MODES:
            raise ValueError(f"poly.routing: must be one of {ROUTING_MODES}, not '{self.routing}'")
        unknown = [t for t in self.targets if t not in FFN_TARGETS]
        if not self.targets or unknown:
            raise ValueError(f"poly.targets: must be a non-empty subset of {list(FFN_TARGETS)}, not {list(self.targets)}")
        if self.layers not in PLACEMENTS:
            raise ValueError(f"poly.layers: must be one of {PLACEMENTS}, not '{self.layers}'")
        if self.layers == "last" and self.routing == "per_layer":
            raise ValueError("poly.routing: 'per_layer' needs poly.layers = 'all' (a last-layer pool has one layer)")
        if self.incremental_population < 0:
            raise ValueError("poly.incremental_population: must be zero or positive")
        if self.proximal_mu < 0:
            raise ValueError("poly.proximal_mu: must be zero or positive")
        if self.top_m > self.n_experts:
            raise ValueError(f"poly.top_m: {self.top_m} is more than poly.n_experts ({self.n_experts})")

    def to_numbers(self) -> dict[str, float]:
        numbers = super().to_numbers()
        numbers["routing_per_layer"] = float(self.routing == "per_layer")
        numbers["layers_last"] = float(self.layers == "last")
        return numbers

    @classmethod
    def from_numbers(cls, numbers: Mapping[str, float], **choices: object) -> PolyConfig:
        return super().from_numbers(numbers, routing="per_layer" if numbers.get("routing_per_layer") else "shared",
                                    layers="last" if numbers.get("layers_last") else "all", **choices)
