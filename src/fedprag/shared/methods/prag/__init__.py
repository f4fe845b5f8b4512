"""PRAG: one LoRA per passage, trained on the passage's augmentation; the top-k LoRAs are summed.

Reference: docs/design.md §2.1. ``config`` holds the published hyper-parameters, ``trainer`` encodes
passages, ``layers`` turns the top-k passages into per-request factors, ``serializer`` stores them.
"""

from fedprag.shared.methods.prag.config import PRAGConfig  # no torch: the configuration imports it

__all__ = ["PRAGConfig"]
