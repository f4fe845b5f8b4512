"""fedprag: federated parametric RAG. Each data owner encodes its passages into LoRA weights on its
own premises; questions are answered from those weights, and raw text never leaves a site.

The packages, lowest first (imports only point down; tests/unit/test_packaging.py holds it):
``shared`` (the foundation, data, retrieval, LoRA, models, methods, the query engine, evaluation and
the configuration), then ``client`` (a data owner's site) and ``coordinator`` (the federated
rounds), then ``cluster`` (the query API, launchers and the main job), and ``cli`` on top.
"""
