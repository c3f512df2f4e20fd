"""Tests for tag_pipeline.llm.prompts and the answer cache keys of tag_pipeline.llm.cache."""

import pytest

from tag_pipeline.llm.cache import answer_key, get_answer, open_cache, put_answer, text_sha256
from tag_pipeline.llm.prompts import (
    TEMPLATE_DIR,
    build_messages,
    prompt_hash,
    prompt_version,
    template_name,
)
from tag_pipeline.datasets.cora import CLASS_NAMES  # noqa: E402

CORA = list(CLASS_NAMES)
TEXT = " The megaprior heuristic. : Several computer algorithms for discovering patterns.\n"

# The rendered Cora v1 prompt, pinned: a template is never edited once answers were paid for
# under its version. If this fails, restore cora.v1.j2 and put the new wording in cora.v2.j2.
CORA_V1_HASH_K5 = "9e3b47636517ae55"


def test_cora_messages():
    messages = build_messages("cora", CORA, TEXT, k=5)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    # the stripped text stands on its own lines, every class is listed exactly as spelled
    assert "\n" + TEXT.strip() + "\n" in user
    for name in CORA:
        assert f"- {name}\n" in user + "\n"
    assert "at most 5" in user and "most to least likely" in user and "explain" in user.lower()
    assert messages[0]["content"] and not messages[0]["content"].endswith("\n")


def test_k_defaults_to_all_classes_and_is_clamped():
    assert "at most 7" in build_messages("cora", CORA, TEXT)[1]["content"]
    assert "at most 7" in build_messages("cora", CORA, TEXT, k=99)[1]["content"]
    with pytest.raises(ValueError, match="k must be"):
        build_messages("cora", CORA, TEXT, k=0)


def test_versions_and_generic_template():
    assert prompt_version("cora") == "cora.v1"
    assert template_name("cora") == "cora.v1.j2"
    assert prompt_version("my_tag") == "generic.v1"
    user = build_messages("my_tag", ["sports", "politics"], "A match report.")[1]["content"]
    assert '"my_tag"' in user and "- sports\n- politics" in user and "\nA match report.\n" in user
    with pytest.raises(FileNotFoundError, match="v99"):
        prompt_version("cora", "v99")
    with pytest.raises(ValueError, match="plain name"):
        prompt_version("../etc")
    with pytest.raises(ValueError, match="empty node text"):
        build_messages("cora", CORA, "  \n ")
    with pytest.raises(ValueError, match="class name"):
        build_messages("cora", [], TEXT)


def test_every_template_renders():
    for path in sorted(TEMPLATE_DIR.glob("*.j2")):
        dataset, version = path.name.removesuffix(".j2").rsplit(".", 1)
        messages = build_messages(dataset, ["A", "B"], "some text", version)
        assert all(m["content"].strip() for m in messages), path.name


def test_prompt_hash_is_stable_and_covers_everything_but_the_text():
    h = prompt_hash("cora", CORA, k=5)
    assert h == CORA_V1_HASH_K5, "cora.v1.j2 changed: add a new version instead (see comment)"
    assert len(h) == 16 and h == prompt_hash("cora", tuple(CORA), "v1", k=5)
    assert prompt_hash("cora", CORA, k=4) != h
    assert prompt_hash("cora", list(reversed(CORA)), k=5) != h
    assert prompt_hash("data_a", CORA, k=5) != prompt_hash("data_b", CORA, k=5)  # generic names it


def test_answer_key_covers_each_part():
    base = dict(backend="online", model="m", prompt_version="cora.v1", prompt_hash="h",
                text="t", params={"temperature": 0.0})
    key = answer_key(**base)
    assert len(key) == 64 and key == answer_key(**{**base, "text": "  t \n"})  # text stripped
    for change in ({"backend": "offline"}, {"model": "m2"}, {"prompt_version": "cora.v2"},
                   {"prompt_hash": "h2"}, {"text": "u"}, {"params": {"temperature": 0.5}}):
        assert answer_key(**{**base, **change}) != key, change
    assert text_sha256(" t ") == text_sha256("t")


def test_cache_roundtrip_drops_unknown_fields(tmp_path):
    cache = open_cache(tmp_path / "c")
    try:
        assert get_answer(cache, "k") is None
        put_answer(cache, "k", {"status": "ok", "ranked_labels": [1], "node_id": 3})
        got = get_answer(cache, "k")
        assert got["status"] == "ok" and got["ranked_labels"] == [1] and "node_id" not in got
    finally:
        cache.close()
    with open_cache(tmp_path / "c") as again:  # persistent
        assert get_answer(again, "k")["ranked_labels"] == [1]
