"""Evaluation: answer metrics, batched generation, and the harness that compares methods."""
