"""The serving half: the central query API and the serving actor group, on Ray Serve.

A question's path, from the HTTP request to the generated token:

``ingress.py`` (admit, ask) → ``router.py`` (embed; fan out to the sites: ``cluster/serving/fanout.py``) →
``replica.py`` (batch) → ``shared/query.py`` → ``shared/methods/poly/model.py`` →
``shared/lora/layers.py`` → ``shared/models/generate.py``.
"""
