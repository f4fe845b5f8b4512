"""The images' smoke tests, run by build.sh inside a chroot of each image's root filesystem, with
the image's own interpreter (``podman run`` cannot set rlimits on this build machine).

    smoke.py site WORK      ingest 3 passages, serve them, answer one routing request over TLS
    smoke.py cluster WORK   the main job on the built-in model, one round: every question answered over HTTP

Prints one JSON line of what it saw; exits non-zero if the image failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def site(work: Path) -> dict:
    import grpc
    import numpy as np

    from fedprag.client.admin import daemon_status
    from fedprag.client.store import SiteStore
    from fedprag.cluster.certs import write_routing_cert, write_tls
    from fedprag.shared.lora.layers import attach_lora
    from fedprag.shared.methods.poly.config import PolyConfig
    from fedprag.shared.methods.poly.layers import ExpertPool, placed
    from fedprag.shared.models.loading import load_causal_lm
    from fedprag.shared.processes import free_port
    from fedprag.shared.proto import routing_pb2_grpc
    from fedprag.shared.retrieval.encoder import EMBEDDING_DIM
    from fedprag.shared.wire import EMBEDDINGS, RoutingReply, RoutingRequest

    data, certs = work / "site", work / "certs"
    docs = work / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"p{i}", "text": f"Person {i} was born in Town{i} in {1900 + i}."}) + "\n"
                            for i in range(3)))
    subprocess.run(["fedprag", "--quiet", "client", "ingest", str(data), str(docs)], check=True)
    base, config = load_causal_lm("tiny"), PolyConfig()  # a released (untrained) pool, as after a federation
    pool = ExpertPool.initialised(placed(attach_lora(base.model), config.layers, config.targets), config.n_experts,
                                  config.rank, config.scale, config.routing, config.seed)
    SiteStore(data).save_pool(pool, config, 1, base.digest)
    tls = write_tls(certs)
    routing = write_routing_cert(certs, "site")
    (certs / "tokens").write_text("smoke-token\n")
    port = free_port()
    (work / "site.toml").write_text(
        f'[site]\ndata_dir = "{data}"\nrouting_address = "127.0.0.1:{port}"\nrouting_cert = "{routing.server_cert}"\n'
        f'routing_key = "{routing.server_key}"\ntokens_file = "{certs / "tokens"}"\n')
    daemon = subprocess.Popen(["fedprag", "--quiet", "client", "run", "--config", str(work / "site.toml")])
    try:
        deadline = time.monotonic() + 300
        while True:
            assert daemon.poll() is None and time.monotonic() < deadline, "the daemon did not serve"
            try:
                status = daemon_status(data)
            except grpc.RpcError:  # not listening yet
                status = None
            if status is not None and not status.pending:
                break
            time.sleep(1.0)
        query = np.ones((1, EMBEDDING_DIM), dtype=np.float32) / EMBEDDING_DIM ** 0.5
        request = RoutingRequest(k=2, score_temperature=0.05, queries={EMBEDDINGS: query}).to_proto()
        with grpc.secure_channel(f"127.0.0.1:{port}",
                                 grpc.ssl_channel_credentials(tls.ca_cert.read_bytes())) as channel:
            replies = routing_pb2_grpc.SiteRoutingStub(channel).Route(
                request, timeout=30, metadata=(("authorization", "Bearer smoke-token"),)).replies
        [reply] = [RoutingReply.from_proto(r) for r in replies]
        return {"image": "site", "passages": status.passages, "routing_reply_scores": len(reply.scores)}
    finally:
        daemon.terminate()
        daemon.wait(60)


def cluster(work: Path) -> dict:
    result = subprocess.run(["fedprag", "--quiet", "demo", "--rounds", "1", "--set", f"federation.work_dir={work}"],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    [served] = [r for r in json.loads((work / "demo.json").read_text())["results"] if r["method"] == "poly_federated"]
    single = served["scores"]["single"]  # every one asked over HTTP through the query API on Ray Serve
    assert single["n"] > 0, single
    # after one round (of the demo's 10) the pool is barely trained: the answers, not their quality, are the test
    return {"image": "cluster", "rounds": 1, "questions_over_http": single["n"],
            "single_hop_exact_match": round(single["em"], 3)}


if __name__ == "__main__":
    which, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    seen = {"site": site, "cluster": cluster}[which](work)
    seen["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(seen))
