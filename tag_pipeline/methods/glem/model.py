"""GLEM's EM co-training of an LM and a GNN through PyG's ``GLEM`` (one seed), on node text only.
"""

from __future__ import annotations

import time

from tag_pipeline.methods.glem.config import GlemMethod

#: GLEM's numerics: PyG's GLEM gets ``device`` and ``lm_dtype`` from here, fixed to the CPU in
#: float32 (the default path of every stage: no numerics part in the key). A device or dtype
#: field, if one is ever added, must enter the key when it is not this path (as Dr.E's does).
GLEM_DEVICE = "cpu"
GLEM_LM_DTYPE = "float32"


class FullBatchLoader:
    """Stands in for PyG's ``NeighborLoader`` (which needs pyg-lib): one batch, the whole
    graph, the seed nodes first (``batch_size`` of them), as ``GLEM.train_gnn`` and
    ``inference_gnn`` read it (``x``, ``edge_index``, ``y``, ``is_gold``, ``n_id``)."""

    def __init__(self, data, input_nodes):
        import torch
        from torch_geometric.data import Data

        self.input_nodes = input_nodes
        rest = torch.ones(data.num_nodes, dtype=torch.bool)
        rest[input_nodes] = False
        perm = torch.cat([input_nodes, rest.nonzero().view(-1)])
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(perm.numel())
        self.batch = Data(x=data.x[perm], edge_index=inv[data.edge_index], y=data.y[perm],
                          is_gold=data.is_gold[perm], n_id=perm, batch_size=int(input_nodes.numel()))

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        yield self.batch


def run_glem(texts: list[str], labels, edge_index, split, num_classes: int, cfg: GlemMethod, *, seed: int) -> dict:
    """One GLEM run on one split: LM pretraining, then ``em_rounds`` x (M-step, E-step).

    Args:
        texts: ``[N]`` node texts.
        labels: ``[N]`` int64 labels (only the train nodes' are read).
        edge_index: ``[2, E]`` int64.
        split: the seed's split.
        num_classes: C.
        cfg: the method's config.
        seed: seeds torch (weights, pseudo-node draw, batch order).

    Returns:
        dict with ``lm_logits`` and ``gnn_logits`` (``[N, C]`` float32, after the last round),
        ``seconds`` (``{"lm_pretrain", "m_step", "e_step", ...}``, wall seconds).
    """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Dataset, Subset
    from torch_geometric.data import Data
    from torch_geometric.llm.models import GLEM
    from torch_geometric.nn.models import GraphSAGE
    from transformers import AutoConfig, AutoTokenizer

    from tag_pipeline.features.text import resolve_model_path

    torch.manual_seed(seed)
    n = len(texts)
    gold = torch.from_numpy(np.asarray(split.train, dtype=np.int64))
    others = torch.from_numpy(np.setdiff1d(np.arange(n), split.train))
    pseudo_nodes = others[torch.randperm(others.numel())[: int(gold.numel() * cfg.pseudo_ratio)]]
    is_gold = torch.zeros(n, dtype=torch.bool)
    is_gold[gold] = True
    y = torch.where(is_gold, torch.as_tensor(labels, dtype=torch.long), torch.zeros(n, dtype=torch.long))

    class TextNodes(Dataset):
        def __init__(self, enc):
            self.enc = enc

        def __len__(self):
            return n

        def __getitem__(self, i):
            return {"input": {k: v[i] for k, v in self.enc.items()}, "labels": y[i], "is_gold": is_gold[i],
                    "n_id": torch.as_tensor(i)}

    path = resolve_model_path(cfg.lm)
    tok = AutoTokenizer.from_pretrained(path)
    enc = dict(tok(list(texts), padding="longest", truncation=True, max_length=cfg.max_length, return_tensors="pt"))
    texts_ds = TextNodes(enc)
    gen = torch.Generator().manual_seed(seed)
    def train_loader_of(nodes):
        # GLEM squeezes each batch's labels: a last batch of one text would lose its batch
        # dimension, so that one text is dropped from the epoch (a new one each epoch: shuffled)
        bs = cfg.lm_batch_size
        return DataLoader(Subset(texts_ds, nodes), batch_size=bs, shuffle=True, generator=gen,
                          drop_last=nodes.numel() % bs == 1)

    pretrain_loader = train_loader_of(gold)
    train_loader = train_loader_of(torch.cat([gold, pseudo_nodes]))
    all_loader = DataLoader(texts_ds, batch_size=4 * cfg.lm_batch_size)
    gnn = GraphSAGE(in_channels=AutoConfig.from_pretrained(path).hidden_size, hidden_channels=cfg.gnn_hidden, num_layers=cfg.gnn_layers,
                    out_channels=num_classes, dropout=0.5)
    model = GLEM(lm_to_use=path, gnn_to_use=gnn, out_channels=num_classes, alpha=cfg.alpha, beta=cfg.beta,
                 lm_dtype=getattr(torch, GLEM_LM_DTYPE), lm_use_lora=False, device=GLEM_DEVICE)
    lm_opt = torch.optim.Adam(model.lm.parameters(), lr=cfg.lm_lr)
    gnn_opt = None
    seconds: dict[str, float] = {}
    ei = torch.as_tensor(edge_index, dtype=torch.long)

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        return out

    def lm_phase(loader, pseudo, augmented, epoch0):
        for ep in range(cfg.lm_epochs):  # GLEM.train is GLEM's own (phase, loader, ...), not nn.Module.train
            model.train("lm", loader, lm_opt, pseudo, epoch0 + ep, augmented, False)
        return model.inference("lm", all_loader)

    def embed():
        base = model.lm.base_model
        was = base.training
        base.eval()
        feats = []
        with torch.no_grad():
            for b in all_loader:
                h = base(**b["input"]).last_hidden_state
                m = b["input"]["attention_mask"].unsqueeze(-1).float()
                feats.append((h * m).sum(1) / m.sum(1))
        base.train(was)
        return torch.cat(feats)

    lm_logits = timed("lm_pretrain", lambda: lm_phase(pretrain_loader, None, False, 1))
    gnn_logits = None
    for r in range(cfg.em_rounds):
        data = Data(x=timed("lm_embed", embed), edge_index=ei, y=y, is_gold=is_gold)
        train_gnn = FullBatchLoader(data, torch.cat([gold, pseudo_nodes]))
        all_gnn = FullBatchLoader(data, torch.arange(n))
        if gnn_opt is None:
            gnn_opt = torch.optim.Adam(model.gnn.parameters(), lr=1e-2, weight_decay=5e-4)
        pseudo = lm_logits.argmax(-1)

        def m_step():
            for ep in range(1, cfg.gnn_epochs + 1):
                model.train("gnn", train_gnn, gnn_opt, pseudo, ep, True, False)
            return model.inference("gnn", all_gnn)

        gnn_logits = timed("m_step", m_step)
        lm_logits = timed("e_step", lambda: lm_phase(train_loader, gnn_logits.argmax(-1), True, 1 + (r + 1) * cfg.lm_epochs))
    return {"lm_logits": lm_logits.float(), "gnn_logits": gnn_logits.float(), "seconds": seconds}
