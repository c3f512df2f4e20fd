"""GALLON's config (:class:`GallonMethod`): a config module, pydantic only; the method's code is
:mod:`tag_pipeline.methods.gallon` (its docstring describes the method and the loss).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from tag_pipeline.methods.base_config import MethodBase


class GallonMethod(MethodBase):
    """GALLON-style distillation into a graph-free MLP student (see the module docstring).

    Runs TAPE's stages first (its GNNs are the teachers; ``features``, ``models``, ``gnn`` of
    the run config apply), then one distillation per seed. Defaults of the student (a 2-layer
    MLP, hidden 256, dropout 0.5, Adam lr 0.01, weight decay 5e-4) are GLNN's Cora settings
    (Zhang et al. 2022, Appendix). The grids are small on purpose: every point is one student
    trained per seed, 6-12 s on Cora on one core. They were narrowed on validation accuracy
    only: on Cora seeds 0-3 the grid alpha {0.5, 1, 2} x beta {0, 0.5} x T {1, 2} picked
    alpha 2 on three seeds and alpha 1 on one, T 1 on three (T 2 on one, by one validation
    node), beta 0.5 on two; alpha 0.5 never came within 0.5 points of the best (the
    ``grid.parquet`` of each ``gallon/s<seed>-...`` artifact of that run).
    """

    name: Literal["gallon"] = "gallon"
    teacher: Literal["best", "mlp", "gcn", "sage", "revgat"] = Field(
        "best",
        description="GNN teacher: h_TAPE of this model, or 'best' = per seed, the model whose h_TAPE "
        "has the best validation accuracy (among the run's models).",
    )
    student_features: list[Literal["TA", "E", "P"]] = Field(
        ["TA"],
        description="What the student reads per node (concatenated; P through an nn.Embedding as in "
        "TAPE). TA only (the default) lets tag/predict classify new papers from their text alone.",
    )
    lm_teacher_features: list[Literal["TA", "E"]] = Field(
        ["TA", "E"],
        description="Frozen text embeddings the LM teacher's linear head reads (concatenated); those "
        "the dataset lacks are skipped.",
    )
    hidden: int = Field(256, ge=1, description="Hidden channels of the student MLP (GLNN: 256 on Cora).")
    num_layers: int = Field(2, ge=1, description="Layers of the student MLP.")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="Dropout of the student MLP.")
    lr: float = Field(0.01, gt=0.0, description="Adam learning rate (student, plain MLP and LM teacher).")
    weight_decay: float = Field(5e-4, ge=0.0, description="Adam weight decay.")
    epochs: int = Field(300, ge=1, description="Maximum epochs per student.")
    patience: int = Field(60, ge=1, description="Stop after this many epochs without a better validation accuracy.")
    alphas: list[float] = Field([1.0, 2.0], description="Grid of alpha, the weight of KL(p_GNN || p_S).")
    betas: list[float] = Field([0.0, 0.5], description="Grid of beta, the weight of KL(p_LM || p_S).")
    temperatures: list[float] = Field([1.0], description="Grid of the distillation temperature T.")
    gammas: list[float] = Field(
        [0.0], description="Grid of gamma, the weight of the representation alignment (0 = off)."
    )
    timing_repeats: int = Field(
        20, ge=1, description="Forward passes timed for inference ms per node (the median is kept). Not in the key."
    )

    title: ClassVar[str] = "GALLON"
    reference: ClassVar[str] = (
        "Xu et al., arXiv 2406.01032 (GALLON), with GLNN's loss (Zhang et al., ICLR 2022, Eq. 1)"
    )

    @field_validator("alphas", "betas", "temperatures", "gammas")
    @classmethod
    def _grid(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("a grid must have at least one value")
        if any(x < 0 for x in v):
            raise ValueError(f"grid values must be >= 0, got {v}")
        return v

    @field_validator("temperatures")
    @classmethod
    def _positive_t(cls, v: list[float]) -> list[float]:
        if any(x <= 0 for x in v):
            raise ValueError(f"temperatures must be > 0, got {v}")
        return v

    @model_validator(mode="after")
    def _alignment_needs_a_hidden_layer(self) -> "GallonMethod":
        if any(self.gammas) and self.num_layers < 2:
            raise ValueError("representation alignment (gammas > 0) needs num_layers >= 2: a 1-layer MLP has no hidden layer")
        return self

    @field_validator("student_features", "lm_teacher_features")
    @classmethod
    def _unique(cls, v: list) -> list:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"must be non-empty without duplicates, got {v}")
        return v

    def key_fields(self) -> dict[str, Any]:
        """The fields that decide a distillation's result: all but ``timing_repeats``.

        Out of the key: ``timing_repeats`` (forward passes timed for ``infer_ms_per_node``; the
        predictions do not depend on it). Numerics: every GALLON computation (LM-teacher head,
        students, teachers' hidden layers) runs on the CPU in float32, the default path, so no
        numerics part is added and there is no device or precision field to key; the torch
        thread count (:func:`~tag_pipeline.methods.gallon.stage.materialize_gallon`'s ``threads``) is execution only.
        """
        return self.model_dump(mode="json", exclude={"timing_repeats"})

    def published(self, dataset: str) -> dict[str, float]:
        return {}
