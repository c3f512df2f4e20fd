"""The local backend against the real llama.cpp server (llama-cpp-python) and SmolLM2-135M-Instruct.

No fake: every answer here comes from the packaged model through ``python -m llama_cpp.server``
started by :func:`tag_pipeline.llm.local.llama_servers`. ``scripts/test.sh`` installs the server
(``scripts/setup_llama.sh``) and sets ``TAG_REQUIRE_LOCAL_LLM=1``, so in CI a missing build fails
here instead of skipping. The nodes are Cora's shortest texts, to keep each answer near a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tag_pipeline.config import DatasetConfig
from tag_pipeline.llm.config import LocalLLMConfig

if importlib.util.find_spec("llama_cpp") is None:
    if os.environ.get("TAG_REQUIRE_LOCAL_LLM") == "1":
        raise RuntimeError("TAG_REQUIRE_LOCAL_LLM=1 but llama-cpp-python is not installed: run scripts/setup_llama.sh")
    pytest.skip("llama-cpp-python is not installed (scripts/setup_llama.sh)", allow_module_level=True)

from tag_pipeline.llm.local import (  # noqa: E402
    LocalServerError,
    answer_nodes_local,
    llama_servers,
    model_file,
    require_server,
)


@pytest.fixture(scope="module")
def cora(shared_data):
    """Cora's class names and its 6 shortest node texts, as ``[(node_id, text), ...]``."""
    from tag_pipeline.datasets import load_dataset

    graph = load_dataset(DatasetConfig(root=shared_data), [0])
    order = sorted(range(graph.num_nodes), key=lambda i: len(graph.text[i]))[:6]
    return graph.class_names, [(i, graph.text[i]) for i in sorted(order)], graph.labels


def _cfg(tmp: Path, **kw) -> LocalLLMConfig:
    return LocalLLMConfig(cache_dir=tmp / "cache", **({"servers": 2, "threads": 1} | kw))


@pytest.fixture(scope="module")
def first_run(cora, tmp_path_factory):
    names, nodes, _ = cora
    tmp = tmp_path_factory.mktemp("local")
    df, stats = answer_nodes_local(nodes[:4], "cora", names, _cfg(tmp), progress=False)
    return tmp, df, stats


def test_every_answer_parses_into_the_schema_with_classes_only(cora, first_run):
    names, nodes, _ = cora
    _, df, stats = first_run
    assert df["node_id"].to_list() == [i for i, _ in nodes[:4]]
    assert df["status"].to_list() == ["ok"] * 4, df["error"].to_list()
    for labels, explanation in zip(df["ranked_labels"].to_list(), df["explanation"].to_list()):
        assert 1 <= len(labels) <= 5 and len(set(labels)) == len(labels)
        assert all(0 <= c < len(names) for c in labels)
        assert 0 < len(explanation) <= 200 and '"' not in explanation
    assert set(df["source"].to_list()) == {"local:llama.cpp"} and set(df["model"].to_list()) == {"smollm2"}
    server = stats["server"]
    digest = hashlib.sha256(Path(server["model_file"]).read_bytes()).hexdigest()
    assert server["model_sha256"] == digest and server["version"] == "0.3.36"
    assert server["servers"] == 2 and server["threads"] == 1
    assert stats["asked"] == 4 and stats["calls"] >= 4 and stats["answers_per_s"] > 0
    assert stats["completion_tokens"] > 0 and stats["prompt_tokens"] > 0


def test_a_rerun_is_served_from_the_cache_without_a_server(cora, first_run):
    names, nodes, _ = cora
    tmp, df, _ = first_run
    again, stats = answer_nodes_local(nodes[:4], "cora", names, _cfg(tmp), progress=False)
    assert stats["calls"] == 0 and stats["asked"] == 0 and stats["server"].get("started") is False
    assert again.drop("node_id").to_dicts() == df.drop("node_id").to_dicts()


def test_threads_and_servers_do_not_change_the_answers(cora, first_run, tmp_path):
    """Why threads and server count are out of the keys: 1 server of 2 threads gives the same
    answers, byte for byte, as 2 servers of 1 thread (greedy decoding, one prompt at a time)."""
    names, nodes, _ = cora
    _, df, _ = first_run
    other, _ = answer_nodes_local(nodes[:2], "cora", names, _cfg(tmp_path, servers=1, threads=2), progress=False)
    assert other["raw_text"].to_list() == df["raw_text"].to_list()[:2]


_ASK = """
import sys
from pathlib import Path
from tag_pipeline.llm.config import LocalLLMConfig
from tag_pipeline.llm.local import answer_nodes_local
from tag_pipeline.datasets import load_dataset
from tag_pipeline.config import DatasetConfig
ids = [int(x) for x in sys.argv[3].split(",")]
g = load_dataset(DatasetConfig(root=Path(sys.argv[1])), [0])
cfg = LocalLLMConfig(cache_dir=Path(sys.argv[2]), servers=1, threads=1)
answer_nodes_local([(i, g.text[i]) for i in ids], "cora", g.class_names, cfg, progress=False)
"""


def _alive(pid: str) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return False


def _cached(cache_dir: Path) -> int:
    from tag_pipeline.llm.cache import open_cache

    if not cache_dir.exists():
        return 0
    with open_cache(cache_dir) as cache:
        return len(cache)


def test_a_killed_run_resumes_asking_only_the_missing_nodes(cora, shared_data, tmp_path):
    """SIGKILL the asking process after its second answer: the answers so far stay cached, its
    server dies with it (PR_SET_PDEATHSIG), and the rerun asks only for the rest."""
    names, nodes, _ = cora
    cache = tmp_path / "cache"
    ids = ",".join(str(i) for i, _ in nodes)
    child = subprocess.Popen([sys.executable, "-c", _ASK, str(shared_data), str(cache), ids])
    deadline = time.monotonic() + 240
    while _cached(cache) < 2 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert child.poll() is None, "the run ended before it could be killed"
    servers = subprocess.run(["pgrep", "-P", str(child.pid)], capture_output=True, text=True).stdout.split()
    child.send_signal(signal.SIGKILL)
    child.wait()
    before = _cached(cache)
    assert 2 <= before < len(nodes)
    assert servers, "the asking process had no server child"
    gone = time.monotonic() + 60  # SIGTERM: uvicorn finishes the answer in flight, then exits
    while any(_alive(pid) for pid in servers) and time.monotonic() < gone:
        time.sleep(0.5)
    assert not any(_alive(pid) for pid in servers), "the server outlived the run that started it"
    df, stats = answer_nodes_local(nodes, "cora", names, LocalLLMConfig(cache_dir=cache, servers=1, threads=1), progress=False)
    assert stats["asked"] == len(nodes) - before
    assert stats["cache_hits"] == before
    assert df.height == len(nodes) and (df["status"] == "ok").all()


def test_the_rpm_limit_holds_against_a_running_server(cora, tmp_path):
    """A server already running (``api_base``): 3 requests at 12 requests/min take at least
    (3 - 1) x 5 s, minus the one-request burst: >= 5 s between the 1st and 3rd send."""
    names, nodes, _ = cora
    path = model_file("smollm2")
    with llama_servers(LocalLLMConfig(servers=1, threads=1), path) as (base,):
        cfg = LocalLLMConfig(cache_dir=tmp_path / "cache", api_base=base, rpm=12, max_concurrency=3)
        df, stats = answer_nodes_local(nodes[:3], "cora", names, cfg, progress=False)
    assert (df["status"] == "ok").all()
    assert stats["calls"] == 3 and stats["server"]["api_base"] == base
    assert stats["limiter_wait_s"] >= 2 * 5.0 - 0.5  # the 2nd and 3rd requests waited their turn


def test_a_missing_server_build_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(LocalServerError, match=r"missing: llama_cpp\); install it with: bash scripts/setup_llama.sh"):
        require_server()


def test_a_missing_model_names_what_to_install(tmp_path):
    from tag_pipeline.models.decoder import DecoderNotFoundError

    with pytest.raises(DecoderNotFoundError, match="no such file"):
        model_file(str(tmp_path / "nothing.gguf"))


def test_a_server_that_cannot_load_its_model_fails_with_its_log(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file at all" * 100)
    with pytest.raises(LocalServerError, match=r"exited with code \d+ before answering.*log"):
        with llama_servers(LocalLLMConfig(servers=1, threads=1, startup_timeout_s=60), broken):
            pass


def test_tag_runs_a_users_own_tag_end_to_end_with_the_local_llm(prefect_harness, tmp_path):
    """``tag --dataset.name custom ... --llm.backend local``: E and P from SmolLM2 on a small TAG
    the test writes itself, through the installed console script and the real flow."""
    from prefect.settings import PREFECT_API_URL

    from tag_pipeline.lake import read_artifact

    data = tmp_path / "my"
    data.mkdir()
    topics = ["biology", "astronomy", "music"]
    words = {"biology": "cells and proteins", "astronomy": "stars and galaxies", "music": "melody and rhythm"}
    rows = ["id,text,label"] + [f"n{i},A short note on {words[topics[i % 3]]} (item {i}),{topics[i % 3]}" for i in range(15)]
    (data / "nodes.csv").write_text("\n".join(rows) + "\n")
    (data / "edges.csv").write_text("src,dst\n" + "".join(f"n{i},n{(i + 3) % 15}\n" for i in range(15)))
    (data / "classes.txt").write_text("\n".join(topics) + "\n")
    lake = tmp_path / "lake"
    env = {k: v for k, v in os.environ.items() if k != "TAG_DEBUG"} | {
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "tag"), "--dataset.name", "custom",
         "--dataset.custom.nodes", str(data / "nodes.csv"), "--dataset.custom.edges", str(data / "edges.csv"),
         "--dataset.custom.classes", str(data / "classes.txt"), "--llm.backend", "local",
         "--llm.local.cache_dir", str(tmp_path / "cache"), "--llm.local.servers", "2", "--llm.local.threads", "1",
         "--features", '["TA","E","P"]', "--models", '["gcn"]', "--seeds", "[0]", "--lake", str(lake)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (answers,) = [p for p in (lake / "nodes" / "llm").iterdir() if p.name.startswith("local-")]
    manifest = read_artifact(answers, verify=False).manifest
    assert manifest["rows"] == 15 and manifest["stats"]["n_failed"] == 0
    assert manifest["stats"]["backend"]["server"]["version"] == "0.3.36"
    assert len(manifest["stats"]["backend"]["server"]["model_sha256"]) == 64
    features = {p.name.split("-")[0] for p in (lake / "nodes" / "features").iterdir() if not p.name.startswith(".")}
    assert {"TA", "E", "P"} <= features, features


def test_shards_ask_the_local_server_and_the_stage_commits_from_the_cache(shared_data, tmp_path):
    """The fan-out's unit of work (a shard task, as each Dask worker runs it) with the local
    backend: each shard starts its own server (the plan shares the cores among the workers),
    fills the answer cache, and the stage then commits the answer set without a request."""
    from tag_pipeline.config import LLMConfig
    from tag_pipeline.datasets import materialize_graph, open_graph
    from tag_pipeline.lake import read_artifact
    from tag_pipeline.llm import stage

    dataset = DatasetConfig(root=shared_data, subset=10)
    graph = materialize_graph(dataset, [0], tmp_path / "lake")
    llm = LLMConfig(backend="local", local=LocalLLMConfig(cache_dir=tmp_path / "cache", threads=1))
    plan = stage.plan_llm_fan_out(graph, llm, tmp_path / "lake", shard_size=5, workers=2)
    assert plan.shards == [0, 1] and plan.texts == 10
    assert plan.llm.local.servers == 1  # 2 cores, 2 workers: one 1-thread server each
    g = open_graph(graph)
    assert stage._live_key(graph, g, plan.llm) == stage._live_key(graph, g, llm)  # the split keeps the keys
    done = [stage.ask_llm_shard(graph, plan.llm, shard, 5) for shard in plan.shards]
    assert [d["texts"] for d in done] == [5, 5] and all(d["requests"] >= 5 for d in done)
    assert stage.plan_llm_fan_out(graph, llm, tmp_path / "lake", 5, 2).reason == "every answer is in the cache"
    path = stage.materialize_responses(graph, dataset, llm, tmp_path / "lake")
    backend = read_artifact(path, verify=False).manifest["stats"]["backend"]
    assert backend["calls"] == 0 and backend["cache_hits"] == 10 and backend["server"]["started"] is False
