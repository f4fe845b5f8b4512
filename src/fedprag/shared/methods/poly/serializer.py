"""On-disk forms of a Poly-PRAG encoding.

* The **pool**: every module's expert factors as safetensors, with a manifest holding K, rank,
  targets, routing mode, the base model's digest, the pool's own digest and its version.
* The **routing rows**: their own file, whose manifest names the pool digest they were trained
  against. Loading rows for any other pool (another version, another base model) is refused.
* The **learned query router** the federation trained for a pool version: its MLP's tensors, with
  a manifest naming the pool digest it routes for.
* A **PEFT export** of one mixture (a passage's or a query's) as a standard LoRA adapter that
  ``peft.PeftModel.from_pretrained`` loads: rank ``K·r``, ``A`` rows scaled by the weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fedprag.shared.lora.export import save_peft
from fedprag.shared.lora.store import EncodingMismatch, load_encoding, save_encoding
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.layers import ExpertPool, QueryRouter, RoutingTable

POOL_METHOD = "poly_pool"
ROUTING_METHOD = "poly_routing"
ROUTER_METHOD = "poly_query_router"
FORMAT_VERSION = 1
ROUTING_FORMAT_VERSION = 2  # 2: one format for sites and offline encodings


def pool_arrays(pool: ExpertPool) -> dict[str, np.ndarray]:
    """The pool as named arrays (``<module>.lora_A``/``.lora_B``): its file and its wire form."""
    arrays = {}
    for name in pool.names:
        a, b = pool.factors(name)
        arrays[f"{name}.lora_A"] = a.detach().numpy()
        arrays[f"{name}.lora_B"] = b.detach().numpy()
    return arrays


def pool_from_arrays(arrays: Mapping[str, np.ndarray], scale: float, routing: str) -> ExpertPool:
    """Inverse of :func:`pool_arrays`; refuses a set of arrays that is not a pool."""
    names = sorted({k.rsplit(".", 1)[0] for k in arrays})
    missing = [n for n in names if f"{n}.lora_A" not in arrays or f"{n}.lora_B" not in arrays]
    if not names or missing or any(not k.endswith((".lora_A", ".lora_B")) for k in arrays):
        raise EncodingMismatch(f"not an expert pool: modules without both factors {missing[:3]}")
    factors = {n: (torch.from_numpy(np.array(arrays[f"{n}.lora_A"], dtype=np.float32)),
                   torch.from_numpy(np.array(arrays[f"{n}.lora_B"], dtype=np.float32))) for n in names}
    return ExpertPool(factors, scale, routing).requires_grad_(False)


def router_arrays(router: QueryRouter) -> dict[str, np.ndarray]:
    """The learned query router's parameters as named arrays (its wire form)."""
    return {name: tensor.detach().numpy().astype(np.float32) for name, tensor in router.state_dict().items()}


def router_from_arrays(arrays: Mapping[str, np.ndarray], pool: ExpertPool, embedding_dim: int) -> QueryRouter:
    """Inverse of :func:`router_arrays` for a router over ``pool`` (of any hidden width); refuses
    arrays of another shape."""
    hidden = int(np.shape(arrays["net.0.weight"])[0]) if "net.0.weight" in arrays else 1
    router = QueryRouter(embedding_dim, pool.n_groups, pool.n_experts, hidden)
    expected = {name: tuple(t.shape) for name, t in router.state_dict().items()}
    got = {name: tuple(np.shape(a)) for name, a in arrays.items()}
    if got != expected:
        raise EncodingMismatch(f"not a query router for this pool: tensors {got}, expected {expected}")
    router.load_state_dict({name: torch.from_numpy(np.array(a, dtype=np.float32)) for name, a in arrays.items()})
    return router.eval().requires_grad_(False)


def save_pool(directory: str | Path, pool: ExpertPool, config: PolyConfig, base_digest: str, version: int = 1,
              extra: Mapping[str, object] | None = None) -> int:
    """Write the expert pool (``extra`` joins the manifest); returns bytes on disk."""
    tensors = {k: torch.from_numpy(v) for k, v in pool_arrays(pool).items()}
    manifest = {"method": POOL_METHOD, "format_version": FORMAT_VERSION, "base_model_digest": base_digest,
                "pool_digest": pool.digest(), "version": version, "n_experts": pool.n_experts,
                "rank": pool.rank, "scale": pool.scale, "alpha": config.alpha, "routing": pool.routing,
                "targets": list(config.targets), "modules": pool.names, **(extra or {})}
    return save_encoding(directory, tensors, manifest)


def load_pool(directory: str | Path, base_digest: str) -> tuple[ExpertPool, dict]:
    """Read a pool saved by :func:`save_pool` for the same base model; returns it and its manifest."""
    tensors, manifest = load_encoding(directory, POOL_METHOD, base_digest)
    factors = {n: (tensors[f"{n}.lora_A"], tensors[f"{n}.lora_B"]) for n in manifest["modules"]}
    pool = ExpertPool(factors, manifest["scale"], manifest["routing"]).requires_grad_(False)
    if pool.digest() != manifest["pool_digest"]:
        raise EncodingMismatch(f"{directory}: expert tensors do not match the manifest's pool digest (corrupt?)")
    return pool, manifest


def save_routing(directory: str | Path, routing: RoutingTable, pool: ExpertPool, base_digest: str,
                 pool_version: int | None = None) -> int:
    """Write routing rows, bound to the pool they were trained against; returns bytes on disk.

    This and :func:`load_routing` are the only writer and reader of routing rows: a site's store
    and an offline encoding use the same format. ``pool_version`` records, for a federated site's
    rows, the registry version of the pool the round started from (``pool`` is then the site's
    own trained copy of it).
    """
    manifest = {"method": ROUTING_METHOD, "format_version": ROUTING_FORMAT_VERSION, "base_model_digest": base_digest,
                "pool_digest": pool.digest(), "pool_version": pool_version, "n_groups": pool.n_groups,
                "n_experts": pool.n_experts, "passage_ids": routing.passage_ids}
    return save_encoding(directory, {"logits": routing.logits}, manifest)


def load_routing(directory: str | Path, pool: ExpertPool, base_digest: str, same_pool: bool = True) -> RoutingTable:
    """Read routing rows for ``pool``; a mismatch is refused with :class:`EncodingMismatch`, never dropped.

    Rows must come from the same base model and have the pool's shape ``[G, K]``. With
    ``same_pool`` (offline encodings) they must also have been trained against exactly this pool;
    without it (a federated site, whose rows were trained against an earlier version of the pool
    it continues to train) the shape is enough.
    """
    tensors, manifest = load_encoding(directory, ROUTING_METHOD, base_digest)
    if manifest.get("format_version") != ROUTING_FORMAT_VERSION:
        raise EncodingMismatch(f"{directory}: routing rows in format {manifest.get('format_version')}, "
                               f"this fedprag reads format {ROUTING_FORMAT_VERSION}; re-encode them")
    logits = tensors["logits"]
    if logits.shape[1:] != (pool.n_groups, pool.n_experts):
        raise EncodingMismatch(f"{directory}: routing rows are {list(logits.shape[1:])}, "
                               f"the pool needs [{pool.n_groups}, {pool.n_experts}]; re-encode them against this pool")
    if same_pool and manifest["pool_digest"] != pool.digest():
        raise EncodingMismatch(f"{directory}: routing rows belong to pool {manifest['pool_digest']}, "
                               f"not to the loaded pool {pool.digest()}; re-encode them against this pool")
    return RoutingTable(manifest["passage_ids"], logits)


def save_router(directory: str | Path, router: QueryRouter, pool: ExpertPool, base_digest: str) -> int:
    """Write a learned query router for ``pool``; returns bytes on disk."""
    first = router.net[0]
    manifest = {"method": ROUTER_METHOD, "base_model_digest": base_digest, "pool_digest": pool.digest(),
                "embedding_dim": first.in_features, "hidden": first.out_features,
                "n_groups": router.n_groups, "n_experts": router.n_experts}
    return save_encoding(directory, dict(router.state_dict()), manifest)


def load_router(directory: str | Path, base_digest: str) -> tuple[QueryRouter, str]:
    """Read a learned query router; returns it and the digest of the pool it routes for."""
    tensors, manifest = load_encoding(directory, ROUTER_METHOD, base_digest)
    router = QueryRouter(manifest["embedding_dim"], manifest["n_groups"], manifest["n_experts"], manifest["hidden"])
    router.load_state_dict(tensors)
    return router.eval().requires_grad_(False), manifest["pool_digest"]


def export_peft(directory: str | Path, pool: ExpertPool, weights: Tensor, base_model_path: str) -> Path:
    """Write one mixture ``[G, K]`` as a PEFT LoRA adapter directory: ``Σ_k w_k B_k A_k`` is a single
    LoRA of rank ``K·r`` (:func:`fedprag.shared.lora.export.save_peft`)."""
    if weights.shape != (pool.n_groups, pool.n_experts):
        raise ValueError(f"mixture must be [{pool.n_groups}, {pool.n_experts}], got {list(weights.shape)}")
    return save_peft(directory, pool.adapter(weights[None]), base_model_path, {"method": "poly", "mixture": weights.tolist()})

