"""Dr.E: a GNN's multi-hop views, quantised into the decoder's own words, read by a LoRA-tuned LM.

Dr.E (Liu et al., "Multi-view Empowered Structural Graph Wordification for Language Models",
AAAI 2025, arXiv 2406.15504) is an RQ-VAE whose encoder is a GNN and whose decoder is an LLM;
the codebook is the LLM's own frozen token-embedding table, so each node becomes a few real
words of the LLM's vocabulary (Cora 60/20/20: 0.9132 with Llama-2-7B). Our own code, from the
paper's description:

* **Multi-view encoder (Sec. 4.1)**: ``views`` PyG ``SAGEConv`` layers over the node's frozen
  MiniLM title+abstract embedding (the TA feature TAPE's stage writes); layer ``t``'s output
  ``h_t`` (``[N, d]``, ``d`` = the decoder's embedding width) is the node's ``t``-hop view.
* **Dual-level residual quantisation (Sec. 4.2)**: intra-layer, each view is quantised into
  ``codes_per_view`` (K) codes, each the codebook row most cosine-similar to what the earlier
  codes left over (residual VQ); inter-layer, layer ``t+1`` reads ``h_t`` plus the quantised
  view ``q_t`` (the codes' reconstruction of ``h_t``). Straight-through gradients carry the LM's
  loss back into the GNN through the chosen codes (``code + r - sg(r)``).
* **Auxiliary losses (Sec. 4.2, Fig. 2)**: commitment (VQ-VAE's ``||h - sg(q)||^2``), feature
  reconstruction (a linear map of the quantised views back to the input feature, MSE), label
  prediction (a linear classifier on the quantised views, cross-entropy on train nodes only),
  adjacency reconstruction (cosine of the last quantised views of linked vs. randomly sampled
  unlinked node pairs, BCE). Each has a weight; 0 turns it off.
* **Prompt and decoder (Sec. 4.3)**: the paper's template, "Given a node, you need to classify it
  among <classes>. With the node's 1-hop information being <codes>, 2-hop information being
  <codes>, 3-hop information being <codes>, the node should be classified as:", with the codes'
  embeddings spliced into ``inputs_embeds``; the LM loss is on the label tokens only; LoRA
  (``peft``) on the decoder's ``q_proj``/``v_proj``; GNN, auxiliary heads and LoRA are trained
  jointly, the decoder's own weights (token embeddings included) stay frozen.

Choices where the paper is silent or where a CPU forces them (all fields of :class:`DreMethod`):

* **Codebook**: the token ids whose decoded text, stripped of spaces, is ASCII letters only
  and at least ``min_word_length`` (3) characters long, special tokens excluded, the first
  ``codebook_size`` of them by id (``None``: all; SmolLM2's BPE ids roughly follow merge
  frequency); by default (``word_initial``) only tokens that start a word (decoded text begins
  with a space), so suffixes such as ``ing`` are not codes. SmolLM2-135M: 30,570 such words of
  49,152 tokens; Gemma-3-270M: 84,790 of 262,144.
* **Residual update**: the paper subtracts the chosen code; with cosine selection the code's norm
  is not the residual's, so subtracting it can *grow* the residual. By default
  (``residual="projection"``) the residual loses its projection on the chosen code
  (``r <- r - (r.c^) c^``, matching pursuit over the normalised codebook): its norm never grows
  and the reconstruction ``q = sum_k (r_k.c^_k) c^_k`` is differentiable in ``h``.
  ``residual="code"`` is the literal update (``r <- r - c``, ``q = sum_k c_k`` with a
  straight-through estimator).
* **Prediction**: constrained to the class names: for every class the summed log-likelihood of
  its tokens (``" " + name`` with ``_`` as spaces, then EOS) after the prompt, argmax over
  classes (the prompt is run once, the classes share its KV cache); so the answer is always a
  class. ``class_score="mean"`` divides by the token count.
* **Zero-shot baseline** (``zero_shot``): the same decoder, no graph tokens, no LoRA, prompted
  with the node's text cut to ``max_text_tokens`` tokens and the classes, same constrained
  scoring. No chat template for either prompt (the paper feeds raw prompts to a base Llama-2).
* **Inter-layer residual**: layer ``t+1`` reads ``dropout(gelu(h_t + q_t))``; the activation
  and dropout are ours.
* **Input features**: the frozen MiniLM TA embedding (``[N, 384]`` float32), the same for every
  method of this project (the paper's released code reads its own precomputed node embeddings).
* **Weights and rates**: commitment 0.25 (VQ-VAE's beta), feature / label / adjacency 0.1 each,
  AdamW at ``lr`` 2e-4 (LoRA) and ``gnn_lr`` 1e-3 (GNN and heads), LoRA r 8, alpha 16, dropout
  0.05: ours, not tuned; the training loss is ``LM + sum of the weighted auxiliary losses``.
* **Commitment in cosine space** (``commitment="cosine"``, off by default): the codes are chosen
  by cosine, so only ``h``'s direction picks them, but VQ-VAE's MSE grows with ``h``'s norm: on
  Cora (seed 0, 1 epoch) the weighted MSE term averaged 17.5 against an LM loss of 0.70, so its
  gradient swamps the LM's in the GNN. ``1 - cos(h, sg(q))`` is scale-free, and measured on
  validation it is much worse (Cora seed 0, 1 epoch: val 0.3487 against 0.7841): nothing
  bounds ``h``'s norm any more, the projection coefficients grow with it, and the feature and
  label losses rise to 55.7 and 2.80 (0.13 and 0.13 with MSE). So MSE stays the default; the
  option is kept for larger decoders and longer runs.
* **Scale**: ``epochs`` 1 and a 135M decoder by default (the paper: 20 epochs, batch 4,
  Llama-2-7B); each training step runs the GNN on the batch's ``views``-hop subgraph
  (``k_hop_subgraph``); only validation and test nodes are scored, after every epoch, and the
  epoch with the best validation accuracy is kept (the paper is silent on model selection).

Costs on this 2-core CPU are printed by ``bench/dre_cora.py``.
"""

from tag_pipeline.methods.dre.config import DreMethod as DreMethod
