"""Save and load a trained generator, bound to the base model it was distilled from.

The checkpoint is the generator's weights plus the mask token's frozen vector, with a manifest
holding the configuration and the base model's digest; a checkpoint from another base model is
refused with :class:`fedprag.shared.lora.store.EncodingMismatch`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from fedprag.shared.lora.layers import LoRALinear
from fedprag.shared.lora.store import load_encoding, save_encoding
from fedprag.shared.methods.distilled.config import DistilledConfig
from fedprag.shared.methods.distilled.layers import Generator
from fedprag.shared.methods.distilled.trainer import DistilledEncoder, train_generator
from fedprag.shared.models.loading import BaseModel
from fedprag.shared.paths import fedprag_home

METHOD = "distilled"
FORMAT_VERSION = 1
# Bump when the generator's layers or training change the weights a configuration produces, so
# that cached generators made by older code are not reused.
TRAINING_VERSION = 3
MASK_VECTOR = "mask_vector"


def save(directory: str | Path, encoder: DistilledEncoder) -> int:
    """Write the generator checkpoint; returns bytes on disk."""
    tensors = {f"generator.{k}": v.detach() for k, v in encoder.generator.state_dict().items()}
    tensors[MASK_VECTOR] = encoder.mask_vector
    config = dataclasses.asdict(encoder.generator.config)
    manifest = {"method": METHOD, "format_version": FORMAT_VERSION, "base_model_digest": encoder.base.digest,
                "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}}
    return save_encoding(directory, tensors, manifest)


def load(directory: str | Path, base: BaseModel, layers: dict[str, LoRALinear]) -> DistilledEncoder:
    """Read a generator saved by :func:`save` for this base model and bind it to ``base``."""
    tensors, manifest = load_encoding(directory, METHOD, base.digest)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in manifest["config"].items()}
    generator = Generator(layers, base.model.config.hidden_size, DistilledConfig(**fields))
    generator.load_state_dict({k.removeprefix("generator."): v for k, v in tensors.items() if k != MASK_VECTOR})
    generator.eval()
    return DistilledEncoder.attach(base, layers, generator, tensors[MASK_VECTOR])


def cache_dir(base_digest: str, config: DistilledConfig) -> Path:
    """Where the generator for a base model and configuration is cached (keyed by the code too)."""
    payload = json.dumps({"training_version": TRAINING_VERSION, **dataclasses.asdict(config)}, sort_keys=True)
    key = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return fedprag_home() / "generators" / f"distilled-{base_digest[:12]}-{key}"


def cached_generator(base: BaseModel, layers: dict[str, LoRALinear], config: DistilledConfig,
                     show_progress: bool = True) -> tuple[DistilledEncoder, Path]:
    """The generator for ``base`` and ``config``: loaded from the cache, else trained and cached.

    The cache lives under ``$FEDPRAG_HOME/generators`` (see :func:`cache_dir`), so a run never
    reuses a generator made for another base model, other settings or older training code.
    """
    path = cache_dir(base.digest, config)
    if (path / "manifest.json").is_file():
        return load(path, base, layers), path
    encoder, _ = train_generator(base, layers, config, show_progress)
    save(path, encoder)
    return encoder, path
