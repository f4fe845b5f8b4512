"""The data-owner daemon: site store, ingestion, local training, Flower ClientApp, routing service.

Arrives with the federation issue; the encodings it trains live in :mod:`shared.methods`.
"""
