"""The Flower ServerApp, aggregation strategies and the versioned expert-pool registry.

Arrives with the federation issue.
"""
