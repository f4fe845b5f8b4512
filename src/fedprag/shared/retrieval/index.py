"""A faiss inner-product index over normalised passage embeddings, with int64 passage ids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from fedprag.shared.io import atomic_path


class PassageIndex:
    """Exact inner-product search (cosine on unit vectors) returning caller-chosen int64 ids."""

    def __init__(self, dim: int):
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @classmethod
    def build(cls, embeddings: np.ndarray, ids: Sequence[int]) -> PassageIndex:
        if len(embeddings) != len(ids):
            raise ValueError(f"{len(embeddings)} embeddings but {len(ids)} ids")
        index = cls(embeddings.shape[1])
        index.add(embeddings, ids)
        return index

    def add(self, embeddings: np.ndarray, ids: Sequence[int]) -> None:
        self.index.add_with_ids(np.ascontiguousarray(embeddings, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query; ids are -1 where fewer than ``k`` passages exist."""
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            faiss.write_index(self.index, str(tmp))

    @classmethod
    def load(cls, path: str | Path) -> PassageIndex:
        loaded = cls.__new__(cls)
        loaded.index = faiss.read_index(str(path))
        return loaded


def recall_at_k(retrieved: Sequence[Sequence[int]], gold: Sequence[Sequence[int]], k: int) -> float:
    """Mean fraction of each question's gold passages found among its top-``k`` results."""
    if not gold:
        return 0.0
    hits = [len(set(r[:k]) & set(g)) / len(g) for r, g in zip(retrieved, gold)]
    return float(np.mean(hits))


def complete_at_k(retrieved: Sequence[Sequence[int]], gold: Sequence[Sequence[int]], k: int) -> float:
    """Share of questions with *every* gold passage among their top-``k`` results: for a multi-hop
    question, whether a reader of the retrieved passages could chain its two facts at all."""
    if not gold:
        return 0.0
    return float(np.mean([set(g) <= set(r[:k]) for r, g in zip(retrieved, gold)]))
