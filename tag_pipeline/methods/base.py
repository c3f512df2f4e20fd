"""The method seam: what every node-classification method plugs into the ``tag`` flow.

A method is a package ``tag_pipeline/methods/<name>/`` (its config class, a
:class:`~tag_pipeline.methods.base_config.MethodBase` subclass with a ``name`` literal, in
``config.py``; its maths, lake stage and report sections) and a
:class:`~tag_pipeline.methods.MethodSpec` naming its stages function and report hooks. The flow
composes graph -> LLM answers (when the method's features need them) -> the method's stages ->
report; the stages function gets a :class:`MethodRun` and returns :class:`RunSummary` rows, and
the report lays them out (:func:`tag_pipeline.report.method_sections`, by the method's spec).
Methods' code is library code without Prefect: a stages function reaches Prefect only through
``run.stage`` (``flows/methods.py`` implements :class:`MethodRun`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from tag_pipeline.methods.base_config import MethodBase


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


def summaries(runs: Sequence[Mapping[str, Any]], method: str) -> list[RunSummary]:
    """:meth:`RunSummary.of` over ``runs``."""
    return [RunSummary.of(r, method) for r in runs]


class MethodRun(Protocol):
    """What a method's stages function gets from the ``tag`` flow (``flows.methods.MethodRun``).

    Attributes:
        cfg: the run config (:class:`tag_pipeline.config.PipelineConfig`; ``cfg.method`` is
            the method's config).
        graph: the graph artifact's lake path.
        responses: the LLM answers' lake path (``None`` when no feature needs them).
        features: the features this dataset has, of those the run asks for.
        lake: the lake root.
        paths: what the report lists (``{title: path}``), to add to.
    """

    cfg: Any
    graph: str
    responses: str | None
    features: list[str]
    lake: str
    paths: dict[str, str]

    def timed(self, stage: str) -> AbstractContextManager:
        """A context adding its wall time to the run's timings under ``stage``."""

    def stage(self, fn: str, /, *, name: str, step: str = "train", **kwargs: Any) -> Any:
        """``fn(**kwargs)`` (``fn``: ``"module:function"``, a library stage function that goes
        through a ``lake.Stage``) as one Prefect stage task run called ``name``: retried,
        cached by the artifact's lake path; only read from the lake when the run starts past
        pipeline stage ``step``. Pass paths as ``str``."""

    def tape_features(self) -> dict[tuple[str, str, int], str]:
        """TAPE's feature stage: ``{(encoder mode, feature, seed): artifact path}``."""

    def tape_gnns(self, feature_paths: Mapping[tuple[str, str, int], str], modes: list[str] | None = None,
                  features: list[str] | None = None) -> list[dict]:
        """TAPE's GNN and ensemble stages on ``feature_paths``: their summaries."""


#: a method's stages function
Stages = Callable[[MethodRun], list[RunSummary]]

__all__ = ["MethodBase", "MethodRun", "RunSummary", "Stages", "summaries"]
