"""GLEM's lake stage: one seed's run at ``<lake>/<dataset>/glem/s<seed>-<key>``.
"""

from __future__ import annotations

from pathlib import Path

from tag_pipeline import lake
from tag_pipeline.methods.glem.config import GlemMethod
from tag_pipeline.methods.glem.model import run_glem

GLEM_STAGE_VERSION = 1
#: One seed's GLEM run: ``<lake>/<dataset>/glem/s<seed>-<key>``.
GLEM_STAGE = lake.Stage(
    "glem",
    GLEM_STAGE_VERSION,
    code=(
        "tag_pipeline.methods.glem",  # its package: config (validators, key_fields), the EM loop, loaders, pseudo-node draw, LM embedding, choice on validation
        "tag_pipeline.train",  # accuracy (the LM-or-GNN choice), predictions_frame
    ),
)
def glem_path(graph_path: str | Path, seed: int, cfg: GlemMethod, lake_root: str | Path) -> Path:
    """Lake path of one seed's GLEM run: its key hashes the graph's content and split, the
    seed, the config (:meth:`GlemMethod.key_fields`: less ``threads``) and the LM's weight files."""
    from tag_pipeline.datasets import graph_content_key, split_key
    from tag_pipeline.features.text import model_digest

    graph_path = Path(graph_path)
    key = GLEM_STAGE.key(f"{graph_content_key(graph_path)}-{split_key(graph_path, seed)}",
                         seed, cfg.key_fields(), model_digest(cfg.lm))
    return GLEM_STAGE.path(lake_root, lake.dataset_of(graph_path), key, prefix=f"s{seed}-")


def _summaries(path: Path) -> list[dict]:
    """The committed run's summaries, each with its ``path``: what a lake hit and a build both return."""
    return [dict(s, path=str(path)) for s in lake.read_artifact(path, verify=False).manifest["summaries"]]


def materialize_glem(graph_path: str | Path, seed: int, cfg: GlemMethod, lake_root: str | Path) -> list[dict]:
    """One seed's GLEM run unless in the lake: ``<lake>/<dataset>/glem/s<seed>-<key>`` with
    ``predictions.parquet`` (the predictor chosen on validation), ``lm_predictions.parquet``,
    ``gnn_predictions.parquet`` and a manifest whose ``summaries`` hold the ``lm``, ``gnn``
    and ``glem`` (chosen) variants.

    Returns:
        the three summary dicts, each with the artifact's ``path`` (the same for a lake hit
        and a fresh run).

    Raises:
        ValueError: the dataset has no text, or an empty split.
    """
    import torch

    from tag_pipeline.datasets import check_split, open_graph
    from tag_pipeline.hardware import torch_threads
    from tag_pipeline.train import accuracy, predictions_frame

    graph_path = Path(graph_path)
    path = glem_path(graph_path, seed, cfg, lake_root)

    def build() -> lake.Built:
        graph = open_graph(graph_path)
        if graph.text is None:
            raise ValueError(f"{graph_path}: dataset {graph.name!r} has no node text; GLEM needs it")
        split = graph.splits[seed]
        check_split(split, seed, graph.name, graph.num_nodes)
        with torch_threads(cfg.threads):
            out = run_glem(graph.text, graph.labels, graph.edge_index, split, graph.num_classes, cfg, seed=seed)
        y = torch.from_numpy(graph.labels)
        idx = {p: torch.from_numpy(getattr(split, p)) for p in ("val", "test")}

        def row(variant: str, model: str, logits) -> dict:
            return {"method": "glem", "model": model, "variant": variant, "feature": variant, "seed": seed,
                    "val_acc": accuracy(logits, y, idx["val"]), "test_acc": accuracy(logits, y, idx["test"])}

        rows = [row("lm", "lm", out["lm_logits"]), row("gnn", "sage", out["gnn_logits"])]
        chosen = max(rows, key=lambda r: r["val_acc"])  # the LM on ties: listed first
        final = out["lm_logits"] if chosen["variant"] == "lm" else out["gnn_logits"]
        rows.append(row("glem", chosen["model"], final) | {"chosen": chosen["variant"]})

        def write(tmp: Path) -> None:
            predictions_frame(final, y, split).write_parquet(tmp / "predictions.parquet")
            predictions_frame(out["lm_logits"], y, split).write_parquet(tmp / "lm_predictions.parquet")
            predictions_frame(out["gnn_logits"], y, split).write_parquet(tmp / "gnn_predictions.parquet")

        return lake.Built(write=write, config=cfg.key_fields(), inputs={"graph": str(graph_path)},
                          rows=graph.num_nodes, extra={"summaries": rows, "seconds": out["seconds"]})

    return GLEM_STAGE.materialize(path, build, read=_summaries)
