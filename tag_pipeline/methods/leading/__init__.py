"""LEADING: end-to-end LM + GNN fine-tuning at close to the cost of fine-tuning the LM alone.

Xue et al., "Efficient End-to-end Language Model Fine-tuning on Graphs", arXiv 2312.04737
(KDD 2025). No public code exists; this module follows the paper's two ideas as issue 14
states them, and says where a detail is our choice:

* **Neighbour decoupling** (Sec. 4): in a mini-batch only the target (train) nodes are
  encoded with gradients; every other node's embedding comes from :class:`NeighbourCache`,
  written by a no-gradient pass over all nodes and refreshed every ``refresh_every`` epochs
  (default 1). So no node is encoded with gradients more than once per epoch. The same
  no-gradient pass scores the epoch on validation (our choice: one pass serves both).
* **Implicit graph modelling** (Sec. 5): one implicit propagation layer instead of stacked
  GNN layers, the APPNP-style fixed point ``Z = (1 - a) A_hat Z + a f(H)`` (Gasteiger et al.,
  ICLR 2019, Eq. 7 at its limit) with ``A_hat`` GCN's normalised adjacency with self-loops
  and ``f`` a linear head on the LM embeddings ``H``. :class:`ImplicitPropagation` solves it
  by ``iters`` iterations warm-started from the previous step's ``Z``, and differentiates it
  implicitly: the adjoint ``G = (1 - a) A_hat^T G + dL/dZ`` is iterated ``iters`` times from
  ``dL/dZ`` and ``dL/df = a G`` (no unrolled graph is stored). Both are approximate: after
  ``k`` iterations the error shrinks by about ``(1 - a)^k`` (0.35 at a = 0.1, k = 10 for the
  cold-started adjoint, a few percent of the gradient); with ``iters`` large both match the
  direct solve (tested). Warm-starting the adjoint too is an open improvement. ``head="gcn"`` or ``"sage"`` (two PyG layers) are kept for
  comparison.

Labels: the loss reads only the seed's train nodes (label smoothing as TAPE's fine-tuning);
the epoch is chosen on validation accuracy. Outputs per (feature, seed): the LM embeddings
(a feature artifact the GNNs can read) and the logits, in the lake.
"""

from tag_pipeline.methods.leading.config import LeadingMethod as LeadingMethod
