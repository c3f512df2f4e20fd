"""Fixtures of the method tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def stand_in_digests(monkeypatch):
    """Graph content, split and LM weights as fixed strings: keys computable without data."""
    import tag_pipeline.datasets as datasets
    import tag_pipeline.features.text as text

    monkeypatch.setattr(datasets, "graph_content_key", lambda p: "GRAPH")
    monkeypatch.setattr(datasets, "split_key", lambda p, s: f"SPLIT{s}")
    monkeypatch.setattr(text, "model_digest", lambda m: f"W:{m}")
