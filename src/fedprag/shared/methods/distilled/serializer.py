"""Save and load a trained generator, bound to the base model it was distilled from.

The checkpoint is the generator's weights plus the mask token's frozen vector, with a manifest
holding the configuration and the base model's digest; a checkpoint from another base model is
refused with :class:`fedprag.shared.lora.store.EncodingMismatch`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from fedprag.shared.lora.layers import Adapter, LoRALinear, LowRank
from fedprag.shared.lora.store import EncodingMismatch, load_encoding, save_encoding
from fedprag.shared.methods.distilled.config import DistilledConfig
from fedprag.shared.methods.distilled.layers import Generator
from fedprag.shared.methods.distilled.trainer import DistilledEncoder, new_encoder, train_generator
from fedprag.shared.models.loading import BaseModel
from fedprag.shared.models.tiny import shipped as shipped_models
from fedprag.shared.paths import fedprag_home

METHOD = "distilled"
FORMAT_VERSION = 1
# Bump when the generator's layers or training change the weights a configuration produces, so
# that cached generators made by older code are not reused.
TRAINING_VERSION = 3
MASK_VECTOR = "mask_vector"
SHIPPED = Path(__file__).resolve().parent / "shipped"
"""Pretrained generators that ship with fedprag, named as the cache names them: the built-in
default model's, at the default configuration (made by ``fedprag model build-generator --ship``
with no shipped copy of it in place)."""


def generator_arrays(encoder: DistilledEncoder) -> dict[str, np.ndarray]:
    """The generator's parameters as float32 arrays keyed by parameter name: what crosses the wire."""
    return {k: v.detach().float().numpy().copy() for k, v in encoder.generator.state_dict().items()}


def load_arrays(encoder: DistilledEncoder, arrays: Mapping[str, np.ndarray]) -> None:
    """Set the generator's parameters from :func:`generator_arrays`' form; refuses other names or shapes."""
    state = encoder.generator.state_dict()
    got = {k: tuple(np.shape(v)) for k, v in arrays.items()}
    expected = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        wrong = sorted(k for k in set(expected) | set(got) if got.get(k) != expected.get(k))
        raise EncodingMismatch(f"generator parameters do not match this generator's ({wrong[:3]})")
    encoder.generator.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()})
    encoder.generator.eval()


def factor_arrays(adapter: Adapter, row: int) -> dict[str, np.ndarray]:
    """Row ``row`` of a generated adapter as wire tensors: ``<module>.lora_A [r, in]`` and
    ``<module>.lora_B [out, r]`` per adapted module, with the LoRA scale folded into ``B`` (so the
    receiver needs no setting of the sender's to use them)."""
    arrays = {}
    for name, delta in adapter.items():
        arrays[f"{name}.lora_A"] = delta.A[row].detach().float().numpy().copy()
        arrays[f"{name}.lora_B"] = (delta.scale * delta.B[row]).detach().float().numpy().copy()
    return arrays


def combined_adapter(factor_sets: Sequence[Sequence[Mapping[str, np.ndarray]]]) -> Adapter:
    """One batched adapter from sites' generated factors (:func:`factor_arrays`' form): row ``i``
    concatenates the ranks of every factor set in ``factor_sets[i]``, so its ``ΔW = Σ_s B_s A_s``,
    the sum of the sites' LoRAs.

    Rows with fewer sites are padded with zero ranks (which add nothing); every row needs at least one.
    """
    if not factor_sets or not all(factor_sets):
        raise ValueError("every row needs the factors of at least one site")
    names = sorted({key.rsplit(".", 1)[0] for key in factor_sets[0][0]})
    width = max(sum(f[f"{names[0]}.lora_A"].shape[0] for f in row) for row in factor_sets)
    adapter = {}
    for name in names:
        a_rows, b_rows = [], []
        for row in factor_sets:
            a = torch.from_numpy(np.concatenate([f[f"{name}.lora_A"] for f in row], 0))
            b = torch.from_numpy(np.concatenate([f[f"{name}.lora_B"] for f in row], 1))
            pad = width - a.shape[0]
            a_rows.append(torch.nn.functional.pad(a, (0, 0, 0, pad)))
            b_rows.append(torch.nn.functional.pad(b, (0, pad)))
        adapter[name] = LowRank(A=torch.stack(a_rows), B=torch.stack(b_rows), scale=1.0)
    return adapter


def save(directory: str | Path, encoder: DistilledEncoder, extra: Mapping[str, object] | None = None) -> int:
    """Write the generator checkpoint (``extra`` goes into the manifest); returns bytes on disk."""
    tensors = {f"generator.{k}": v.detach() for k, v in encoder.generator.state_dict().items()}
    tensors[MASK_VECTOR] = encoder.mask_vector
    config = dataclasses.asdict(encoder.generator.config)
    manifest = {"method": METHOD, "format_version": FORMAT_VERSION, "base_model_digest": encoder.base.digest,
                "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}, **(extra or {})}
    return save_encoding(directory, tensors, manifest)


def load(directory: str | Path, base: BaseModel, layers: dict[str, LoRALinear]) -> DistilledEncoder:
    """Read a generator saved by :func:`save` for this base model and bind it to ``base``."""
    return load_with_manifest(directory, base, layers)[0]


def load_with_manifest(directory: str | Path, base: BaseModel,
                       layers: dict[str, LoRALinear]) -> tuple[DistilledEncoder, dict]:
    """:func:`load`, plus the checkpoint's manifest."""
    tensors, manifest = load_encoding(directory, METHOD, base.digest)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in manifest["config"].items()}
    generator = Generator(layers, base.model.config.hidden_size, DistilledConfig(**fields))
    generator.load_state_dict({k.removeprefix("generator."): v for k, v in tensors.items() if k != MASK_VECTOR})
    generator.eval()
    return DistilledEncoder.attach(base, layers, generator, tensors[MASK_VECTOR]), manifest


def mask_vector(directory: str | Path, base_digest: str) -> torch.Tensor:
    """The mask token's vector a generator checkpoint was distilled with (a query API installs the
    same one, holding no generator)."""
    tensors, _ = load_encoding(directory, METHOD, base_digest)
    return tensors[MASK_VECTOR]


def cache_dir(base_digest: str, config: DistilledConfig) -> Path:
    """Where the generator for a base model and configuration is cached (keyed by the code too)."""
    shape = {k: v for k, v in dataclasses.asdict(config).items() if k not in config.FEDERATED}
    payload = json.dumps({"training_version": TRAINING_VERSION, **shape}, sort_keys=True)
    key = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return fedprag_home() / "generators" / f"distilled-{base_digest[:12]}-{key}"


def starting_encoder(base: BaseModel, layers: dict[str, LoRALinear], config: DistilledConfig,
                     show_progress: bool = True) -> DistilledEncoder:
    """The generator federated distillation starts from, as ``config.start`` says: the pretrained
    one (shipped, or cached, or trained first if this machine has none), or a new one."""
    if config.start == "pretrained":
        return cached_generator(base, layers, config, show_progress)[0]
    return new_encoder(base, layers, config)


def cached_generator(base: BaseModel, layers: dict[str, LoRALinear], config: DistilledConfig,
                     show_progress: bool = True) -> tuple[DistilledEncoder, Path]:
    """The generator for ``base`` and ``config``: the shipped one, else the cached one, else trained and cached.

    The cache lives under ``$FEDPRAG_HOME/generators`` (see :func:`cache_dir`), so a run never
    reuses a generator made for another base model, other settings or older training code.
    """
    path = cache_dir(base.digest, config)
    shipped = SHIPPED / path.name
    if (shipped / shipped_models.SUMS).is_file():
        return load(shipped_models.verified(shipped), base, layers), shipped
    if (path / "manifest.json").is_file():
        return load(path, base, layers), path
    encoder, _ = train_generator(base, layers, config, show_progress)
    save(path, encoder)
    return encoder, path


def ship(path: Path) -> Path:
    """For maintainers: copy a cached generator into the package's shipped generators, with its
    SHA256SUMS; returns where."""
    return path if path.parent == SHIPPED else shipped_models.ship(path, SHIPPED)
