"""Poly-PRAG: a small shared pool of latent LoRA experts plus a private routing row per passage.

Reference: docs/design.md §2.2. ``config`` holds the hyper-parameters, ``layers`` the pool, the routing
table and the routed per-request adapter, ``trainer`` the offline, incremental and query-router
training, ``serializer`` the pool, routing and PEFT-export files.
"""

from fedprag.shared.methods.poly.config import PolyConfig  # no torch: the configuration imports it

__all__ = ["PolyConfig"]
