"""The wire schema admits tensors, ids, counts and scores, and refuses everything else."""

import numpy as np
import pytest
from flwr.app import ConfigRecord

from fedprag.shared.wire import RoundTask, SiteUpdate, WireError


def _update(**changes):
    fields = {
        "site": "site-3", "round": 2, "pool_version": 7, "passages": 40, "sequences": 320, "loss": 1.25,
        "experts": {"model.layers.0.mlp.up_proj.lora_A": np.ones((4, 1, 8), dtype=np.float32)},
        "mass": {"routing_mass": np.full((1, 4), 10.0, dtype=np.float32)},
    }
    return SiteUpdate(**{**fields, **changes})


def test_messages_round_trip_through_flower_records():
    update = _update()
    back = SiteUpdate.from_record(update.to_record())
    assert (back.site, back.round, back.passages, back.loss) == ("site-3", 2, 40, 1.25)
    np.testing.assert_array_equal(back.experts["model.layers.0.mlp.up_proj.lora_A"], update.experts["model.layers.0.mlp.up_proj.lora_A"])
    task = RoundTask(round=1, pool_version=0, experts=update.experts, settings={"lr": 0.003})
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
