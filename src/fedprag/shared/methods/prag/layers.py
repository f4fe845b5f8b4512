"""Stored per-passage LoRAs, and the per-request adapter that sums a request's top-k of them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedprag.shared.lora.layers import LowRank


@dataclass
class PRAGAdapters:
    """Every passage's LoRA, stacked: per module ``A [P, r, in]`` and ``B [P, out, r]``."""

    passage_ids: list[str]
    factors: dict[str, tuple[Tensor, Tensor]]
    scale: float

    def __post_init__(self) -> None:
        self._position = {pid: i for i, pid in enumerate(self.passage_ids)}

    def rows(self, passage_ids: list[str]) -> list[int]:
        """Row positions of passages; an unknown id is an error, never silently skipped."""
        missing = [pid for pid in passage_ids if pid not in self._position]
        if missing:
            raise KeyError(f"no PRAG adapter for passages {missing[:5]}")
        return [self._position[pid] for pid in passage_ids]

    def summed(self, rows: Tensor) -> dict[str, LowRank]:
        """One adapter per request: the sum of its passages' ΔW (rows ``[b, k]``).

        Summing ΔW = Σ_j B_j A_j equals one LoRA whose factors are the passages' factors
        concatenated along the rank — PEFT's ``combination_type="cat"``.
        """
        b, k = rows.shape
        out = {}
        for name, (a, bb) in self.factors.items():
            r = a.shape[1]
            cat_a = a[rows].reshape(b, k * r, a.shape[2])
            cat_b = bb[rows].permute(0, 2, 1, 3).reshape(b, bb.shape[1], k * r)
            out[name] = LowRank(cat_a, cat_b, self.scale)
        return out

    @staticmethod
    def concat(parts: list[PRAGAdapters]) -> PRAGAdapters:
        names = parts[0].factors
        return PRAGAdapters(
            passage_ids=[pid for p in parts for pid in p.passage_ids],
            factors={n: (torch.cat([p.factors[n][0] for p in parts]), torch.cat([p.factors[n][1] for p in parts]))
                     for n in names},
            scale=parts[0].scale,
        )
