"""Load a base model: any Hugging Face causal LM from a local path, or the built-in ``tiny``.

Nothing is ever downloaded: loading runs with the hub switched off, so a model id that is not a
local directory fails with a clear error instead of reaching the network.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedprag.shared.io import atomic_write_text, file_sha256
from fedprag.shared.models.errors import ModelLoadError
from fedprag.shared.paths import fedprag_home

SUPPORTED_FAMILIES: tuple[str, ...] = ("llama", "qwen2", "qwen3", "mistral")
BUILTIN_PREFIX = "tiny"


@dataclass
class BaseModel:
    """A loaded, frozen base model with its tokenizer and identity."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: Path
    family: str
    digest: str


def _weight_files(path: Path) -> list[Path]:
    return [path / "config.json", *sorted(path.glob("*.safetensors")), *sorted(path.glob("*.bin"))]


def model_digest(path: Path) -> str:
    """sha256 over the config and every byte of every weight file: two checkpoints differ in digest
    whenever any weight does, so encodings never load against the wrong model.

    Computed once and cached under ``$FEDPRAG_HOME/digests``, keyed by each file's resolved path,
    size, inode and modification and change times, so later loads of the same files cost a few
    ``stat`` calls. Where the cache cannot be written the digest is simply recomputed next time.
    """
    files = _weight_files(path)
    stats = [(f, f.stat()) for f in files]
    stamps = [(str(f.resolve()), s.st_size, s.st_ino, s.st_mtime_ns, s.st_ctime_ns) for f, s in stats]
    cached = fedprag_home() / "digests" / hashlib.sha256(json.dumps(stamps).encode()).hexdigest()
    if cached.is_file():
        return cached.read_text().strip()
    h = hashlib.sha256()
    for weights in files:
        h.update(f"{weights.name}:{file_sha256(weights)}\n".encode())
    digest = h.hexdigest()
    with contextlib.suppress(OSError):
        atomic_write_text(cached, digest)
    return digest


def resolve_model_path(spec: str, show_progress: bool = True) -> Path:
    """Turn a model spec into a checkpoint directory.

    ``tiny`` or ``tiny:<recipe>`` is the built-in model: the copy that ships with fedprag (checked
    by sha256), or for a recipe fedprag does not ship, built once and cached. Anything else is a
    local directory holding a Hugging Face checkpoint.
    """
    if spec == BUILTIN_PREFIX or spec.startswith(BUILTIN_PREFIX + ":"):
        from fedprag.shared.models.tiny.recipe import recipe_named
        from fedprag.shared.models.tiny.shipped import ShippedModelError, shipped_model

        recipe = recipe_named(spec.partition(":")[2] or "default")
        try:
            shipped = shipped_model(recipe)
        except ShippedModelError as exc:
            raise ModelLoadError(f"model.path: {exc}") from None
        if shipped is not None:
            return shipped
        from fedprag.shared.models.tiny.build import build_tiny

        return build_tiny(recipe, show_progress=show_progress)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"model.path: '{spec}' is not a directory (weights are never downloaded; "
                             "pass a local Hugging Face checkpoint or 'tiny')")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model.path: '{spec}' has no config.json; it is not a Hugging Face checkpoint")
    return path


def load_causal_lm(spec: str, dtype: torch.dtype = torch.float32, show_progress: bool = True) -> BaseModel:
    """Load a frozen causal LM and its tokenizer from ``spec`` (see :func:`resolve_model_path`)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = resolve_model_path(spec, show_progress)
    family = json.loads((path / "config.json").read_text()).get("model_type", "")
    if family not in SUPPORTED_FAMILIES:
        raise ModelLoadError(f"model.path: model_type '{family}' is not supported (supported: {SUPPORTED_FAMILIES})")
    AutoConfig.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return BaseModel(model=model, tokenizer=tokenizer, path=path, family=family, digest=model_digest(path))
