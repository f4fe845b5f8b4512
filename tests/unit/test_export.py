"""`fedprag export`: a site's passage, under the released pool, as a PEFT adapter that answers as fedprag does."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from fedprag.cli import main
from fedprag.client.store import SiteStore
from fedprag.shared.data.benchmark import BenchmarkSpec, make_benchmark
from fedprag.shared.lora.layers import attach_lora
from fedprag.shared.methods.base import Routing
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.layers import ExpertPool, RoutingTable
from fedprag.shared.methods.poly.model import PolyModel
from fedprag.shared.models.generate import generate_answers
from fedprag.shared.models.loading import load_causal_lm
from fedprag.shared.query import QueryEngine

QUESTIONS = ["Where was Kara Lovel born?", "Who trained Zed Vin?"]


@pytest.fixture()
def site(random_llama_path, tmp_path):
    """A site store holding a released pool (random experts) and a routing row for two of its three passages."""
    base = load_causal_lm(str(random_llama_path))
    passages = make_benchmark(BenchmarkSpec(people=3, sites=1)).passages
    store = SiteStore(tmp_path / "site", site_id="site-a")
    store.add_passages([(p.passage_id, p.text) for p in passages])
    config = PolyConfig(n_experts=6, rank=2, top_m=3)
    pool = ExpertPool.initialised(attach_lora(base.model), 6, 2, scale=4.0, routing="shared", seed=0)
    with torch.no_grad():
        for b in pool.B.values():
            b.copy_(torch.randn(b.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    store.save_pool(pool.requires_grad_(False), config, 3, base.digest)
    rows = RoutingTable([p.passage_id for p in passages[:2]], torch.randn(2, pool.n_groups, 6) * 3)
    store.save_routing(rows, pool, 3, base.digest)
    return {"store": store, "base": base, "pool": pool, "config": config, "rows": rows, "pending": passages[2]}


def test_an_exported_passage_answers_through_peft_as_through_fedprag(site, random_llama_path, tmp_path):
    passage = site["rows"].passage_ids[1]
    out = tmp_path / "adapter"
    assert main(["--quiet", "export", str(site["store"].root), passage, "--out", str(out),
                 "--model", str(random_llama_path)]) == 0
    assert json.loads((out / "fedprag.json").read_text())["method"] == "poly"
    base = site["base"]
    model = PolyModel(site["pool"], site["config"], site["rows"])
    routing = Routing(passage_ids=(passage,), scores=(1.0,))
    ours = QueryEngine(base).answer(model, QUESTIONS, [routing] * len(QUESTIONS), 6)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(random_llama_path), out).eval()
    theirs = generate_answers(peft, base.tokenizer, model.prompts(QUESTIONS, [routing] * len(QUESTIONS)), 6)
    bare = generate_answers(AutoModelForCausalLM.from_pretrained(random_llama_path).eval(), base.tokenizer,
                            model.prompts(QUESTIONS, [routing] * len(QUESTIONS)), 6)
    assert ours == theirs and ours != bare  # the adapter is the passage's encoding, not nothing


@pytest.mark.parametrize("argv, message", [
    (["missing-id"], "'missing-id': not in this site's store"),
    (["PENDING"], "stored but not encoded yet"),
    (["PENDING", "--mode", "distilled"], "a PEFT adapter cannot carry"),
])
def test_what_cannot_be_exported_is_refused_naming_why(site, random_llama_path, tmp_path, capsys, argv, message):
    argv = [site["pending"].passage_id if a == "PENDING" else a for a in argv]
    code = main(["--quiet", "export", str(site["store"].root), *argv, "--out", str(tmp_path / "out"),
                 "--model", str(random_llama_path)])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
