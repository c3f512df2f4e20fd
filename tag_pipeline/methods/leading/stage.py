"""LEADING's lake stage: one (feature, seed) run at ``<lake>/<dataset>/leading/<feature>-s<seed>-<key>``.
"""

from __future__ import annotations

from pathlib import Path

from tag_pipeline import lake
from tag_pipeline.methods.leading.config import LeadingMethod
from tag_pipeline.methods.leading.model import train_leading

LEADING_STAGE_VERSION = 1
#: One (feature, seed) LEADING run: ``<lake>/<dataset>/leading/<feature>-s<seed>-<key>``.
LEADING_STAGE = lake.Stage(
    "leading",
    LEADING_STAGE_VERSION,
    code=(
        "tag_pipeline.methods.leading",  # its package: config (key_fields, the FinetuneConfig its LM is loaded with), cache, implicit layer, training loop, epoch choice
        "tag_pipeline.finetune_config",  # the LM fields LEADING shares with fine-tuning (LMTrainingConfig)
        "tag_pipeline.finetune",  # the LM: load_classifier, split_encoder, the batcher, MeanPoolClassifier
        "tag_pipeline.models",  # the gcn/sage heads (build_model)
        "tag_pipeline.features.stage",  # feature_texts: the TA or E text the LM reads
        "tag_pipeline.train",  # accuracy, predictions_frame
    ),
)


def leading_path(graph_path: str | Path, responses: str | Path | None, feature: str, seed: int, cfg: LeadingMethod,
                 lake_root: str | Path) -> Path:
    """Lake path of one (feature, seed) LEADING run: graph content and split, the LLM responses
    artifact (for E), the feature, seed, config (:meth:`LeadingMethod.key_fields`) and the LM's
    weight files."""
    from tag_pipeline.datasets import graph_content_key, split_key
    from tag_pipeline.features.text import model_digest

    graph_path = Path(graph_path)
    key = LEADING_STAGE.key(f"{graph_content_key(graph_path)}-{split_key(graph_path, seed)}",
                            Path(responses).name if (responses and feature == "E") else None, feature, seed,
                            cfg.key_fields(), model_digest(cfg.model))
    return LEADING_STAGE.path(lake_root, lake.dataset_of(graph_path), key, prefix=f"{feature}-s{seed}-")


def _summary(path: Path) -> dict:
    """The committed run's summary with its ``path``: what a lake hit and a build both return."""
    return dict(lake.read_artifact(path, verify=False).manifest["summary"], path=str(path))


def materialize_leading(graph_path: str | Path, responses: str | Path | None, feature: str, seed: int,
                        cfg: LeadingMethod, lake_root: str | Path) -> dict:
    """One (feature, seed) LEADING run unless in the lake: ``predictions.parquet`` (the
    implicit layer's logits), the LM embeddings as a feature (``read_feature`` reads the
    artifact), and a manifest with the summary and the per-epoch history.

    Returns:
        the summary dict (``method``, ``model``, ``variant`` = feature, ``seed``, ``val_acc``,
        ``test_acc``, ``best_epoch``, ``seconds``, ``path``), the same for a lake hit and a
        fresh run.
    """
    import torch

    from tag_pipeline.datasets import check_split, open_graph
    from tag_pipeline.features.stage import feature_texts
    from tag_pipeline.features.store import write_feature
    from tag_pipeline.hardware import torch_threads
    from tag_pipeline.train import accuracy, predictions_frame

    graph_path = Path(graph_path)
    path = leading_path(graph_path, responses, feature, seed, cfg, lake_root)

    def build() -> lake.Built:
        graph = open_graph(graph_path)
        split = graph.splits[seed]
        check_split(split, seed, graph.name, graph.num_nodes)
        texts = feature_texts(graph_path, Path(responses) if responses else None, feature, cfg.e_text)
        with torch_threads(cfg.threads):
            out = train_leading(texts, graph.labels, graph.edge_index, split, graph.num_classes, cfg, seed=seed,
                                progress=True)
        y = torch.from_numpy(graph.labels)
        row = {"method": "leading", "model": cfg.head, "variant": feature, "feature": feature, "seed": seed,
               "val_acc": out["val_acc"], "test_acc": accuracy(out["logits"], y, torch.from_numpy(split.test)),
               "best_epoch": out["best_epoch"], "seconds": out["seconds"], "cache_refreshes": out["cache_refreshes"]}
        inputs = {"graph": str(graph_path), **({"responses": str(responses)} if responses and feature == "E" else {})}

        def write(tmp: Path) -> None:
            predictions_frame(out["logits"], y, split).write_parquet(tmp / "predictions.parquet")
            write_feature(tmp, out["x"], feature=feature, source=f"leading:{cfg.model}")

        return lake.Built(write=write, config=cfg.key_fields(), inputs=inputs, rows=graph.num_nodes,
                          extra={"summary": row, "history": out["history"]})

    return LEADING_STAGE.materialize(path, build, read=_summary)
