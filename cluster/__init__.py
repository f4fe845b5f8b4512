"""Ray: the serving actor group, the central query API, and local cluster launchers.

Arrives with the serving work; evaluation-time answering lives in :mod:`shared.eval`.
"""
