"""Tests for tag_pipeline.llm.parse on hand-written answers shaped like TAPE's GPT-3.5 ones."""

import pytest

from tag_pipeline.llm.parse import (
    class_aliases,
    extract_explanation,
    parse_ranked_labels,
    split_head,
)
from tag_pipeline.datasets.cora import CLASS_NAMES  # noqa: E402

CORA = list(CLASS_NAMES)
ARXIV = ["arxiv cs ai", "arxiv cs lg", "arxiv cs hc", "arxiv cs cy"]


def test_class_aliases_surface_forms():
    aliases = class_aliases(CORA)
    assert len(aliases) == 7
    assert aliases[0][0] == "case based"
    assert {"case based", "case-based", "case_based"} <= set(aliases[0])
    assert {"neural networks", "neural network", "neural-networks"} <= set(aliases[2])
    assert aliases[6] == ["theory"]
    assert all(a == a.lower() for forms in aliases for a in forms)


def test_class_aliases_arxiv_identifiers():
    aliases = class_aliases(ARXIV)
    assert "cs.ai" in aliases[0] and "arxiv cs ai" in aliases[0]
    assert "cs.lg" in aliases[1]
    assert "cs.hci" in aliases[2]  # GPT-3.5's spelling of cs.HC


def test_class_aliases_rejects_bad_names():
    with pytest.raises(ValueError, match="same name"):
        class_aliases(["Case_Based", "case based"])
    with pytest.raises(ValueError, match="empty"):
        class_aliases(["Theory", " _ "])


def test_multi_label_order_is_position_in_head():
    text = "Rule Learning, Theory. \n\nRule Learning is present because ... Theory too."
    assert parse_ranked_labels(text, CORA) == [5, 6]
    text = "Theory, Neural Networks, Genetic Algorithms\n\nExplanation: ..."
    assert parse_ranked_labels(text, CORA) == [6, 2, 1]


def test_sub_category_prefix_and_explanation_label():
    text = "Sub-category: Case Based\n\nExplanation: The paper ..."
    assert parse_ranked_labels(text, CORA) == [0]
    text = (
        "Reinforcement Learning, Probabilistic Methods\n\n"
        "Explanation: uses neural networks and a Theory of rewards."
    )
    assert parse_ranked_labels(text, CORA) == [4, 3]


def test_mentions_in_explanation_do_not_count():
    text = "Neural Networks. \n\nExplanation: unlike Genetic Algorithms, this is Theory-light."
    assert parse_ranked_labels(text, CORA) == [2]


def test_no_class_gives_empty_list():
    assert parse_ranked_labels("This paper is about compilers.", CORA) == []
    assert parse_ranked_labels("", CORA) == []


def test_refusal_sentences_are_skipped():
    text = (
        "This paper does not belong to any of the sub-categories of AI listed. It does not "
        "involve case-based reasoning, genetic algorithms, neural networks or theory."
    )
    assert parse_ranked_labels(text, CORA) == []
    text = "Theory. The paper proves bounds. It does not use neural networks or rule learning."
    assert parse_ranked_labels(text, CORA) == [6]


def test_fallback_to_whole_text_when_head_names_none():
    text = "The category is clear.\n\nIt evolves programs with Genetic Algorithms, not Theory."
    # the sentence naming both classes has a negation ("not"), so it is skipped
    assert parse_ranked_labels(text, CORA) == []
    text = "The category is clear.\n\nIt evolves programs with Genetic Algorithms. Also Theory."
    assert parse_ranked_labels(text, CORA) == [1, 6]


def test_duplicates_removed_first_position_kept():
    text = "Theory, Neural Networks, Theory, neural network\n\n..."
    assert parse_ranked_labels(text, CORA) == [6, 2]


def test_k_truncation():
    text = "Probabilistic Methods, Genetic Algorithms, Theory. \n\n..."
    assert parse_ranked_labels(text, CORA) == [3, 1, 6]
    assert parse_ranked_labels(text, CORA, k=2) == [3, 1]
    assert parse_ranked_labels(text, CORA, k=5) == [3, 1, 6]
    assert parse_ranked_labels(text, CORA, k=0) == []
    with pytest.raises(ValueError):
        parse_ranked_labels(text, CORA, k=-1)


def test_case_insensitive_and_separator_variants():
    assert parse_ranked_labels("NEURAL NETWORKS, case-based", CORA) == [2, 0]
    assert parse_ranked_labels("case_based, Rule-Learning", CORA) == [0, 5]
    assert parse_ranked_labels("Neural\n   Networks", CORA) == [2]
    assert parse_ranked_labels("Genetic Algorithm", CORA) == [1]


def test_word_boundaries():
    assert parse_ranked_labels("Theoretical analysis of things.", CORA) == []
    assert parse_ranked_labels("Metatheory.", CORA) == []
    assert parse_ranked_labels("cs.CYBER, cs.AI", ARXIV) == [0]  # cs.CYBER is not cs.CY


def test_overlapping_aliases_longest_wins():
    names = ["Learning", "Rule_Learning", "Reinforcement_Learning"]
    text = "Rule Learning, Learning, Reinforcement Learning"
    assert parse_ranked_labels(text, names) == [1, 0, 2]
    # overlapping mentions starting at different positions: the longer one wins
    names = ["Case_Based", "Based_Reasoning_Systems"]
    assert parse_ranked_labels("Case based reasoning systems.", names) == [1]
    assert parse_ranked_labels("Case based, reasoning systems.", names) == [0]


def test_arxiv_answers():
    text = "cs.LG, cs.HCI, cs.AI \n\nReasoning: \n1. cs.LG (Machine Learning) - ..."
    assert parse_ranked_labels(text, ARXIV) == [1, 2, 0]
    assert parse_ranked_labels("arxiv cs ai", ARXIV) == [0]


def test_split_head():
    assert split_head("A, B. \n\nRest here.") == ("A, B. ", "Rest here.")
    assert split_head("  \nA.\n \nRest") == ("A.", "Rest")
    assert split_head("A. Explanation: because") == ("A. ", "Explanation: because")
    assert split_head("Just one paragraph. Two sentences.") == (
        "Just one paragraph. Two sentences.",
        None,
    )


def test_extract_explanation():
    text = "Rule Learning, Theory. \n\nRule Learning is present in the paper."
    assert extract_explanation(text) == "Rule Learning is present in the paper."
    assert extract_explanation("Theory\n\nExplanation: It proves bounds.\n") == "It proves bounds."
    assert extract_explanation("Case Based. Explanation: retrieval.") == "retrieval."
    # no separate head: the whole answer
    text = "Reinforcement Learning. This paper uses RL for channel allocation."
    assert extract_explanation(text, [4]) == text
    # the head named no class: it is itself the reasoning
    text = "This paper does not belong to any sub-category.\n\nIt is about compilers."
    assert extract_explanation(text, []) == text
    assert extract_explanation(text) == "It is about compilers."
