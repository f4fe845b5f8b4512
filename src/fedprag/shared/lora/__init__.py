"""LoRA layers that apply a different low-rank update to every request of a batch."""
