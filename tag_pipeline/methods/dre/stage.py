"""Dr.E's lake stage: one seed's run at ``<lake>/<dataset>/dre/s<seed>-<key>``, its key and files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tag_pipeline import lake
from tag_pipeline.methods.dre.config import (
    CPU_FP32 as CPU_FP32,  # re-exported: the default numerics path
)
from tag_pipeline.methods.dre.config import DreMethod
from tag_pipeline.methods.dre.fit import DreResult, run_dre

#: 2: commit db57baa changed what a run computes with the version left at 1: the adjacency
#: loss's negative pairs are drawn by :func:`negative_edges` from the run's own generator (v1:
#: PyG's ``negative_sampling`` on Python's global random state), so v1 artifacts hold other
#: (and not reproducible) trained weights. The same bump takes ``device`` and ``dtype`` out of
#: the key in favour of the resolved numerics path (:meth:`DreMethod.numerics`).
DRE_STAGE_VERSION = 2
#: One seed's Dr.E run: ``<lake>/<dataset>/dre/s<seed>-<key>``.
DRE_STAGE = lake.Stage(
    "dre",
    DRE_STAGE_VERSION,
    code=(
        "tag_pipeline.methods.dre",  # its package: config (validators, key_fields, the resolved numerics path), codebook, quantisation, encoder, losses, prompt, scoring, training
        "tag_pipeline.models.decoder",  # how the decoder's weights are loaded (GGUF de-quantised to the dtype)
        "tag_pipeline.train",  # accuracy (the epoch chosen on validation)
    ),
)
TOKENS_FILE = "tokens.parquet"
PREDICTIONS_FILE = "predictions.parquet"
ZERO_SHOT_FILE = "zero_shot_predictions.parquet"
WEIGHTS_FILE = "trained.safetensors"

# --------------------------------------------------------------------------- lake


def dre_path(graph_path: str | Path, feature_path: str | Path, seed: int, cfg: DreMethod, lake_root: str | Path) -> Path:
    """Lake path of one seed's Dr.E run: ``<lake>/<dataset>/dre/s<seed>-<key>``; the key hashes
    the stage version, the graph's content and split, the TA feature artifact's name (its own
    lineage), the seed, the config (:meth:`DreMethod.key_fields`: less execution fields, plus
    the numerics path when it is not the CPU in float32) and the decoder's weight file digest.

    Raises:
        tag_pipeline.models.decoder.DecoderNotFoundError: the decoder is missing.
    """
    from tag_pipeline.datasets import graph_content_key, split_key
    from tag_pipeline.models.decoder import decoder_digest

    graph_path = Path(graph_path)
    key = DRE_STAGE.key(f"{graph_content_key(graph_path)}-{split_key(graph_path, seed)}",
                        Path(feature_path).name, seed, cfg.key_fields(), decoder_digest(cfg.decoder))
    return DRE_STAGE.path(lake_root, lake.dataset_of(graph_path), key, prefix=f"s{seed}-")


def decoder_numerics(decoder) -> dict[str, str]:
    """``{"device", "dtype"}`` of a loaded decoder's weights (its input embedding's), in the
    form of :meth:`DreMethod.numerics`."""
    w = decoder.get_input_embeddings().weight
    return {"device": w.device.type, "dtype": str(w.dtype).removeprefix("torch.")}


def tokens_frame(result: DreResult, tokenizer, split, num_nodes: int):
    """The chosen words per node, for a person to read: ``node_id``, ``split``, and per view
    ``t`` ``hop<t>`` (list of decoded strings) and ``hop<t>_ids`` (list of int64 token ids).
    For the continuous ablation the words are each token's nearest codebook word."""
    import numpy as np
    import polars as pl

    part = np.full(num_nodes, "", dtype=object)
    for name in ("train", "val", "test"):
        part[split.part(name)] = name
    ids = result.nearest.numpy()
    decoded = {int(i): tokenizer.decode([int(i)]).strip() for i in np.unique(ids)}
    cols: dict[str, Any] = {"node_id": np.arange(num_nodes, dtype=np.int64), "split": part.tolist()}
    for t in range(ids.shape[1]):
        cols[f"hop{t + 1}"] = [[decoded[int(i)] for i in row] for row in ids[:, t]]
        cols[f"hop{t + 1}_ids"] = [row.astype(np.int64).tolist() for row in ids[:, t]]
    return pl.DataFrame(cols)


def scores_frame(nodes, scores, labels, split):
    """Per scored node: ``node_id``, ``split``, ``label``, ``pred`` (argmax class), ``logits``
    (``[C]`` float32 class log-likelihoods, nats). Train nodes are not scored."""
    import numpy as np
    import polars as pl

    nodes = np.asarray(nodes, dtype=np.int64)
    part = np.full(len(labels), "", dtype=object)
    for name in ("train", "val", "test"):
        part[split.part(name)] = name
    return pl.DataFrame({"node_id": nodes, "split": part[nodes].tolist(), "label": np.asarray(labels)[nodes],
                         "pred": scores.argmax(-1).numpy().astype(np.int64), "logits": scores.float().numpy()})


def materialize_dre(graph_path: str | Path, feature_path: str | Path, seed: int, cfg: DreMethod,
                    lake_root: str | Path, decoder=None, tokenizer=None,
                    log: Callable[[str], None] | None = None) -> list[dict]:
    """One seed's Dr.E run unless in the lake.

    Writes ``<lake>/<dataset>/dre/s<seed>-<key>`` (:func:`dre_path`) with ``predictions.parquet``
    (Dr.E's class log-likelihoods on val/test nodes), ``zero_shot_predictions.parquet`` (when
    ``cfg.zero_shot``), ``tokens.parquet`` (:func:`tokens_frame`: every node's words per view),
    ``trained.safetensors`` (GNN, heads, LoRA) and a manifest whose ``summaries`` hold the
    ``dre`` (model ``llm``) and ``zero-shot`` (model ``llm-zero-shot``) variants, and whose
    ``seconds`` hold the epoch, encode and scoring wall times (``steps_per_epoch`` the steps).

    Args:
        graph_path: the graph artifact.
        feature_path: the frozen TA feature artifact (``[N, 384]`` MiniLM embeddings).
        seed: split and training seed.
        cfg: the method's config.
        lake_root: root of the lake.
        decoder, tokenizer: an already loaded decoder (tests); default: load ``cfg.decoder`` in
            ``cfg``'s resolved device and dtype. A passed decoder must be on that device type
            and in that dtype: the key says which numerics computed the run.
        log: progress lines.

    Returns:
        summary dicts (``method``, ``model``, ``variant``, ``seed``, ``val_acc``, ``test_acc``, ``path``),
        the same for a lake hit and a fresh run.

    Raises:
        ValueError: the dataset has no text, an empty split, a passed decoder whose device type
            or dtype is not ``cfg``'s (:meth:`DreMethod.numerics`).
        tag_pipeline.models.decoder.DecoderNotFoundError: the decoder is missing.
    """
    import torch
    from safetensors.torch import save_file

    from tag_pipeline.datasets import check_split, open_graph
    from tag_pipeline.features.store import read_feature
    from tag_pipeline.hardware import torch_threads

    graph_path = Path(graph_path)
    numerics = cfg.numerics()
    if decoder is not None and decoder_numerics(decoder) != numerics:
        raise ValueError(f"Dr.E: the passed decoder runs {decoder_numerics(decoder)}, the config {numerics} "
                         f"(device={cfg.device!r}, dtype={cfg.dtype!r}); the run's key must say its numerics")
    path = dre_path(graph_path, feature_path, seed, cfg, lake_root)

    def summaries(p: Path) -> list[dict]:
        return [dict(s, path=str(p)) for s in lake.read_artifact(p, verify=False).manifest["summaries"]]

    def build() -> lake.Built:
        nonlocal decoder, tokenizer
        graph = open_graph(graph_path)
        split = graph.splits[seed]
        check_split(split, seed, graph.name, graph.num_nodes)
        x = read_feature(Path(feature_path), graph.num_nodes).float()
        load_s = None
        if decoder is None:
            from tag_pipeline.models.decoder import load_decoder

            start = time.perf_counter()
            decoder, tokenizer = load_decoder(cfg.decoder, cfg.torch_dtype())
            decoder.to(cfg.torch_device())
            load_s = time.perf_counter() - start
        with torch_threads(cfg.threads):
            res = run_dre(x, graph.edge_index, graph.labels, split, graph.class_names, cfg, seed=seed,
                          texts=graph.text, decoder=decoder, tokenizer=tokenizer, log=log)
        res.seconds["load"] = load_s or 0.0
        y = torch.from_numpy(graph.labels)
        nodes = res.scored
        n_val = len(split.val)

        def acc(scores, part) -> float:
            sl = slice(0, n_val) if part == "val" else slice(n_val, None)
            s, idx = scores[sl], nodes[sl]
            return float((s.argmax(-1) == y[idx]).float().mean()) if idx.numel() else float("nan")

        def row(variant: str, model: str, scores) -> dict:
            return {"method": "dre", "model": model, "variant": variant, "feature": variant, "seed": seed,
                    "val_acc": acc(scores, "val"), "test_acc": acc(scores, "test")}

        rows = [row("dre", "llm", res.scores)]
        if res.zero_shot is not None:
            rows.append(row("zero-shot", "llm-zero-shot", res.zero_shot))
        usage = None
        if res.ids is not None:
            usage = {"distinct_codes": int(res.ids.unique().numel()), "codes": int(res.ids.numel())}
        extra = {"summaries": rows, "seconds": res.seconds, "steps_per_epoch": res.steps, "losses": res.losses,
                 "history": res.history, "best_epoch": res.best_epoch,
                 "codebook_usage": usage, "numerics": numerics,
                 "tokens": "chosen codes" if cfg.quantise else "nearest words of continuous tokens"}

        def write(tmp: Path) -> None:
            scores_frame(nodes, res.scores, graph.labels, split).write_parquet(tmp / PREDICTIONS_FILE)
            if res.zero_shot is not None:
                scores_frame(nodes, res.zero_shot, graph.labels, split).write_parquet(tmp / ZERO_SHOT_FILE)
            tokens_frame(res, tokenizer, split, graph.num_nodes).write_parquet(tmp / TOKENS_FILE)
            save_file(res.trainable, str(tmp / WEIGHTS_FILE))

        return lake.Built(write=write, config=cfg.key_fields(), inputs={"graph": str(graph_path), "TA": str(feature_path)},
                          rows=graph.num_nodes, extra=extra)

    return DRE_STAGE.materialize(path, build, read=summaries)
