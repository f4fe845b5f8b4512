"""One request's adapter as a PEFT LoRA adapter directory, for use outside fedprag.

``PeftModel.from_pretrained(base, directory)`` then answers as fedprag does with that adapter.
Every module's update ``ΔW = scale · B · diag(gate) · A`` becomes one LoRA whose ``lora_B`` holds
``scale · B · diag(gate)`` and whose ``lora_alpha`` equals its rank, so PEFT's own scaling is 1.
"""

from __future__ import annotations

import json
from pathlib import Path

from peft import LoraConfig
from safetensors.torch import save_file

from fedprag.shared.io import atomic_dir
from fedprag.shared.lora.layers import Adapter

NOTE_FILE = "fedprag.json"


def save_peft(directory: str | Path, adapter: Adapter, base_model_path: str, note: dict[str, object]) -> Path:
    """Write ``adapter`` (one row: factors of batch size 1) as a PEFT adapter for the base model
    at ``base_model_path``, with ``note`` (where it came from) in ``fedprag.json``."""
    if any(delta.A.shape[0] != 1 or delta.B.shape[0] != 1 for delta in adapter.values()):
        raise ValueError("save_peft: the adapter must hold one row (batch size 1)")
    ranks = {delta.A.shape[1] for delta in adapter.values()}
    if len(ranks) != 1:
        raise ValueError(f"save_peft: every module's update must have one rank, got {sorted(ranks)}")
    (rank,) = ranks
    state = {}
    for name, delta in adapter.items():
        b = delta.B[0] * delta.scale
        if delta.gate is not None:
            b = b * delta.gate[0]
        state[f"base_model.model.{name}.lora_A.weight"] = delta.A[0].detach().contiguous()
        state[f"base_model.model.{name}.lora_B.weight"] = b.detach().contiguous()
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0,
                        target_modules=sorted({name.rsplit(".", 1)[-1] for name in adapter}),
                        base_model_name_or_path=str(base_model_path), task_type="CAUSAL_LM")
    with atomic_dir(directory) as tmp:
        config.save_pretrained(str(tmp))
        save_file(state, str(tmp / "adapter_model.safetensors"))
        (tmp / NOTE_FILE).write_text(json.dumps(note, indent=2))
    return Path(directory)
