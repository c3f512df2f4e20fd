"""The method seam: what every node-classification method plugs into the ``tag`` flow.

A method is a config class (a :class:`~tag_pipeline.methods.base_config.MethodBase` subclass
with a ``name`` literal, the discriminator of :data:`tag_pipeline.methods.MethodConfig`, in
``tag_pipeline/methods/<name>_config.py``) plus, on the flow side, a function that runs its
stages (``flows/methods.py``). The flow composes graph -> LLM answers (when the method's
features need them) -> the method's stages -> report; the method returns :class:`RunSummary`
rows, and the report lays them out (:func:`tag_pipeline.report.method_sections`, by the
method's name). Methods' code lives in ``tag_pipeline/methods/<name>.py``, library code
without Prefect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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


__all__ = ["MethodBase", "RunSummary", "summaries"]
