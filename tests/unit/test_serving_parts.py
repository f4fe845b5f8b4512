"""The serving application's parts that need no Ray: what the ingress asks a replica for, and how
the replica group is deployed."""

from fedprag.cluster.serving.ingress import Ingress, IngressSettings
from fedprag.cluster.serving.messages import RouteRequest
from fedprag.cluster.serving.replica import Batching, replica_deployment
from fedprag.shared.config import ServeSection


def test_the_ingress_never_asks_for_a_version_older_than_one_it_returned():
    user_class = Ingress.func_or_class.__mro__[1]  # the class as written, under Ray Serve's ASGI wrapper
    ingress = user_class(None, IngressSettings(("key",), 10.0, 10, {}, "fanout", 3, 12, "/nonexistent"))
    ingress.newest = 4
    assert ingress._route_request("Who?", None, "fanout", "fedprag", "poly") == RouteRequest("Who?", 3, "fanout", None, 4)
    # a pinned version is what the client asked for, whatever was returned before
    assert ingress._route_request("Who?", 2, "router", "fedprag@2", "poly") == RouteRequest("Who?", 2, "router", 2, 0)
    assert ingress._route_request("Who?", None, "fanout", "fedprag", "closed_book") is None


def test_the_replica_group_autoscales_only_within_bounds_it_was_given():
    fixed = replica_deployment(ServeSection(replicas=2))
    assert fixed.num_replicas == 2 and fixed._deployment_config.autoscaling_config is None
    scaled = replica_deployment(ServeSection(replicas=1, min_replicas=1, max_replicas=3, target_ongoing_requests=4,
                                               upscale_delay_s=5.0, look_back_period_s=6.0)).\
        _deployment_config.autoscaling_config
    assert (scaled.min_replicas, scaled.max_replicas, scaled.target_ongoing_requests, scaled.upscale_delay_s,
            scaled.look_back_period_s) == (1, 3, 4, 5.0, 6.0)
    assert Batching.of(ServeSection(max_batch_size=8, batch_wait_ms=2.0, busy_batch_wait_ms=20.0)) == Batching(8, 0.002, 0.02)
