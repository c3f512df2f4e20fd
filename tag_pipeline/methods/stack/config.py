"""The stack's config (:class:`StackMethod`): a config module, pydantic only; the method's code is
:mod:`tag_pipeline.methods.stack`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from tag_pipeline.methods.base_config import MethodBase


class StackMethod(MethodBase):
    """A cross-method ensemble: greedy ensemble selection over the member methods' stored
    predictions of one seed, fitted on that seed's validation nodes only."""

    name: Literal["stack"] = "stack"
    members: list[str] = Field(
        ["tape", "gallon"],
        description="Methods whose predictors the stack may combine, each run with its default config "
        "(their artifacts are found in the lake when they already ran, e.g. by tag/compare). Every "
        "predictor of theirs with stored per-node predictions is a candidate (TAPE: each GNN per "
        "feature and h_TAPE; GALLON: student, plain MLP, LM teacher; GLEM: LM and GNN; LEADING).",
    )
    rounds: int = Field(
        25, ge=1, le=1000,
        description="Greedy additions (with replacement) at most; the prefix best on validation is kept.",
    )

    title: ClassVar[str] = "Stack (ensemble selection across methods)"
    reference: ClassVar[str] = (
        "Ensemble selection: Caruana, Niculescu-Mizil, Crew and Ksikes, ICML 2004, Sec. 2 (forward "
        "selection with replacement, on a held-out set)"
    )

    @field_validator("members")
    @classmethod
    def _members(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("members must name at least one method")
        if "stack" in value:
            raise ValueError("a stack cannot be its own member")
        if len(set(value)) != len(value):
            raise ValueError(f"members repeat a method: {value}")
        return value
