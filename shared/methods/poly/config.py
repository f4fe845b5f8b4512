"""Poly-PRAG's hyper-parameters (DESIGN.md §2.2)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from shared.lora.layers import FFN_TARGETS

ROUTING_MODES = ("shared", "per_layer")


@dataclass(frozen=True)
class PolyConfig:
    """A pool of ``n_experts`` rank-``rank`` LoRA experts and one routing-logit row per passage.

    ``routing`` is ``"shared"`` (one row of K logits per passage, used by every layer) or
    ``"per_layer"`` (K logits per transformer layer). ``uniform`` trains and answers with equal
    weights on every expert: the ablation that shows what routing contributes.
    """

    n_experts: int = 20
    rank: int = 1
    alpha: float = 16.0
    targets: tuple[str, ...] = FFN_TARGETS
    routing: str = "shared"
    uniform: bool = False
    # Offline encoding: multi-task training of pool and routing over every passage's augmentation.
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    routing_lr: float = 5e-2
    temperature: float = 1.0
    # Incremental encoding ("Poly-z"): routing rows only, pool frozen.
    incremental_epochs: int = 2
    incremental_lr: float = 0.1
    incremental_batch_size: int = 32
    # Routed inference: passages' weights combined by softmax(score / score_temperature); top-m kept.
    top_m: int = 10
    score_temperature: float = 0.05
    seed: int = 0
    # Federated rounds: FedProx's proximal weight μ (0 = plain local training), and FFA-LoRA's
    # frozen A factors, which make averaging the sites' experts exact (ΔW is linear in B).
    proximal_mu: float = 0.0
    freeze_a: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def validate(self) -> None:
        for name in ("n_experts", "rank", "epochs", "batch_size", "incremental_epochs", "incremental_batch_size", "top_m"):
            if getattr(self, name) < 1:
                raise ValueError(f"poly.{name}: must be a positive integer")
        for name in ("alpha", "lr", "routing_lr", "temperature", "incremental_lr", "score_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"poly.{name}: must be positive")
        if self.routing not in ROUTING_MODES:
            raise ValueError(f"poly.routing: must be one of {ROUTING_MODES}, not '{self.routing}'")
        if self.proximal_mu < 0:
            raise ValueError("poly.proximal_mu: must be zero or positive")
        if self.top_m > self.n_experts:
            raise ValueError(f"poly.top_m: {self.top_m} is more than poly.n_experts ({self.n_experts})")

    def to_numbers(self) -> dict[str, float]:
        """The training settings as numbers only, the form the wire schema admits."""
        numbers = {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)
                   if isinstance(getattr(self, f.name), (int, float))}
        numbers["routing_per_layer"] = float(self.routing == "per_layer")
        return numbers

    @classmethod
    def from_numbers(cls, numbers: Mapping[str, float]) -> PolyConfig:
        """Inverse of :meth:`to_numbers` (unknown keys are ignored; targets keep their default)."""
        kinds = {f.name: f.type for f in dataclasses.fields(cls)}
        values: dict[str, object] = {}
        for name, value in numbers.items():
            if kinds.get(name) in ("int", "bool"):
                values[name] = int(value) if kinds[name] == "int" else bool(value)
            elif kinds.get(name) == "float":
                values[name] = float(value)
        values["routing"] = "per_layer" if numbers.get("routing_per_layer") else "shared"
        config = cls(**values)
        config.validate()
        return config
