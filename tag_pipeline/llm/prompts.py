"""Prompts of the LLM stage: one versioned Jinja2 template per dataset, rendered to chat messages.

In the spirit of TAPE's prompts (He et al., ICLR 2024, arXiv 2305.19523, Table 5: the paper's
title and abstract, the dataset's categories, a request for the likely categories ranked from
most to least likely and for an explanation), in our own words. The answer's shape is given by
:func:`tag_pipeline.llm.schema.answer_model`; the prompt only asks for it in prose.

Templates live in ``tag_pipeline/llm/templates/`` as ``<dataset>.<version>.j2`` (e.g.
``cora.v1.j2``); a dataset without its own template uses ``generic.<version>.j2``, built from the
dataset's name and class names. Each template defines two blocks, ``system`` and ``user``,
rendered with ``text`` (the node's text, stripped), ``class_names``, ``k`` (the most labels to
rank) and ``dataset``. A template is never edited in place once answers were paid for: a new
wording is a new version. The version (:func:`prompt_version`) and a hash of the rendered prompt
(:func:`prompt_hash`) enter every cache key, so a changed prompt never reuses old answers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import jinja2

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
"""Folder of the prompt templates (``<dataset>.<version>.j2``)."""

GENERIC = "generic"
"""Template family used for datasets without their own template."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_TEXT_PLACEHOLDER = "\x00node text\x00"


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )


def template_name(dataset: str, template_version: str = "v1") -> str:
    """File name of the template used for ``dataset``: its own, else the generic one.

    Args:
        dataset (str): dataset name, e.g. ``"cora"``.
        template_version (str, optional): e.g. ``"v1"``. (default: ``"v1"``)

    Returns:
        str: e.g. ``"cora.v1.j2"``, or ``"generic.v1.j2"`` for a dataset without a template.

    Raises:
        ValueError: ``dataset`` or ``template_version`` is not a plain name
            (letters, digits, ``_``, ``-``).
        FileNotFoundError: neither template exists for that version.
    """
    for part, what in ((dataset, "dataset"), (template_version, "template_version")):
        if not _NAME.match(part):
            raise ValueError(f"{what} {part!r} is not a plain name (letters, digits, _ and -)")
    for family in (dataset, GENERIC):
        name = f"{family}.{template_version}.j2"
        if (TEMPLATE_DIR / name).is_file():
            return name
    raise FileNotFoundError(
        f"no prompt template {dataset}.{template_version}.j2 or "
        f"{GENERIC}.{template_version}.j2 in {TEMPLATE_DIR}"
    )


def prompt_version(dataset: str, template_version: str = "v1") -> str:
    """Version string of the prompt used for ``dataset``: the template's file name stem.

    Args:
        dataset (str): dataset name.
        template_version (str, optional): (default: ``"v1"``)

    Returns:
        str: e.g. ``"cora.v1"``, or ``"generic.v1"`` for a dataset without its own template.
        Recorded in the response table's ``prompt_version`` column and in cache keys.

    Raises:
        ValueError, FileNotFoundError: see :func:`template_name`.
    """
    return template_name(dataset, template_version).removesuffix(".j2")


def build_messages(
    dataset: str,
    class_names: Sequence[str],
    text: str,
    template_version: str = "v1",
    *,
    k: int | None = None,
) -> list[dict[str, str]]:
    """Chat messages asking the LLM to rank ``class_names`` for one node and explain why.

    Args:
        dataset (str): dataset name; selects ``<dataset>.<version>.j2`` or the generic template.
        class_names (Sequence[str]): the ``C`` class names, listed in the prompt as given.
        text (str): the node's text (for papers: title and abstract); stripped.
        template_version (str, optional): (default: ``"v1"``)
        k (int, optional): the most classes the answer may rank (told to the LLM), at most
            ``C``. (default: ``None``, all ``C``)

    Returns:
        list[dict[str, str]]: ``[{"role": "system", "content": ...}, {"role": "user",
        "content": ...}]``, the OpenAI chat format that litellm and vLLM's ``LLM.chat`` take.

    Raises:
        ValueError: empty ``text`` or no class names, ``k < 1``, or a bad name.
        FileNotFoundError: no template for that version.
    """
    if not class_names:
        raise ValueError("build_messages needs at least one class name")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    body = text.strip()
    if not body:
        raise ValueError("build_messages got an empty node text")
    template = _environment().get_template(template_name(dataset, template_version))
    context = template.new_context(
        {
            "dataset": dataset,
            "text": body,
            "class_names": list(class_names),
            "k": len(class_names) if k is None else min(k, len(class_names)),
        }
    )
    messages = []
    for role in ("system", "user"):
        content = "".join(template.blocks[role](context)).strip()
        messages.append({"role": role, "content": content})
    return messages


def prompt_hash(
    dataset: str,
    class_names: Sequence[str],
    template_version: str = "v1",
    *,
    k: int | None = None,
    length: int = 16,
) -> str:
    """Stable hash of everything in the prompt except the node's text.

    The sha256 of the messages of :func:`build_messages` rendered with a placeholder in place
    of the text, so it changes with the template's wording, the dataset name, the class names
    and their order, and ``k``, and with nothing else (not with Python's hash seed or the
    machine).

    Args:
        dataset (str): dataset name.
        class_names (Sequence[str]): the class names.
        template_version (str, optional): (default: ``"v1"``)
        k (int, optional): see :func:`build_messages`. (default: ``None``)
        length (int, optional): hex characters kept. (default: ``16``)

    Returns:
        str: ``length`` lower-case hex characters.
    """
    messages = build_messages(dataset, class_names, _TEXT_PLACEHOLDER, template_version, k=k)
    canonical = json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]
