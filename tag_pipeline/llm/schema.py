"""The structured answer asked of the LLM for one node: ranked class names and an explanation.

TAPE (He et al., ICLR 2024, arXiv 2305.19523, Sec. 4.1) asks the LLM for the node's most
likely classes as a list ordered from most to least likely, followed by an explanation, and
parses that free text afterwards. Here the same two parts are requested as a typed object, so
that an answer either validates or is re-asked with the reason it failed
(instructor's re-ask loop online, guided decoding plus re-ask offline):

.. code-block:: json

    {"ranked_labels": ["Neural_Networks", "Theory"], "explanation": "The paper trains ..."}

``ranked_labels`` holds 1 to ``k`` distinct class names spelled exactly as the dataset spells
them (a ``Literal`` of the class names, i.e. a JSON-schema ``enum``); ``explanation`` is
non-empty text. Near misses that name one class unambiguously (``"neural networks"``,
``"Neural-Networks"``) are mapped to the exact name before validation, so they cost no re-ask;
everything else fails with a message that says what is wrong and what would be right.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

ANSWER_MODEL_NAME = "NodeClassification"
"""Name of the answer model; the tool (function) name the LLM sees in tool-calling mode."""

_FOLD = re.compile(r"[\s_\-]+")


def _fold(name: str) -> str:
    """Case-, space-, ``_``- and ``-``-insensitive form of a class name (``"case based"``)."""
    return _FOLD.sub(" ", name.strip().lower()).strip()


class AnswerBase(BaseModel):
    """Common base of the answer models made by :func:`answer_model`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    ranked_labels: list[str]
    explanation: str


def _validators(class_names: tuple[str, ...], k: int, dedupe: bool = False) -> dict[str, Any]:
    """The field validators of an answer model for ``class_names`` and at most ``k`` labels."""
    folded: dict[str, str] = {}
    for name in class_names:
        folded.setdefault(_fold(name), name)
    listing = ", ".join(class_names)

    def normalise_labels(cls: type, value: Any) -> Any:
        if isinstance(value, str):  # a bare string where a list is expected
            value = [value]
        if not isinstance(value, list):
            return value  # pydantic reports the type error
        if len(value) == 0:
            raise ValueError(
                "ranked_labels is empty; name at least one class, most likely first, "
                f"choosing from: {listing}"
            )
        if len(value) > k:
            raise ValueError(
                f"ranked_labels has {len(value)} entries; give at most {k}, the most likely first"
            )
        return [
            folded.get(_fold(v), v) if isinstance(v, str) and v not in class_names else v
            for v in value
        ]

    def distinct_labels(cls: type, value: list[str]) -> list[str]:
        if dedupe:  # keep each class's first (highest) rank
            return list(dict.fromkeys(value))
        repeated = sorted({v for v in value if value.count(v) > 1})
        if repeated:
            raise ValueError(
                f"ranked_labels repeats {', '.join(map(repr, repeated))}; list each class once"
            )
        return value

    def non_blank(cls: type, value: str) -> str:
        if not value.strip():
            raise ValueError("explanation is empty; explain briefly why the ranked classes fit")
        return value

    return {
        "normalise_labels": field_validator("ranked_labels", mode="before")(normalise_labels),
        "distinct_labels": field_validator("ranked_labels", mode="after")(distinct_labels),
        "non_blank": field_validator("explanation", mode="after")(non_blank),
    }


@functools.lru_cache(maxsize=64)
def _cached_answer_model(
    class_names: tuple[str, ...], k: int, max_chars: int | None, dedupe: bool
) -> type[AnswerBase]:
    label = Literal[class_names]  # type: ignore[valid-type]
    model = create_model(
        ANSWER_MODEL_NAME,
        __base__=AnswerBase,
        __doc__=(
            "The classes this item most likely belongs to, most likely first, and an "
            "explanation of the choice."
        ),
        __validators__=_validators(class_names, k, dedupe),
        ranked_labels=(
            list[label],  # type: ignore[valid-type]
            Field(
                description=(
                    f"1 to {k} distinct class names, most likely first, spelled exactly as "
                    "listed."
                ),
                min_length=1,
                max_length=k,
                json_schema_extra={"uniqueItems": True},
            ),
        ),
        explanation=(
            str,
            Field(
                description="Why these classes fit the text, citing evidence from it.",
                min_length=1,
                max_length=max_chars,
                # with a cap, plain text only: llama.cpp's grammar for a bare string admits raw
                # control characters (a newline), which no JSON parser accepts
                pattern=None if max_chars is None else rf'^[^"\\\x00-\x1f]{{1,{max_chars}}}$',
            ),
        ),
    )
    return model


def answer_model(
    class_names: Sequence[str],
    k: int | None = None,
    max_explanation_chars: int | None = None,
    dedupe_labels: bool = False,
) -> type[AnswerBase]:
    """Pydantic model of one node's answer: 1..``k`` ranked class names and an explanation.

    The model (named :data:`ANSWER_MODEL_NAME`) has two fields:

    - ``ranked_labels`` (``list[Literal[*class_names]]``, 1 to ``k`` items, distinct; JSON
      schema ``minItems``/``maxItems``/``uniqueItems``): an empty list, more than ``k``
      items, a name that is not a class, or a repeated class (unless ``dedupe_labels``, which
      keeps each class's first rank) each fail with a message saying
      what is wrong and listing what is allowed, which instructor sends back to the LLM when
      it re-asks. Names equal to a class up to case, spaces, ``_`` and ``-`` are first mapped
      to the exact class name.
    - ``explanation`` (``str``): must contain non-blank text, and at most
      ``max_explanation_chars`` characters when given (JSON schema ``maxLength``: a server
      that compiles the schema into a grammar, as llama.cpp's does, stops the text there),
      and then plain text without ``"``, ``\\`` or control characters (a ``pattern``:
      llama.cpp's grammar of a bare string lets a raw newline through, which is not JSON).

    Models are cached: the same ``(class_names, k, max_explanation_chars)`` returns the same
    class (instructor and pydantic then reuse its schema and validator).

    Args:
        class_names (Sequence[str]): the ``C`` class names in label order.
        k (int, optional): the most labels an answer may rank, ``1 <= k``; values above ``C``
            are lowered to ``C``. (default: ``None``, all ``C``)

    Returns:
        type[AnswerBase]: the answer model.

    Raises:
        ValueError: no class names, a repeated or empty class name, or ``k < 1``.
    """
    names = tuple(class_names)
    if not names:
        raise ValueError("answer_model needs at least one class name")
    if any(not n.strip() for n in names):
        raise ValueError(f"empty class name in {list(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"repeated class name in {list(names)}")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if max_explanation_chars is not None and max_explanation_chars < 1:
        raise ValueError(f"max_explanation_chars must be >= 1, got {max_explanation_chars}")
    k = len(names) if k is None else min(k, len(names))
    return _cached_answer_model(names, k, max_explanation_chars, dedupe_labels)


def labels_to_indices(ranked_labels: Sequence[str], class_names: Sequence[str]) -> list[int]:
    """Class indices of validated ranked class names, most likely first.

    Args:
        ranked_labels (Sequence[str]): exact class names (``answer.ranked_labels``).
        class_names (Sequence[str]): the ``C`` class names in label order.

    Returns:
        list[int]: indices in ``0..C-1``, in the order given.

    Raises:
        ValueError: a name is not a class name.
    """
    index = {name: i for i, name in enumerate(class_names)}
    try:
        return [index[name] for name in ranked_labels]
    except KeyError as e:
        raise ValueError(f"{e.args[0]!r} is not one of the classes {list(class_names)}") from None


def validation_summary(error: BaseException, limit: int = 300) -> str:
    """A one-line reason for a failed answer, for the response table's ``error`` column.

    Args:
        error (BaseException): a pydantic ``ValidationError``, a JSON decoding error or any
            other exception raised while reading an answer.
        limit (int, optional): cut the text to this many characters. (default: ``300``)

    Returns:
        str: e.g. ``"ranked_labels: ranked_labels is empty; name at least one class ..."``.
    """
    if isinstance(error, ValidationError):
        parts = []
        for e in error.errors(include_url=False):
            where = ".".join(str(p) for p in e.get("loc", ())) or "answer"
            msg = str(e.get("msg", "")).removeprefix("Value error, ")
            parts.append(f"{where}: {msg}")
        text = "; ".join(parts)
    else:
        text = f"{type(error).__name__}: {error}"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
