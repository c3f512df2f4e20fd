"""GALLON on text-attributed graphs: distil a GNN teacher and an LM teacher into a graph-free MLP.

GALLON (Xu et al., "LLM and GNN are Complementary: Distilling LLM for Multimodal Graph
Learning", arXiv 2406.01032, Sec. 3) trains a GNN teacher and an LLM-informed LM teacher and
distils both into an MLP student that needs no edges at inference. The paper works on
molecule graphs; on a TAG the same design is (issue 13):

* **GNN teacher**: h_TAPE of one GNN (TAPE's per-feature GNNs with their logits averaged,
  He et al. 2024, Sec. 4.4); ``teacher="best"`` takes, per seed, the model whose h_TAPE has
  the best *validation* accuracy.
* **LM teacher**: the LM that read the title + abstract and the LLM's explanation, here the
  sentence encoder's TA and E embeddings (frozen; fine-tuned when the run has only fine-tuned
  features), concatenated, with a linear head trained on the seed's train nodes (the issue allows frozen + linear head; fine-tuned LM logits are not
  stored in the lake).
* **Student**: an MLP over the node's own features (default: its TA embedding only, so that
  a new paper is classified from its text, with no LLM call and no graph).

The loss (GLNN, Zhang et al., ICLR 2022, Eq. 1, extended to two teachers as in GALLON's
``trainDistill_class.py``) is

    L = CE(y_train, p_S) + alpha * T^2 * KL(p_GNN^T || p_S^T) + beta * T^2 * KL(p_LM^T || p_S^T)
        [+ gamma * (MSE(U h_S, h_GNN) + MSE(h_S, W e_LM))]

with the KL terms over *all* nodes (GLNN: the teacher's soft labels on unlabelled nodes are
the point of distillation), ``p^T`` the softmax at temperature ``T``, and the ``T^2`` factor
of Hinton et al. (2015) so that the soft terms' gradients do not shrink as ``T`` grows (GLNN
and GALLON leave it implicit). The optional last term is GALLON's representation alignment
(Sec. 3.3): ``h_S`` the student's last hidden layer, ``h_GNN`` the last hidden layer of the
teacher's member on TA (h_TAPE's members are trained apart: their hidden spaces are not
aligned, so they are not averaged), ``e_LM`` the LM teacher's input embedding, ``U`` and ``W``
learnt linear maps (``U`` only maps ``h_S`` to the GNN's width; both are left out of the
student at inference).

alpha, beta, T and gamma are chosen per seed on validation accuracy from the config's grids
(test accuracy is computed once, for the chosen student). The plain MLP baseline is the same
student architecture and training with CE only.
"""

from tag_pipeline.methods.gallon.config import GallonMethod as GallonMethod
