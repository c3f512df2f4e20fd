"""Never serve stale results: a stage's Prefect cache key follows its lake lineage key.

Each case edits something a stage reads from outside the lake, in place, under the same path,
and reruns the same ``tag`` call: the stage that reads it must run again (``Completed``, a new
artifact) instead of being served from Prefect's cache; rerun once more with no edit and
every stage is ``Cached``. Before the cache key held the lake path (``tasks.StageLineage``),
these stages' key saw only their inputs (paths) and source, and all four edits were served the
old result.

| edited                              | stage that must rerun |
|-------------------------------------|-----------------------|
| a custom dataset's nodes file       | load-graph (and all after it) |
| TAPE's recorded answers (replay)    | query-llm |
| the prompt template (``.j2``)       | query-llm (online: asks again) |
| the weights at a local model path   | embed-TA |
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tag_pipeline.config import CustomDataConfig, DatasetConfig, GNNConfig, LLMConfig, LMConfig

pytestmark = pytest.mark.slow
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "llm"))


def _run(tag, task_states, **params) -> dict[str, str]:
    state = tag(**params, return_state=True)
    assert state.is_completed(), state.message
    return {n: s for n, s in task_states(state.state_details.flow_run_id).items() if not n.startswith("report")}


def _stage_dirs(lake: Path, dataset: str, stage: str) -> set[str]:
    return {p.name for p in (lake / dataset / stage).iterdir() if not p.name.startswith(".")}


def test_edited_custom_nodes_file_is_loaded_again(prefect_harness, tmp_path, task_states):
    from flows.tag import tag
    from tag_pipeline.datasets import open_graph

    data = tmp_path / "my"
    data.mkdir()
    topics = ["graphs", "proteins", "galaxies"]
    rows = ["id,text,label"] + [
        f"p{i},A study of {topics[i % 3]} number {i} and what follows from it,{topics[i % 3]}" for i in range(45)
    ]
    (data / "papers.csv").write_text("\n".join(rows) + "\n")
    (data / "edges.csv").write_text("src,dst\n" + "".join(f"p{i},p{(i + 3) % 45}\n" for i in range(45)))
    (data / "classes.txt").write_text("\n".join(topics) + "\n")
    lake = tmp_path / "lake"
    params = dict(
        dataset=DatasetConfig(name="custom", custom=CustomDataConfig(
            nodes=data / "papers.csv", edges=data / "edges.csv", classes=data / "classes.txt",
        )),
        features=["TA"], models=["mlp"], seeds=[0], lm=LMConfig(max_length=16),
        gnn=GNNConfig(epochs=3, patience=3), lake=str(lake), stop_after="train",
    )
    first = _run(tag, task_states, **params)
    assert set(first.values()) == {"Completed"}
    assert set(_run(tag, task_states, **params).values()) == {"Cached"}  # no edit: all cached
    (graph_v1,) = _stage_dirs(lake, "papers", "graph")  # named after the nodes file

    edited = rows[:1] + [r.replace(",graphs", ",galaxies") if i < 10 else r for i, r in enumerate(rows[1:])]
    (data / "papers.csv").write_text("\n".join(edited) + "\n")  # same path, 4 labels changed
    after = _run(tag, task_states, **params)
    assert after["load-graph-custom"] == "Completed"
    assert after["train-mlp-TA-s0"] == "Completed"  # trains on the new labels
    graphs = _stage_dirs(lake, "papers", "graph")
    assert len(graphs) == 2
    (graph_v2,) = graphs - {graph_v1}
    labels_v1 = open_graph(lake / "papers" / "graph" / graph_v1).labels
    labels_v2 = open_graph(lake / "papers" / "graph" / graph_v2).labels
    assert int((labels_v1 != labels_v2).sum()) == 4
    assert set(_run(tag, task_states, **params).values()) == {"Cached"}


def test_edited_replay_answers_are_imported_again(prefect_harness, shared_data, tmp_path, task_states):
    from flows.tag import tag

    answers = tmp_path / "Cora"
    shutil.copytree(shared_data / "cora" / "gpt_responses" / "Cora", answers)
    lake = tmp_path / "lake"
    params = dict(
        dataset=DatasetConfig(root=shared_data, subset=40), features=["P"], seeds=[0],
        llm=LLMConfig(responses_dir=answers), lake=str(lake), stop_after="llm",
    )
    assert set(_run(tag, task_states, **params).values()) == {"Completed"}
    assert set(_run(tag, task_states, **params).values()) == {"Cached"}
    answer = answers / "3.json"
    text = answer.read_text()
    assert "Probabilistic Methods" in text
    answer.write_text(text.replace("Probabilistic Methods", "Theory", 1))  # the top-ranked label
    after = _run(tag, task_states, **params)
    assert after["query-llm-replay"] == "Completed"
    assert len(_stage_dirs(lake, "cora", "llm")) == 2
    assert set(_run(tag, task_states, **params).values()) == {"Cached"}


def test_edited_prompt_template_asks_again(prefect_harness, shared_data, tmp_path, task_states, monkeypatch):
    from fake_openai_server import CoraAnswers, FakeOpenAIServer

    import tag_pipeline.llm.prompts as prompts
    from flows.tag import tag
    from tag_pipeline.llm.config import OnlineLLMConfig

    templates = tmp_path / "templates"
    shutil.copytree(prompts.TEMPLATE_DIR, templates)
    monkeypatch.setattr(prompts, "TEMPLATE_DIR", templates)
    prompts._environment.cache_clear()
    server = FakeOpenAIServer(CoraAnswers.load(shared_data, nodes=range(20)))
    base = server.start()
    lake = tmp_path / "lake"
    params = dict(
        dataset=DatasetConfig(root=shared_data, subset=20), features=["P"], seeds=[0], lake=str(lake),
        llm=LLMConfig(backend="online", online=OnlineLLMConfig(
            model="openai/gpt-3.5-turbo", api_base=base, api_key_env=None, rpm=6000, timeout_s=10,
            cache_dir=tmp_path / "llm-cache",
        )),
        stop_after="llm",
    )
    try:
        assert set(_run(tag, task_states, **params).values()) == {"Completed"}
        server.reset_log()
        assert set(_run(tag, task_states, **params).values()) == {"Cached"}
        assert server.log == []
        template = templates / "cora.v1.j2"
        wording = template.read_text()
        assert "The title and abstract" in wording
        template.write_text(wording.replace("The title and abstract", "The title and summary", 1))
        prompts._environment.cache_clear()
        after = _run(tag, task_states, **params)
        assert after["query-llm-online"] == "Completed"
        assert {e["node"] for e in server.log} == set(range(20))  # the new prompt was asked
        assert len(_stage_dirs(lake, "cora", "llm")) == 2
    finally:
        server.stop()
        prompts._environment.cache_clear()


def test_new_weights_at_a_model_path_embed_again(prefect_harness, shared_data, tmp_path, task_states):
    import torch
    from safetensors.torch import load_file, save_file

    from flows.tag import tag
    from tag_pipeline.features.store import read_feature
    from tag_pipeline.features.text import load_encoder, resolve_model_path

    model = tmp_path / "encoder"
    shutil.copytree(resolve_model_path("all-MiniLM-L6-v2"), model)
    lake = tmp_path / "lake"
    params = dict(
        dataset=DatasetConfig(root=shared_data, subset=30), features=["TA"], seeds=[0],
        lm=LMConfig(model=str(model), max_length=16), lake=str(lake), stop_after="features",
    )
    assert set(_run(tag, task_states, **params).values()) == {"Completed"}
    assert set(_run(tag, task_states, **params).values()) == {"Cached"}
    (old,) = _stage_dirs(lake, "cora", "features")

    weights = load_file(str(model / "model.safetensors"))
    name = "encoder.layer.5.output.dense.weight"  # the last layer; mean pooling reads its output
    weights[name] = weights[name] * 1.5  # fine-tuned elsewhere, copied over the old file
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    load_encoder.cache_clear()  # a new process would load the file anew
    after = _run(tag, task_states, **params)
    assert after["embed-TA"] == "Completed"
    (new,) = _stage_dirs(lake, "cora", "features") - {old}
    x_old = read_feature(lake / "cora" / "features" / old, 30)
    x_new = read_feature(lake / "cora" / "features" / new, 30)
    assert not torch.allclose(x_old, x_new)
    assert set(_run(tag, task_states, **params).values()) == {"Cached"}
