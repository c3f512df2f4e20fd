"""Parse one LLM answer into ranked class indices (TAPE's P) and an explanation (TAPE's E).

TAPE (arXiv 2305.19523, Sec. 4.1) asks the LLM for a paper's most likely categories "as a
comma-separated list ordered from most to least likely" followed by an explanation. The
recorded GPT-3.5 answers (TAPE's released ``gpt_responses``) follow that shape loosely::

    "Rule Learning, Theory. \\n\\nRule Learning is present ..."
    "Sub-category: Case Based\\n\\nExplanation: ..."
    "Reinforcement Learning. This paper belongs to the sub-category of ..."
    "cs.LG, cs.CR, cs.AI \\n\\nReasoning: ..."
    "This paper does not belong to any sub-category of AI as ..."

The rule used here (ours, not TAPE's extraction code):

1. The *head* of an answer is its text before the first blank line or the first
   ``"Explanation:"`` label, whichever comes first; the rest is the explanation.
2. Class mentions are found in the head by case-insensitive, word-bounded matching of every
   class's aliases (:func:`class_aliases`). Where two mentions overlap the longer one wins.
   Mentions are ranked by position; a class named twice keeps its first position.
3. Sentences with a negation (``not``, ``no``, ``none``, ``nor``, ``neither``, ``never``,
   ``cannot``, ``-n't``) are skipped: there the LLM lists the classes it rejects
   ("This paper does not belong to any of the sub-categories ...", "It does not involve
   neural networks, genetic algorithms or reinforcement learning").
4. If the head names no class, the whole answer is searched the same way.
5. No mention at all gives ``[]``: the LLM answered, but named no class.

Why the head: the LLM writes its ranked list first and then discusses classes in any order,
so positions in the head are the ranking and mentions in the explanation are noise.
Single-word classes such as ``Theory`` appear freely in explanations, which makes the
restriction matter. Why the negation filter: without it, answers that refuse every class
("... does not involve any AI methods such as case-based reasoning, genetic algorithms, ...")
parse as a ranking of all seven classes, and one-paragraph answers such as
"Theory. ... It does not involve neural networks ..." gain spurious lower ranks. On TAPE's
2,708 Cora answers the first parsed class equals the top-1 of TAPE's ``cora.csv`` for 99.15%
of nodes either way (the rest: 21 refusals, where the csv says ``1``, and two "Case-Based"
answers the csv missed); the filter only changes the lower ranks and the refusals. On the
169,343 ogbn-arxiv answers the parsed top-1 equals the csv's for 99.98% of nodes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

# Characters that make a match part of a longer word: "theory" in "theoretical" is no match.
_WORD = "0-9a-z"
_SEPARATORS = re.compile(r"[\s_\-]+")
_HEAD_END = re.compile(r"\n[ \t\r]*\n|\bexplanations?\s*:", re.IGNORECASE)
# How LLMs misspell arXiv identifiers, where the intent is unambiguous (GPT-3.5 writes
# "cs.HCI" for cs.HC in TAPE's ogbn-arxiv answers).
_ARXIV_VARIANTS: dict[str, tuple[str, ...]] = {"cs.hc": ("cs.hci",)}
_NEGATION = re.compile(r"\b(?:not|no|none|nor|neither|never|cannot)\b|n't\b", re.IGNORECASE)
# A sentence ends at . ! or ? followed by white space ("cs.AI" is not split).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_EXPLANATION_LABEL = re.compile(r"^\s*explanations?\s*:\s*", re.IGNORECASE)


def _singular(word: str) -> str | None:
    """``"networks"`` -> ``"network"``; ``None`` where stripping an ``s`` is unsafe."""
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return None


def class_aliases(class_names: Sequence[str]) -> list[list[str]]:
    """Lower-case surface forms under which an answer may name each class.

    For a name split into words at spaces, ``_`` and ``-`` (``"Case_Based"``) the forms are the
    words joined by a space, a hyphen and an underscore (``"case based"``, ``"case-based"``,
    ``"case_based"``), plus the same with the last word made singular where it is a plain
    plural (``"neural network"`` for ``"Neural_Networks"``). arXiv names written as
    ``"arxiv <archive> <subject>"`` (ogbn-arxiv's ``labelidx2arxivcategeory.csv``) also get the
    arXiv identifier (``"arxiv cs ai"`` -> ``"cs.ai"``, which matches ``"cs.AI"`` since matching
    ignores case) and its unambiguous LLM misspellings (``"cs.hci"`` for ``"cs.hc"``). A
    derived form shared by two classes is dropped from both, so it never votes for the wrong
    one.

    Args:
        class_names (Sequence[str]): the ``C`` class names, label ``c`` = ``class_names[c]``.

    Returns:
        list[list[str]]: ``C`` lists of distinct lower-case aliases, the class's own
        normalised name (words joined by a space) first.

    Raises:
        ValueError: a class name is empty, or two class names normalise to the same words.
    """
    forms: list[list[str]] = []
    primaries: dict[str, int] = {}
    for c, name in enumerate(class_names):
        words = [w for w in _SEPARATORS.split(name.strip().lower()) if w]
        if not words:
            raise ValueError(f"class {c} has an empty name {name!r}")
        primary = " ".join(words)
        if primary in primaries:
            raise ValueError(
                f"classes {primaries[primary]} and {c} have the same name {primary!r}"
            )
        primaries[primary] = c
        variants = [words]
        singular = _singular(words[-1])
        if singular is not None:
            variants.append([*words[:-1], singular])
        found = [sep.join(v) for v in variants for sep in (" ", "-", "_")]
        if words[0] == "arxiv" and len(words) >= 3:
            identifier = f"{words[1]}.{'-'.join(words[2:])}"
            found += [identifier, *_ARXIV_VARIANTS.get(identifier, ())]
        found.append(name.strip().lower())
        forms.append(list(dict.fromkeys(found)))
    owners: dict[str, set[int]] = {}
    for c, aliases in enumerate(forms):
        for a in aliases:
            owners.setdefault(a, set()).add(c)
    return [
        [a for a in aliases if len(owners[a]) == 1 or a == aliases[0]] for aliases in forms
    ]


@functools.lru_cache(maxsize=32)
def _mention_pattern(class_names: tuple[str, ...]) -> tuple[re.Pattern[str], dict[str, int]]:
    """One regex finding every alias at every position (overlaps included), and alias -> class.

    The alternation lists longer aliases first, so at each position the longest alias that
    matches is reported. Whitespace inside an alias matches any run of whitespace.
    """
    owner: dict[str, int] = {}
    for c, aliases in enumerate(class_aliases(class_names)):
        for a in aliases:
            owner.setdefault(a, c)
    ordered = sorted(owner, key=lambda a: (-len(a), a))
    alternation = "|".join(r"\s+".join(map(re.escape, a.split(" "))) for a in ordered)
    pattern = re.compile(rf"(?<![{_WORD}])(?=({alternation})(?![{_WORD}]))")
    return pattern, owner


def _normalise(alias_text: str) -> str:
    return re.sub(r"\s+", " ", alias_text)


def _find_mentions(text: str, class_names: tuple[str, ...]) -> list[int]:
    """Classes mentioned in ``text`` by position; overlapping mentions: the longer wins."""
    pattern, owner = _mention_pattern(class_names)
    lowered = text.lower()
    spans = [
        (m.start(), m.start() + len(m.group(1)), m.group(1)) for m in pattern.finditer(lowered)
    ]
    if not spans:
        return []
    spans.sort(key=lambda s: (-(s[1] - s[0]), s[0]))
    taken: list[tuple[int, int, int]] = []
    for start, end, alias in spans:
        if all(end <= s or start >= e for s, e, _ in taken):
            taken.append((start, end, owner[_normalise(alias)]))
    taken.sort()
    return list(dict.fromkeys(c for _, _, c in taken))


def _affirmed_mentions(text: str, class_names: tuple[str, ...]) -> list[int]:
    """Classes mentioned in the sentences of ``text`` that carry no negation, by position."""
    found: list[int] = []
    for sentence in _SENTENCE_END.split(text):
        if not _NEGATION.search(sentence):
            found.extend(_find_mentions(sentence, class_names))
    return list(dict.fromkeys(found))


def split_head(text: str) -> tuple[str, str | None]:
    """Split an answer into its head and the rest (see the module's rule, step 1).

    Args:
        text (str): one answer, as returned by the LLM.

    Returns:
        tuple[str, str | None]: ``(head, rest)`` with leading blank space of ``text`` ignored;
        ``rest`` is ``None`` when the answer has no blank line and no ``"Explanation:"``
        label (the whole answer is its head). ``rest`` keeps its ``"Explanation:"`` label.
    """
    body = text.lstrip()
    m = _HEAD_END.search(body)
    if m is None:
        return body, None
    if m.group(0).strip():  # an "Explanation:" label: keep it with the rest
        return body[: m.start()], body[m.start() :]
    return body[: m.start()], body[m.end() :]


def parse_ranked_labels(
    text: str, class_names: Sequence[str], k: int | None = None
) -> list[int]:
    """Ranked class indices named by one answer, most likely first.

    Applies the module's rule: class mentions in the answer's head by position (longest alias
    wins on overlaps, word-bounded, case-insensitive, sentences with a negation skipped),
    else in the whole answer; duplicates keep their first position.

    Args:
        text (str): the answer (``choices[0].message.content`` of a chat completion).
        class_names (Sequence[str]): the ``C`` class names in label order, e.g. TAPE's Cora
            order ``["Case_Based", "Genetic_Algorithms", ..., "Theory"]``.
        k (int, optional): keep at most ``k`` labels; ``None`` keeps all. (default: ``None``)

    Returns:
        list[int]: distinct labels in ``0..C-1``; ``[]`` if the answer names no class.

    Raises:
        ValueError: ``k`` is negative, or the class names are invalid (see
            :func:`class_aliases`).
    """
    if k is not None and k < 0:
        raise ValueError(f"k must be >= 0 or None, got {k}")
    names = tuple(class_names)
    head, rest = split_head(text)
    ranked = _affirmed_mentions(head, names)
    if not ranked and rest is not None:
        ranked = _affirmed_mentions(text, names)
    return ranked if k is None else ranked[:k]


def extract_explanation(text: str, ranked: Sequence[int] | None = None) -> str:
    """The explanation part of one answer.

    The text after the head (see :func:`split_head`), stripped, without a leading
    ``"Explanation:"`` label. Where the answer has no separate head (no blank line, no label),
    or where ``ranked`` is given and empty (the head named no class, so it is itself the
    reasoning, e.g. "This paper does not belong to any sub-category ..."), the whole answer,
    stripped. Note that TAPE's explanation feature (E) is the whole answer; this is the
    narrower reasoning part, kept alongside the raw text in the response store.

    Args:
        text (str): the answer.
        ranked (Sequence[int], optional): the labels parsed from it, if known.
            (default: ``None``)

    Returns:
        str: the explanation; ``""`` only for a blank answer or an empty part after the head.
    """
    head, rest = split_head(text)
    if rest is None or (ranked is not None and len(ranked) == 0):
        return text.strip()
    return _EXPLANATION_LABEL.sub("", rest, count=1).strip()
