"""On-disk form of every encoding: ``tensors.safetensors`` plus ``manifest.json``, published atomically.

The manifest names the method, its format version and the base model's digest; loading refuses
an encoding made for another method or another base model rather than silently mixing them.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor

from fedprag.shared.io import atomic_dir, dir_bytes

TENSORS_FILE = "tensors.safetensors"
MANIFEST_FILE = "manifest.json"


class EncodingMismatch(ValueError):
    """An encoding on disk belongs to another method, format or base model."""


def save_encoding(directory: str | Path, tensors: dict[str, Tensor], manifest: dict) -> int:
    """Write tensors and manifest as one atomic directory; returns the bytes on disk."""
    with atomic_dir(directory) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / TENSORS_FILE))
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return dir_bytes(directory)


def load_encoding(directory: str | Path, method: str, base_digest: str) -> tuple[dict[str, Tensor], dict]:
    """Read an encoding, checking that it is ``method``'s and was made on the given base model."""
    root = Path(directory)
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{root}: no {MANIFEST_FILE}; not a fedprag encoding")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("method") != method:
        raise EncodingMismatch(f"{root}: holds a '{manifest.get('method')}' encoding, not '{method}'")
    if manifest.get("base_model_digest") != base_digest:
        raise EncodingMismatch(f"{root}: made for base model {str(manifest.get('base_model_digest'))[:12]}, "
                               f"but the loaded base model is {base_digest[:12]}")
    return load_file(str(root / TENSORS_FILE)), manifest
