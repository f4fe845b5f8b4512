"""The wire schema admits tensors, ids, counts and scores, and refuses everything else."""

import numpy as np
import pytest
from flwr.app import ConfigRecord

from fedprag.shared.proto import routing_pb2
from fedprag.shared.wire import EMBEDDINGS, RoundTask, RoutingRequest, SiteUpdate, WireError


def _update(**changes):
    fields = {
        "site": "site-3", "round": 2, "version": 7, "passages": 40, "sequences": 320, "loss": 1.25,
        "experts": {"model.layers.0.mlp.up_proj.lora_A": np.ones((4, 1, 8), dtype=np.float32)},
        "mass": {"routing_mass": np.full((1, 4), 10.0, dtype=np.float32)},
    }
    return SiteUpdate(**{**fields, **changes})


def test_messages_round_trip_through_flower_records():
    update = _update()
    back = SiteUpdate.from_record(update.to_record())
    assert (back.site, back.round, back.passages, back.loss) == ("site-3", 2, 40, 1.25)
    np.testing.assert_array_equal(back.experts["model.layers.0.mlp.up_proj.lora_A"], update.experts["model.layers.0.mlp.up_proj.lora_A"])
    task = RoundTask(round=1, version=0, experts=update.experts, settings={"lr": 0.003})
    assert RoundTask.from_record(task.to_record()).settings == {"lr": 0.003}


@pytest.mark.parametrize("changes, message", [
    ({"site": "Kara Lovel was born in 1873."}, "not an opaque id"),
    ({"passages": "forty"}, "not a count"),
    ({"passages": -1}, "not a count"),
    ({"loss": float("nan")}, "not a score"),
    ({"experts": {"a": np.array([1, 2])}}, "not a floating-point tensor"),
    ({"experts": {"a": np.array(["text"])}}, "not a floating-point tensor"),
    ({"experts": {"a": np.array([np.nan], dtype=np.float32)}}, "NaN"),
    ({"experts": {"a passage key": np.ones(2, dtype=np.float32)}}, "not an opaque id"),
])
def test_anything_but_tensors_ids_counts_and_scores_is_refused(changes, message):
    with pytest.raises(WireError, match=message):
        _update(**changes)


def test_decoding_refuses_records_and_fields_outside_the_schema():
    record = _update().to_record()
    record["leak"] = ConfigRecord({"text": "Kara Lovel was born in 1873."})
    with pytest.raises(WireError, match="do not match the schema"):
        SiteUpdate.from_record(record)
    record = _update().to_record()
    record["ids"]["note"] = "hello"
    with pytest.raises(WireError, match="not in the schema"):
        SiteUpdate.from_record(record)
    with pytest.raises(WireError, match="round_task"):
        RoundTask.from_record(_update().to_record())


def test_messages_round_trip_through_grpc_wire_records():
    update = _update()
    back = SiteUpdate.from_proto(routing_pb2.WireRecord.FromString(update.to_proto().SerializeToString()))
    assert (back.site, back.round, back.passages, back.loss) == ("site-3", 2, 40, 1.25)
    np.testing.assert_array_equal(back.mass["routing_mass"], update.mass["routing_mass"])
    request = RoutingRequest(k=3, score_temperature=0.05, queries={EMBEDDINGS: np.ones((2, 4), dtype=np.float32)})
    assert RoutingRequest.from_proto(request.to_proto()).queries[EMBEDDINGS].shape == (2, 4)


def test_grpc_decoding_refuses_fields_outside_the_schema_and_torn_tensors():
    record = _update().to_proto()
    record.ids["note"] = "hello"
    with pytest.raises(WireError, match="not in the schema"):
        SiteUpdate.from_proto(record)
    record = _update().to_proto()
    record.tensors["experts"].items["model.layers.0.mlp.up_proj.lora_A"].data = b"\x00" * 7
    with pytest.raises(WireError, match="do not hold a float32 tensor"):
        SiteUpdate.from_proto(record)
    record = _update().to_proto()
    record.score_maps["leak"].items["x1"] = 1.0
    with pytest.raises(WireError, match="not in the schema"):
        SiteUpdate.from_proto(record)
    record = _update().to_proto()
    del record.counts["round"]
    with pytest.raises(WireError, match="round: missing"):
        SiteUpdate.from_proto(record)
    with pytest.raises(WireError, match="not a routing_request"):
        RoutingRequest.from_proto(_update().to_proto())
