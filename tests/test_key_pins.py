"""Lake keys of the default stages are a promise: a refactor must not move them.

The artifact names below were computed at commit 9e59cc9 (before the stage mechanism of
``lake.Stage``) for the first 150 Cora nodes, seed 0, the replayed GPT-3.5 answers, MiniLM
in float32 and a 3-epoch GCN. Every stage here is built for real; if one of these names
changes, a user's lake stops being found after an upgrade, so a change must be deliberate: a
version bump or a numerics change, said in the README (docs/lake.md) and re-pinned here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tag_pipeline.config import DatasetConfig, GNNConfig, LLMConfig, LMConfig
from tag_pipeline.datasets import materialize_graph
from tag_pipeline.ensemble import materialize_ensemble
from tag_pipeline.features.stage import materialize_prediction_feature, materialize_text_feature
from tag_pipeline.llm.stage import materialize_responses
from tag_pipeline.train import materialize_training_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PINNED = {
    "graph": "cora/graph/37816b7cdd552391",
    "llm": "cora/llm/replay-adb365c3e2e5d5ae",
    "P": "cora/features/P-40c2d1624fcae6de",
    "TA": "cora/features/TA-e0c3c518c4b743a4",
    "E": "cora/features/E-422d54fb257c3d9f",
    "train TA": "cora/train/gcn-TA-s0-f665ea4e51b2f211",
    "train E": "cora/train/gcn-E-s0-4f19ea1d335c3eb0",
    "train P": "cora/train/gcn-P-s0-ff07a3849f63c6af",
    "ensemble": "cora/ensemble/gcn-TAPE-s0-158cf467e9532afe",
}


@pytest.fixture(scope="module")
def built(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    cfg = DatasetConfig(root=shared_data, subset=150)
    g = materialize_graph(cfg, [0], root)
    r = materialize_responses(g, cfg, LLMConfig(), root)
    p = materialize_prediction_feature(g, r, 5, root)
    lm = LMConfig(runtime="torch", precision="fp32")  # pinned path: the same on every CPU
    ta = materialize_text_feature(g, None, "TA", lm, root, progress=False)
    e = materialize_text_feature(g, r, "E", lm, root, progress=False)
    gnn = GNNConfig(epochs=3)
    runs = {n: materialize_training_run(g, f, n, "gcn", 0, gnn, root, progress=False) for n, f in (("TA", ta), ("E", e), ("P", p))}
    ens = materialize_ensemble(g, list(runs.values()), "logits", root)
    paths = {"graph": g, "llm": r, "P": p, "TA": ta, "E": e, **{f"train {n}": q["path"] for n, q in runs.items()},
             "ensemble": ens["path"]}
    return {name: Path(v).relative_to(root).as_posix() for name, v in paths.items()}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_default_stage_keys_are_unchanged(built, name):
    assert built[name] == PINNED[name]
