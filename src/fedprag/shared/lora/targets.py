"""The modules LoRA attaches to by default: a Llama-style FFN's three projections (no torch here,
so the methods' configurations load without it)."""

FFN_TARGETS: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
