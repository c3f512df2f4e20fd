"""LEADING's config (:class:`LeadingMethod`): a config module, pydantic only; the method's code is
:mod:`tag_pipeline.methods.leading` (its docstring describes the method).

LEADING fine-tunes the same LM as TAPE's fine-tuning stage, through the same code
(:func:`tag_pipeline.finetune.load_classifier` and its batcher): the fields both read are declared
once (:class:`~tag_pipeline.finetune_config.LMTrainingConfig`), and
:meth:`LeadingMethod.finetune_config` is the one place that turns LEADING's config into the
:class:`~tag_pipeline.finetune_config.FinetuneConfig` that code reads.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from tag_pipeline.finetune_config import FinetuneConfig, LMTrainingConfig
from tag_pipeline.methods.base_config import MethodBase

#: LEADING's numerics: the LM and the graph layer run on the CPU in float32, no autocast (the
#: default path: no numerics part in the key). A device or precision field (as
#: FinetuneConfig's), if one is ever added, must enter the key when it is not this path.
LEADING_DEVICE = "cpu"
#: FinetuneConfig's fields LEADING does not declare, fixed here rather than taken from that
#: config's defaults (which may change): attention dropout and, unused by LEADING's own head,
#: the classifier's dropout.
LEADING_ATTENTION_DROPOUT = 0.1


class LeadingMethod(LMTrainingConfig, MethodBase):
    """LEADING (module docstring): one end-to-end LM + propagation model per text feature and seed.

    The LM's fields are :class:`~tag_pipeline.finetune_config.LMTrainingConfig`'s (``model``,
    ``max_length``, ``epochs``, ``batch_size``: target nodes per step, ``label_smoothing``,
    ``dropout``, ``e_text``, ``threads``), with fine-tuning's defaults; ``lr``,
    ``warmup_ratio`` and ``trainable_layers`` are LEADING's own (other defaults: a constant
    learning rate, the top 2 layers), then the fields below.
    """

    name: Literal["leading"] = "leading"
    features: list[Literal["TA", "E"]] = Field(["TA", "E"], description="Texts trained end to end, one model each.")
    trainable_layers: int | None = Field(
        2, ge=1, description="Train only the LM's top k layers (the lower ones run once; a CPU lever); None = all."
    )
    lr: float = Field(1e-4, gt=0.0, description="AdamW learning rate (as our MiniLM fine-tuning).")
    head_lr: float = Field(1e-2, gt=0.0, description="Learning rate of the head (a fresh linear layer).")
    warmup_ratio: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="None: constant learning rates. A fraction: both learning rates warm up linearly "
        "over that fraction of all steps, then decay linearly to 0 (as LM fine-tuning, "
        "transformers' get_linear_schedule_with_warmup); a lever against the drop after epoch 1.",
    )
    refresh_every: int = Field(1, ge=1, description="Epochs between refreshes of the neighbour cache (paper: 1).")
    neighbours: Literal["cache", "gradient"] = Field(
        "cache",
        description="'cache' (LEADING: neighbours from the no-gradient cache) or 'gradient' (the naive "
        "end-to-end baseline: every step also encodes the targets' gradient_hops-hop neighbours with "
        "gradients; the rest still comes from the cache). For cost comparisons.",
    )
    gradient_hops: int = Field(2, ge=1, description="Hops encoded with gradients when neighbours='gradient'.")
    head: Literal["implicit", "gcn", "sage"] = Field("implicit", description="Graph layer over the LM embeddings.")
    teleport: float = Field(0.1, gt=0.0, le=1.0, description="a of the implicit layer (APPNP's teleport, 0.1).")
    iters: int = Field(10, ge=1, description="Fixed-point iterations per forward and backward pass (warm-started).")
    gnns: bool = Field(
        True,
        description="Also train TAPE's GNNs and h_TAPE on LEADING's TA/E embeddings (with TAPE's P), "
        "as TAPE does with fine-tuned LM features (the run's models and gnn settings).",
    )

    title: ClassVar[str] = "LEADING"
    reference: ClassVar[str] = "Xue et al., KDD 2025, arXiv 2312.04737"

    def needs_llm(self, features) -> bool:
        return bool(("E" in self.features and "E" in features) or (self.gnns and "P" in features))

    def key_fields(self) -> dict[str, Any]:
        """The fields that decide a LEADING run's result: all but ``threads`` and ``gnns``;
        ``e_text`` only when not ``"auto"`` and ``warmup_ratio`` only when set (keys of runs
        from before those fields stay valid).

        Out of the key: ``threads`` (torch intra-op threads: how fast, not what) and ``gnns``
        (whether TAPE's GNNs are also trained on the embeddings: those are artifacts of their
        own, keyed on this run's path). In it: ``batch_size``, the target nodes per training step
        (not an inference batch). Of :class:`~tag_pipeline.config.FinetuneConfig`'s fields the
        rest are fixed in the code, not fields: ``device`` and ``precision`` (the CPU in
        float32, :data:`LEADING_DEVICE`; the default path, so no
        numerics part is added), attention dropout
        (:data:`LEADING_ATTENTION_DROPOUT`), no weight decay, no
        gradient clipping, no gradient accumulation, and inference batches of 64 texts
        (execution only).
        """
        fields = self.model_dump(mode="json", exclude={"threads", "gnns"})
        for name, before in (("e_text", "auto"), ("warmup_ratio", None)):
            if fields[name] == before:  # keys of runs from before the field existed stay valid
                del fields[name]
        return fields

    def finetune_config(self) -> FinetuneConfig:
        """The :class:`~tag_pipeline.finetune_config.FinetuneConfig` that LEADING's LM is loaded
        and batched with (:func:`tag_pipeline.finetune.load_classifier`): this config's shared
        fields and ``trainable_layers``, and the values LEADING fixes (attention dropout
        :data:`LEADING_ATTENTION_DROPOUT`, no classifier dropout: LEADING's head is its own, the
        CPU in float32). LEADING's ``lr`` and ``warmup_ratio`` drive its own optimiser, not this."""
        return FinetuneConfig(**self.model_dump(include=set(LMTrainingConfig.model_fields)),
                              trainable_layers=self.trainable_layers, attention_dropout=LEADING_ATTENTION_DROPOUT,
                              classifier_dropout=0.0, device=LEADING_DEVICE, precision="fp32")
