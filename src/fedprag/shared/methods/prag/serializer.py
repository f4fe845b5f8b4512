"""Save and load a collection of PRAG LoRAs (one stacked tensor pair per adapted module)."""

from __future__ import annotations

from pathlib import Path

from fedprag.shared.lora.store import load_encoding, save_encoding
from fedprag.shared.methods.prag.config import PRAGConfig
from fedprag.shared.methods.prag.layers import PRAGAdapters

METHOD = "prag"
FORMAT_VERSION = 1


def save(directory: str | Path, adapters: PRAGAdapters, config: PRAGConfig, base_digest: str) -> int:
    """Write the LoRAs; returns bytes on disk."""
    tensors = {}
    for name, (a, b) in adapters.factors.items():
        tensors[f"{name}.lora_A"] = a
        tensors[f"{name}.lora_B"] = b
    manifest = {"method": METHOD, "format_version": FORMAT_VERSION, "base_model_digest": base_digest,
                "rank": config.rank, "alpha": config.alpha, "targets": list(config.targets),
                "passage_ids": adapters.passage_ids}
    return save_encoding(directory, tensors, manifest)


def load(directory: str | Path, base_digest: str) -> PRAGAdapters:
    """Read LoRAs saved by :func:`save` for the same base model."""
    tensors, manifest = load_encoding(directory, METHOD, base_digest)
    names = sorted({k.rsplit(".", 1)[0] for k in tensors})
    factors = {n: (tensors[f"{n}.lora_A"], tensors[f"{n}.lora_B"]) for n in names}
    return PRAGAdapters(manifest["passage_ids"], factors, manifest["alpha"] / manifest["rank"])
