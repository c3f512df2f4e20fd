"""Probe: does PyG's own GLEM (``torch_geometric.llm.models.GLEM``, PyG 2.8.1) run offline here?

GLEM: Zhao et al., "Learning on Large-scale Text-attributed Graphs via Variational Inference",
ICLR 2023 (https://arxiv.org/abs/2210.14709). An LM and a GNN are trained in turn (variational
EM), each on the gold labels plus the other's pseudo labels.

Runs one EM round on a 300-node Cora slice on CPU (2 threads) with the local all-MiniLM-L6-v2:
LM pretrain on gold -> GNN M-step (gold + LM pseudo labels) -> LM E-step (gold + GNN pseudo
labels), printing wall time per phase and val/test accuracy after each.

Deviations from PyG's example (examples/llm/glem.py), all without monkeypatching:
- no ``peft`` in the venv -> ``lm_use_lora=False`` (full fine-tuning), ``lm_dtype=float32``;
- no pyg-lib/torch-sparse -> ``NeighborLoader`` cannot sample;
  :class:`tag_pipeline.methods.glem.FullBatchLoader` yields the whole graph as one "batch" with the seed nodes relabelled first, which is all
  ``GLEM.train_gnn``/``inference_gnn`` read (``x, edge_index, y, is_gold, n_id, batch_size``);
- the text dataset is a plain ``Dataset`` of pre-tokenised tensors instead of ``TAGDataset``
  (same item layout: ``input``, ``labels``, ``is_gold``, ``n_id``);
- GNN node features are mean-pooled hidden states of the pretrained LM (as in the paper).

Usage: ``timeout 900 .venv/bin/python bench/glem_probe.py [--subset 300] [--seed 0]``
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset, Subset  # noqa: E402
from torch_geometric.data import Data  # noqa: E402
from torch_geometric.llm.models import GLEM  # noqa: E402
from torch_geometric.nn.models import GraphSAGE  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from tag_pipeline.config import DatasetConfig  # noqa: E402
from tag_pipeline.datasets import load_dataset  # noqa: E402
from tag_pipeline.features.text import resolve_model_path  # noqa: E402
from tag_pipeline.methods.glem import FullBatchLoader  # noqa: E402


class TextNodes(Dataset):
    """Tokenised node texts in the item layout GLEM.train_lm/inference_lm read."""

    def __init__(self, enc: dict, labels: torch.Tensor, is_gold: torch.Tensor):
        self.enc, self.labels, self.is_gold = enc, labels, is_gold

    def __len__(self):
        return self.labels.numel()

    def __getitem__(self, i):
        return {"input": {k: v[i] for k, v in self.enc.items()}, "labels": self.labels[i],
                "is_gold": self.is_gold[i], "n_id": torch.as_tensor(i)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="../shared/data", help="folder of the raw datasets")
    ap.add_argument("--subset", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lm-epochs", type=int, default=1)
    ap.add_argument("--gnn-epochs", type=int, default=50)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--lm-lr", type=float, default=5e-5)
    ap.add_argument("--pl-ratio", type=float, default=0.5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    g = load_dataset(DatasetConfig(name="cora", root=args.root, subset=args.subset),
                     [args.seed])
    split = g.splits[0]
    n = len(g.text)
    y_true = torch.as_tensor(g.labels)
    gold = torch.as_tensor(split.train, dtype=torch.long)
    val, test = (torch.as_tensor(s, dtype=torch.long) for s in (split.val, split.test))
    # pseudo-labelled nodes: a random pl_ratio * |gold| of the test nodes, as PyG's example does
    pl_nodes = test[torch.randperm(test.numel())[: int(gold.numel() * args.pl_ratio)]]
    train_idx = torch.cat([gold, pl_nodes])
    is_gold = torch.zeros(n, dtype=torch.bool)
    is_gold[gold] = True
    y = torch.where(is_gold, y_true, torch.zeros_like(y_true))  # no label of a non-gold node
    path = resolve_model_path("all-MiniLM-L6-v2")
    tok = AutoTokenizer.from_pretrained(path)
    enc = dict(tok(list(g.text), padding="longest", truncation=True,
                   max_length=args.max_length, return_tensors="pt"))
    texts = TextNodes(enc, y, is_gold)
    lm_bs = 16
    lm_pretrain_loader = DataLoader(Subset(texts, gold), batch_size=lm_bs, shuffle=True)
    lm_train_loader = DataLoader(Subset(texts, train_idx), batch_size=lm_bs, shuffle=True)
    lm_all_loader = DataLoader(texts, batch_size=4 * lm_bs)
    times["data+tokenise"] = time.perf_counter() - t0
    print(f"nodes={n} edges={g.edge_index.shape[1]} classes={g.num_classes} gold={gold.numel()} "
          f"pseudo={pl_nodes.numel()} val={val.numel()} test={test.numel()} "
          f"seq_len={enc['input_ids'].shape[1]}")

    def acc(logits: torch.Tensor) -> str:
        pred = logits.argmax(-1)
        return " ".join(f"{k}={(pred[i] == y_true[i]).float().mean():.3f}"
                        for k, i in (("train", gold), ("val", val), ("test", test)))

    t0 = time.perf_counter()
    gnn = GraphSAGE(in_channels=384, hidden_channels=128, num_layers=2,
                    out_channels=g.num_classes, dropout=0.5)
    model = GLEM(lm_to_use=path, gnn_to_use=gnn, out_channels=g.num_classes,
                 lm_dtype=torch.float32, lm_use_lora=False, device="cpu")
    times["build"] = time.perf_counter() - t0

    # -- pretrain LM on gold labels (is_augmented=False) --------------------------------------
    t0 = time.perf_counter()
    lm_opt = torch.optim.Adam(model.lm.parameters(), lr=args.lm_lr)
    for ep in range(1, args.lm_epochs + 1):
        model.train("lm", lm_pretrain_loader, lm_opt, None, ep, False, False)
    lm_logits = model.inference("lm", lm_all_loader)
    times["lm_pretrain"] = time.perf_counter() - t0
    print(f"[lm pretrain] {acc(lm_logits)}  ({times['lm_pretrain']:.1f}s)")

    # GNN features: mean-pooled last hidden states of the (pretrained) LM
    t0 = time.perf_counter()
    with torch.no_grad():
        base = model.lm.base_model.eval()
        feats = []
        for b in lm_all_loader:
            h = base(**b["input"]).last_hidden_state
            m = b["input"]["attention_mask"].unsqueeze(-1).float()
            feats.append((h * m).sum(1) / m.sum(1))
    data = Data(x=torch.cat(feats), edge_index=torch.as_tensor(g.edge_index, dtype=torch.long),
                y=y, is_gold=is_gold)
    gnn_train_loader = FullBatchLoader(data, train_idx)
    gnn_all_loader = FullBatchLoader(data, torch.arange(n))
    times["lm_embed"] = time.perf_counter() - t0

    # -- M-step: GNN on gold + LM pseudo labels ----------------------------------------------
    t0 = time.perf_counter()
    gnn_opt = torch.optim.Adam(model.gnn.parameters(), lr=1e-2, weight_decay=5e-4)
    pseudo = lm_logits.argmax(-1)
    for ep in range(1, args.gnn_epochs + 1):
        model.train("gnn", gnn_train_loader, gnn_opt, pseudo, ep, True, False)
    gnn_logits = model.inference("gnn", gnn_all_loader)
    times["gnn_mstep"] = time.perf_counter() - t0
    print(f"[gnn M-step] {acc(gnn_logits)}  ({times['gnn_mstep']:.1f}s)")

    # -- E-step: LM on gold + GNN pseudo labels ----------------------------------------------
    t0 = time.perf_counter()
    pseudo = gnn_logits.argmax(-1)
    for ep in range(1, args.lm_epochs + 1):
        model.train("lm", lm_train_loader, lm_opt, pseudo, ep, True, False)
    lm_logits = model.inference("lm", lm_all_loader)
    times["lm_estep"] = time.perf_counter() - t0
    print(f"[lm E-step] {acc(lm_logits)}  ({times['lm_estep']:.1f}s)")

    print("times: " + ", ".join(f"{k}={v:.1f}s" for k, v in times.items())
          + f", total={sum(times.values()):.1f}s")


if __name__ == "__main__":
    main()
