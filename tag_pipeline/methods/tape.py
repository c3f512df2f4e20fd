"""TAPE (He et al., "Harnessing Explanations: LLM-to-LM Interpreter for Enhanced TAG
Representation Learning", ICLR 2024, arXiv 2305.19523) as a method behind the seam.

TAPE's stages are the framework's first ones: the LLM ranks each node's classes and explains
why (Sec. 4.1), an LM embeds title + abstract (TA) and the explanation (E) (Sec. 4.2), the
top-k labels feed an ``nn.Embedding`` (P, Sec. 4.3), one GNN per feature, and h_TAPE averages
their outputs (Sec. 4.4). Its grid (``features``, ``models``, ``lm_modes``, ``gnn``,
``ensemble``) stays at the top level of the run config
(:class:`tag_pipeline.config.PipelineConfig`): methods that build on TAPE's GNNs (GALLON's
teachers) read the same grid, and ``tag/full``'s parameters and lake keys are unchanged by the
seam.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from tag_pipeline.methods.base import MethodConfig


class TapeMethod(MethodConfig):
    """TAPE: per-feature GNNs on TA, E and P and their ensemble h_TAPE. No fields of its own:
    the run config's TAPE grid applies (module docstring)."""

    name: Literal["tape"] = "tape"

    title: ClassVar[str] = "TAPE"
    reference: ClassVar[str] = "He et al., ICLR 2024, arXiv 2305.19523"

    def published(self, dataset: str) -> dict[str, float]:
        from tag_pipeline.report import TAPE_PUBLISHED

        return TAPE_PUBLISHED.get(dataset, {})

    def report_sections(self, dataset: str, metrics: Any) -> list[str]:
        from tag_pipeline.report import tape_accuracy_section

        return tape_accuracy_section(dataset, metrics)
