"""TAPE (He et al., "Harnessing Explanations: LLM-to-LM Interpreter for Enhanced TAG
Representation Learning", ICLR 2024, arXiv 2305.19523) as a method behind the seam: its config.

TAPE's stages are the framework's first ones: the LLM ranks each node's classes and explains
why (Sec. 4.1), an LM embeds title + abstract (TA) and the explanation (E) (Sec. 4.2), the
top-k labels feed an ``nn.Embedding`` (P, Sec. 4.3), one GNN per feature, and h_TAPE averages
their outputs (Sec. 4.4); their code is the library's own stages (``llm``, ``features``,
``train``, ``ensemble``), so TAPE has no method module of its own. Its grid (``features``,
``models``, ``lm_modes``, ``gnn``, ``ensemble``) stays at the top level of the run config
(:class:`tag_pipeline.config.PipelineConfig`): methods that build on TAPE's GNNs (GALLON's
teachers) read the same grid, and ``tag/full``'s parameters and lake keys are unchanged by the
seam. The report's TAPE tables: :func:`tag_pipeline.report.tape_accuracy_section`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from tag_pipeline.methods.base_config import MethodBase

#: TAPE paper, Table 2: test accuracy of h_TAPE (fine-tuned DeBERTa-base for TA and E, mean of 4 seeds)
#: and of the LLM alone (zero-shot GPT-3.5).
TAPE_PUBLISHED: dict[str, dict[str, float]] = {
    "cora": {"llm": 0.6769, "gcn": 0.9119, "sage": 0.9290, "revgat": 0.9280, "mlp": 0.8778},
    "pubmed": {"llm": 0.9342, "gcn": 0.9431, "sage": 0.9618, "revgat": 0.9604, "mlp": 0.9565},
    "ogbn-arxiv": {"llm": 0.7350, "gcn": 0.7520, "sage": 0.7672, "revgat": 0.7750, "mlp": 0.7587},
    "arxiv_2023": {"llm": 0.7356, "gcn": 0.8080, "sage": 0.8388, "revgat": 0.8423, "mlp": 0.8385},
}


class TapeMethod(MethodBase):
    """TAPE: per-feature GNNs on TA, E and P and their ensemble h_TAPE. No fields of its own:
    the run config's TAPE grid applies (module docstring)."""

    name: Literal["tape"] = "tape"

    title: ClassVar[str] = "TAPE"
    reference: ClassVar[str] = "He et al., ICLR 2024, arXiv 2305.19523"

    def published(self, dataset: str) -> dict[str, float]:
        return TAPE_PUBLISHED.get(dataset, {})
