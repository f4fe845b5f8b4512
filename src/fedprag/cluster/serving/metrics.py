"""The query API's Prometheus metrics (``GET /metrics``).

They live in their own module so the ingress refers to them by module, never by value: Ray Serve
pickles the ingress class before it is importable, and a metric holds a lock.
"""

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("fedprag_requests_total", "Query API requests", ["endpoint", "status"])
LATENCY = Histogram("fedprag_request_seconds", "Query API request latency", ["endpoint"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
STAGE = Histogram("fedprag_stage_seconds", "Time per query stage", ["stage"],
                  buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
BATCH = Histogram("fedprag_batch_size", "Requests sharing one generator forward pass",
                  buckets=(1, 2, 4, 8, 16, 32, 64, 128))
POOL_VERSION = Gauge("fedprag_pool_version", "Newest pool version answered with")
SITE_ERRORS = Counter("fedprag_site_errors_total", "Routing requests a site did not answer usefully", ["site"])
RETRIES = Counter("fedprag_replica_retries_total", "Requests re-sent because a replica died")
