"""The LLM stage: ask a language model for each node's class and its reasons (TAPE's P and E).

TAPE (He et al., ICLR 2024, arXiv 2305.19523, Sec. 4.1) prompts GPT-3.5 once per node with the
paper's title and abstract and asks for the most likely categories as a ranked list followed by
an explanation. The answer's text is the explanation feature (E); the ranked class indices are
the prediction feature (P).

Modules:

- :mod:`tag_pipeline.llm.parse`: turn one answer's text into ranked class indices and an
  explanation (pure string functions, class aliases such as ``"cs.AI"`` for ``"arxiv cs ai"``).
- :mod:`tag_pipeline.llm.store`: the response table (one row per node and model) shared by
  every backend, its validation, Parquet I/O and the ``[N, k]`` matrix of ranked labels.
- :mod:`tag_pipeline.llm.replay`: import TAPE's released answers (``gpt_responses``) into that
  table and compare them with TAPE's own extraction (``gpt_preds``).
"""
