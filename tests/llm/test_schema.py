"""Tests for tag_pipeline.llm.schema: the answer model, its validation messages and helpers."""

import json

import pytest
from pydantic import ValidationError

from tag_pipeline.llm.schema import (
    ANSWER_MODEL_NAME,
    answer_model,
    labels_to_indices,
    validation_summary,
)
from tag_pipeline.datasets.cora import CLASS_NAMES  # noqa: E402

CORA = list(CLASS_NAMES)


def _error(model, payload) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate(payload)
    return str(info.value)


def test_json_schema_lists_exact_classes_and_bounds():
    schema = answer_model(CORA, 3).model_json_schema()
    assert schema["title"] == ANSWER_MODEL_NAME
    assert schema["required"] == ["ranked_labels", "explanation"]
    labels = schema["properties"]["ranked_labels"]
    assert labels["items"]["enum"] == CORA
    assert (labels["minItems"], labels["maxItems"], labels["uniqueItems"]) == (1, 3, True)
    assert schema["properties"]["explanation"]["minLength"] == 1
    json.dumps(schema)  # serialisable, as sent to the API or to guided decoding


def test_valid_answer_and_near_miss_names_are_normalised():
    model = answer_model(CORA, 5)
    answer = model.model_validate(
        {"ranked_labels": ["neural networks", "Theory", "rule-learning"], "explanation": "Backprop"}
    )
    assert answer.ranked_labels == ["Neural_Networks", "Theory", "Rule_Learning"]
    assert labels_to_indices(answer.ranked_labels, CORA) == [2, 6, 5]
    # a bare string is read as a one-item list
    one = model.model_validate({"ranked_labels": "Theory", "explanation": "x"})
    assert one.ranked_labels == ["Theory"]


def test_invalid_answers_explain_what_is_wrong():
    model = answer_model(CORA, 2)
    msg = _error(model, {"ranked_labels": [], "explanation": "x"})
    assert "ranked_labels is empty" in msg and "Case_Based" in msg and "Theory" in msg
    msg = _error(model, {"ranked_labels": ["Deep_Learning"], "explanation": "x"})
    assert "Deep_Learning" in msg and "'Neural_Networks'" in msg  # the allowed names are listed
    msg = _error(model, {"ranked_labels": ["Theory", "theory"], "explanation": "x"})
    assert "repeats 'Theory'" in msg
    three = ["Theory", "Case_Based", "Rule_Learning"]
    msg = _error(model, {"ranked_labels": three, "explanation": "x"})
    assert "has 3 entries; give at most 2" in msg
    msg = _error(model, {"ranked_labels": ["Theory"], "explanation": "   "})
    assert "explanation is empty" in msg
    msg = _error(model, {"ranked_labels": ["Theory"]})
    assert "explanation" in msg


def test_validation_summary_is_one_line():
    model = answer_model(CORA, 2)
    with pytest.raises(ValidationError) as info:
        model.model_validate({"ranked_labels": [], "explanation": ""})
    text = validation_summary(info.value)
    assert "\n" not in text and text.startswith("ranked_labels: ranked_labels is empty")
    assert "explanation" in text
    assert validation_summary(ValueError("x" * 1000), limit=50).endswith("...")
    assert len(validation_summary(ValueError("x" * 1000), limit=50)) == 50


def test_models_are_cached_and_k_is_clamped():
    assert answer_model(CORA, 5) is answer_model(tuple(CORA), 5)
    assert answer_model(CORA, 5) is not answer_model(CORA, 4)
    schema = answer_model(["a", "b"], 10).model_json_schema()
    assert schema["properties"]["ranked_labels"]["maxItems"] == 2
    schema = answer_model(["a", "b"]).model_json_schema()
    assert schema["properties"]["ranked_labels"]["maxItems"] == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one"):
        answer_model([])
    with pytest.raises(ValueError, match="repeated"):
        answer_model(["a", "a"])
    with pytest.raises(ValueError, match="empty class name"):
        answer_model(["a", " "])
    with pytest.raises(ValueError, match="k must be"):
        answer_model(["a"], 0)
    with pytest.raises(ValueError, match="not one of the classes"):
        labels_to_indices(["Deep"], CORA)
