"""The method seam: what every node-classification method plugs into the ``tag`` flow.

A method is a config class (a pydantic model with a ``name`` literal, the discriminator of
:data:`tag_pipeline.methods.MethodConfig`) plus, on the flow side, a function that runs its
stages (``flows/methods.py``). The flow composes graph -> LLM answers (when the method's
features need them) -> the method's stages -> report; the method returns
:class:`RunSummary` rows and says how the report presents them (title, reference numbers,
tables). Methods live in ``tag_pipeline/methods/<name>.py``, library code without Prefect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class RunSummary(BaseModel):
    """One trained (or derived) predictor of one seed, as the report and the leaderboard see it.

    Attributes:
        method: the method that produced it (``tape``, ``gallon``, ...).
        model: the classifier (``gcn``, ``sage``, ``mlp``, ``linear``, ...).
        variant: which of the method's predictors: for TAPE the feature (``TA``, ``E``, ``P``)
            or ``TAPE`` (h_TAPE, the ensemble); for GALLON ``student``, ``mlp`` (the plain
            MLP baseline), ``lm-teacher``, ``gnn-teacher``.
        seed: split and training seed.
        lm: encoder behind the text features, ``frozen`` or ``finetuned``.
        val_acc, test_acc: accuracy in ``[0, 1]`` at the epoch chosen on validation.
        path: the artifact in the lake (``<lake>/<dataset>/<stage>/<name>-<key>``).
        infer_ms_per_node: forward-pass time per node in milliseconds, where the method
            measured it (``None`` otherwise).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    method: str = "tape"
    model: str
    variant: str
    seed: int
    lm: str = "frozen"
    val_acc: float
    test_acc: float
    path: str
    infer_ms_per_node: float | None = None

    @classmethod
    def of(cls, run: Mapping[str, Any], method: str = "tape") -> RunSummary:
        """A summary from a stage's result dict (TAPE's carry the variant as ``feature``).

        Raises:
            pydantic.ValidationError: a field is missing or of the wrong type, named.
        """
        data = dict(run)
        data.setdefault("variant", data.get("feature"))
        data.setdefault("method", method)
        return cls.model_validate(data)

    def as_run(self) -> dict[str, Any]:
        """The summary as the dict the report's tables read (``feature`` = ``variant``)."""
        return self.model_dump() | {"feature": self.variant}


class MethodConfig(BaseModel):
    """Base of every method's config: its ``name`` (the discriminator) and how it reports.

    Subclasses set ``name: Literal["<name>"] = "<name>"``, document their fields, and override
    the class attributes and :meth:`report_sections` where the defaults do not fit.
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

    def report_sections(self, dataset: str, metrics: Any) -> list[str]:
        """Markdown lines of the accuracy part of the report.

        Args:
            dataset: the dataset's lake name.
            metrics: :func:`tag_pipeline.report.metrics_frame` of this run's summaries.
        """
        from tag_pipeline.report import variant_table

        return variant_table(self, dataset, metrics)

    def run_sections(self, runs: Sequence[Mapping[str, Any]]) -> list[str]:
        """Markdown lines read from the runs' own artifacts, after the accuracy part (none by
        default; Dr.E shows a few nodes' chosen words).

        Args:
            runs: this flow run's summaries (``path``: each run's lake artifact).
        """
        return []

    def needs_llm(self, features: Sequence[str]) -> bool:
        """Whether the flow must read the LLM's answers before this method's stages: by default
        when the run's ``features`` include E or P (TAPE's)."""
        return bool({"E", "P"} & set(features))

    def key_fields(self) -> dict[str, Any]:
        """The fields that decide the method's results (all by default), for lineage keys."""
        return self.model_dump(mode="json")


def summaries(runs: Sequence[Mapping[str, Any]], method: str) -> list[RunSummary]:
    """:meth:`RunSummary.of` over ``runs``."""
    return [RunSummary.of(r, method) for r in runs]
