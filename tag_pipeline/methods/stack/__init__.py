"""Stack: one predictor from several methods' predictors, chosen on validation.

The leaderboard holds TAPE's GNNs, GALLON's student, GLEM, LEADING and Dr.E on the same
splits; none of TAPE, GALLON or the other reference projects combines them. The stack does,
with Caruana et al.'s ensemble selection (ICML 2004, Sec. 2): start from the empty ensemble,
add (with replacement) the candidate whose addition gives the best validation accuracy (ties:
lower validation negative log-likelihood, then the earlier candidate), repeat ``rounds``
times, keep the prefix best on validation. The prediction is the average of the chosen
candidates' class probabilities (softmax of their stored logits), i.e. a weighted average
whose weights are the selection counts.

Only validation nodes are read to fit (their labels and the candidates' outputs on them);
train nodes are left out because every member fit them, test nodes because they are the
test. The stack's own validation accuracy is therefore optimistic (it was fit there); its
test accuracy is not.

Modules: :mod:`~tag_pipeline.methods.stack.config` (the config) and
:mod:`~tag_pipeline.methods.stack.stage` (the selection and the lake stage).
"""

from tag_pipeline.methods.stack.config import StackMethod

__all__ = ["StackMethod"]
