"""The base of every method's config: :class:`MethodBase` (a config module: pydantic only).

A method's config is data: its ``name`` (the discriminator of the union
:data:`tag_pipeline.methods.MethodConfig`), documented fields, which of them enter lineage keys
(:meth:`MethodBase.key_fields`), its title and reference, and published numbers. How the report
lays a method out is its package's ``report.py`` (named by its spec), and what a method
computes is its package's (``tag_pipeline/methods/<name>/``); neither is imported here,
so ``tag_pipeline.config`` can hold a method without running any library code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class MethodBase(BaseModel):
    """Base of every method's config: its ``name`` (the discriminator), title and reference.

    Subclasses set ``name: Literal["<name>"] = "<name>"``, document their fields, and override
    the class attributes, :meth:`published`, :meth:`needs_llm` and :meth:`key_fields` where
    the defaults do not fit.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The method.")

    #: Title of the report: ``"<title> on <dataset>"``.
    title: ClassVar[str] = "method"
    #: Paper and code the method reproduces, cited in the report.
    reference: ClassVar[str] = ""

    def published(self, dataset: str) -> dict[str, float]:
        """Published test accuracy of this method on ``dataset`` (``{model: accuracy}``), if any."""
        return {}

    def needs_llm(self, features: Sequence[str]) -> bool:
        """Whether the flow must read the LLM's answers before this method's stages: by default
        when the run's ``features`` include E or P (TAPE's)."""
        return bool({"E", "P"} & set(features))

    def key_fields(self) -> dict[str, Any]:
        """The fields that decide the method's results (all by default), for lineage keys."""
        return self.model_dump(mode="json")
