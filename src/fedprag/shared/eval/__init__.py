"""Evaluation: the harness that compares methods on one dataset through the query engine, and its reports."""
