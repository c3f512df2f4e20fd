"""No stale result for the method stages: what changes a result changes the lake path, nothing else does.

For GALLON, GLEM, LEADING and Dr.E, one run's lake path is recomputed after each kind of
change a user or a developer makes: new encoder or decoder weights at the same model path, a
new version of the stage's computation (the version gate of tests/test_stage_versions.py
forces the bump), another numerics path, and an execution-only setting. The first three must
move the path (the stage recomputes), the last must not (a lake hit). Prediction refuses other
weights instead of recomputing (tests/test_predict.py); its version is in its key the same way.
Digests of the graph, its split and the weights are fixed strings here, so no data is needed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import tag_pipeline.methods.dre.stage as dre
import tag_pipeline.methods.gallon.stage as gallon
import tag_pipeline.methods.glem.stage as glem
import tag_pipeline.methods.leading.stage as leading

GRAPH = Path("/lake/cora/graph/abc")
LAKE = "/lake"


@pytest.fixture
def weights(monkeypatch):
    """Stand-in digests; ``weights["digest"]`` is what the encoder's and decoder's files hash to."""
    import tag_pipeline.datasets as datasets
    import tag_pipeline.features.text as text
    import tag_pipeline.models.decoder as decoder

    state = {"digest": "w1"}
    monkeypatch.setattr(datasets, "graph_content_key", lambda p: "GRAPH")
    monkeypatch.setattr(datasets, "split_key", lambda p, s: f"SPLIT{s}")
    monkeypatch.setattr(text, "model_digest", lambda m: f"{state['digest']}:{m}")
    monkeypatch.setattr(decoder, "decoder_digest", lambda d: f"{state['digest']}:{d}")
    return state


def _paths(cfgs: dict) -> dict[str, Path | str]:
    """One run's lake path (GALLON: its key; the feature path names carry the encoder's weights)."""
    return {
        "glem": glem.glem_path(GRAPH, 0, cfgs["glem"], LAKE),
        "leading": leading.leading_path(GRAPH, None, "TA", 0, cfgs["leading"], LAKE),
        "dre": dre.dre_path(GRAPH, "/lake/cora/features/TA-f00", 0, cfgs["dre"], LAKE),
    }


DEFAULTS = {"glem": glem.GlemMethod(), "leading": leading.LeadingMethod(), "dre": dre.DreMethod()}


@pytest.mark.parametrize("method", sorted(DEFAULTS))
def test_new_weights_at_the_same_path_recompute(weights, method):
    before = _paths(DEFAULTS)[method]
    weights["digest"] = "w2"
    assert _paths(DEFAULTS)[method] != before


@pytest.mark.parametrize("method, stage_attr", [("glem", "GLEM_STAGE"), ("leading", "LEADING_STAGE"), ("dre", "DRE_STAGE")])
def test_a_new_stage_version_recomputes(weights, monkeypatch, method, stage_attr):
    module = {"glem": glem, "leading": leading, "dre": dre}[method]
    before = _paths(DEFAULTS)[method]
    stage = getattr(module, stage_attr)
    monkeypatch.setattr(module, stage_attr, dataclasses.replace(stage, version=stage.version + 1))
    assert _paths(DEFAULTS)[method] != before


@pytest.mark.parametrize("method, numerics, execution", [
    ("dre", {"dtype": "bfloat16"}, {"threads": 3}),
    ("glem", None, {"threads": 3}),
    ("leading", None, {"threads": 3}),
])
def test_numerics_recompute_and_execution_settings_hit(weights, method, numerics, execution):
    before = _paths(DEFAULTS)[method]
    assert _paths(DEFAULTS | {method: DEFAULTS[method].model_copy(update=execution)})[method] == before
    if numerics is not None:  # GLEM and LEADING run the CPU in float32 only: no other numerics path exists
        assert _paths(DEFAULTS | {method: DEFAULTS[method].model_copy(update=numerics)})[method] != before


def test_gallon_follows_its_teachers_features_and_version(monkeypatch):
    cfg = gallon.GallonMethod()
    features = {"TA": "/lake/cora/features/TA-aaa", "E": "/lake/cora/features/E-bbb"}
    key = gallon.gallon_key("GRAPH-SPLIT0", "/lake/cora/ensemble/gcn-TAPE-s0-ccc", features, cfg, 0)
    # new encoder weights give the TA feature another key, hence another path name
    assert gallon.gallon_key("GRAPH-SPLIT0", "/lake/cora/ensemble/gcn-TAPE-s0-ccc",
                             features | {"TA": "/lake/cora/features/TA-ddd"}, cfg, 0) != key
    assert gallon.gallon_key("GRAPH-SPLIT0", "/lake/cora/ensemble/gcn-TAPE-s0-eee", features, cfg, 0) != key
    assert gallon.gallon_key("GRAPH-SPLIT0", "/lake/cora/ensemble/gcn-TAPE-s0-ccc", features,
                             cfg.model_copy(update={"timing_repeats": 3}), 0) == key
    monkeypatch.setattr(gallon, "GALLON_STAGE", dataclasses.replace(gallon.GALLON_STAGE, version=gallon.GALLON_STAGE.version + 1))
    assert gallon.gallon_key("GRAPH-SPLIT0", "/lake/cora/ensemble/gcn-TAPE-s0-ccc", features, cfg, 0) != key
