"""RevGAT: a deep GAT with grouped reversible residual connections (Li et al., ICML 2021).

TAPE (He et al., ICLR 2024) reports its best ogbn-arxiv accuracy with this model. Built from
PyG's :class:`~torch_geometric.nn.models.GroupAddRev` and :class:`~torch_geometric.nn.GATConv`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GATConv, GroupAddRev

from tag_pipeline.models.base import NodeClassifier


class RevGATBlock(nn.Module):
    """The function ``f`` of one group inside a reversible block: norm -> ReLU -> dropout -> GAT.

    ``f(x) = GAT(m * ReLU(BN(x)))``, where ``m`` is the dropout mask handed in by the caller
    (already scaled by ``1 / (1 - p)``) instead of one sampled here: a reversible block runs
    ``f`` again during the backward pass to rebuild its input, and that recomputation must
    see exactly the mask of the forward pass.

    GAT attention dropout is left at 0 for the same reason: ``GATConv`` would sample it
    anew on every call, so the recomputed ``f`` would differ from the forward one.

    Args:
        channels: size of the group, input and output.
        heads: attention heads; each has ``channels // heads`` channels, concatenated.

    Shapes:
        ``x`` ``[N, channels]`` float, ``edge_index`` ``[2, E]`` int64, optional ``mask``
        ``[N, channels]`` float -> ``[N, channels]`` float.
    """

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(channels)
        self.conv = GATConv(channels, channels // heads, heads=heads, concat=True)

    def reset_parameters(self) -> None:
        """Re-initialise norm and attention weights (``GroupAddRev`` calls this on each copy)."""
        self.norm.reset_parameters()
        self.conv.reset_parameters()

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = F.relu(self.norm(x))
        if mask is not None:
            h = h * mask
        return self.conv(h, edge_index)


class RevGAT(nn.Module):
    """Input projection, a stack of grouped reversible GAT blocks, and an output projection.

    .. math::

        H^{(0)} = X W_{in}, \\qquad H^{(\\ell)} = \\mathrm{Rev}_\\ell(H^{(\\ell-1)}, A),
        \\qquad Y = \\mathrm{Dropout}(\\mathrm{ReLU}(\\mathrm{BN}(H^{(L)}))) W_{out}

    Each :math:`\\mathrm{Rev}_\\ell` (``GroupAddRev``, Li et al. 2021, Sec. 3, grouped
    reversible GNNs) splits the ``hidden`` channels into ``G`` groups
    :math:`X_1, \\ldots, X_G` and computes :math:`X'_0 = \\sum_{i \\ge 2} X_i`,
    :math:`X'_i = X_i + f_i(X'_{i-1}, A)` with :math:`f_i` a :class:`RevGATBlock`. The map is
    invertible, so a block's input is rebuilt from its output during the backward pass and is
    not stored: activation memory does not grow with depth.

    Dropout inside the blocks: one mask ``[N, hidden]`` is sampled per forward pass and shared
    by every block (the paper's shared dropout, Sec. 3; ``GroupAddRev`` gives group ``i`` the
    ``i``-th chunk of it, as it does with every extra argument as wide as the input). The mask
    is an explicit input of the reversible function, so the backward recomputation reuses it
    instead of sampling a new one, and inverting a block is exact.

    Normalisation is ``BatchNorm1d``, as in RevGAT's ogbn-arxiv model that TAPE trains:
    full-batch training normalises over all nodes. Side effect of the recomputation: in train
    mode ``f`` runs three times per step (forward, inverse, gradient), so BatchNorm's running
    statistics are updated three times with (numerically) the same batch statistics, i.e. an
    exponential average with effective momentum ``1 - 0.9**3 = 0.27`` instead of 0.1.
    Gradients are unaffected: they equal those of plain, stored-activation autograd.

    Differences from the RevGAT code released with the paper: the input and output layers are
    linear maps, not GAT layers, and there is no input, edge or attention dropout.

    Args:
        in_channels: input feature size.
        hidden: hidden channels, split into ``num_groups`` groups of ``heads`` heads.
        out_channels: number of output logits.
        num_blocks: reversible blocks (each adds one round of attention per group).
        dropout: dropout probability inside the blocks and before the output layer.
        heads: attention heads per group's ``GATConv``.
        num_groups: groups ``G`` of each reversible block (at least 2).

    Shapes:
        ``x`` ``[N, in_channels]`` float, ``edge_index`` ``[2, E]`` int64 ->
        ``[N, out_channels]`` float.
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int,
        out_channels: int,
        *,
        num_blocks: int,
        dropout: float,
        heads: int,
        num_groups: int,
    ):
        super().__init__()
        self.dropout = dropout
        self.lin_in = nn.Linear(in_channels, hidden)
        self.blocks = nn.ModuleList(
            GroupAddRev(RevGATBlock(hidden // num_groups, heads), num_groups=num_groups) for _ in range(num_blocks)
        )
        self.norm = nn.BatchNorm1d(hidden)
        self.lin_out = nn.Linear(hidden, out_channels)

    def reset_parameters(self) -> None:
        """Re-initialise every learnable parameter."""
        self.lin_in.reset_parameters()
        for block in self.blocks:
            block.reset_parameters()
        self.norm.reset_parameters()
        self.lin_out.reset_parameters()

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        # The first reversible block frees the storage of its input (lin_in's output), which
        # nothing else keeps: Linear's backward needs its input and weight, not its output.
        h = self.lin_in(x)
        extra: tuple[torch.Tensor, ...] = ()
        if self.training and self.dropout > 0:
            keep = 1.0 - self.dropout
            extra = (torch.empty_like(h).bernoulli_(keep).div_(keep),)
        for block in self.blocks:
            h = block(h, edge_index, *extra)
        h = F.dropout(F.relu(self.norm(h)), p=self.dropout, training=self.training)
        return self.lin_out(h)


def build_revgat(
    in_channels: int,
    num_classes: int,
    *,
    hidden: int,
    num_layers: int,
    dropout: float,
    encoder: nn.Module | None = None,
    heads: int = 2,
    num_groups: int = 2,
) -> NodeClassifier:
    """A RevGAT node classifier: ``[N, in_channels]`` -> ``[N, num_classes]`` logits.

    Deep GAT (Velickovic et al., ICLR 2018) whose layers are grouped reversible blocks
    (Li, Mueller, Ghanem, Koltun, "Training Graph Neural Networks with 1000 Layers", ICML 2021,
    arXiv 2106.07476, Sec. 3); see :class:`RevGAT` for the architecture, the shared dropout
    mask and the choice of BatchNorm. ``GATConv`` adds self-loops itself, so the graph is the
    plain ``edge_index`` ``[2, E]`` int64 (never a CSR matrix, see
    :func:`tag_pipeline.models.graph_operator`).

    Args:
        in_channels: input feature size (float32 features ``[N, in_channels]``, or the
            ``encoder``'s output size).
        num_classes: C, the number of output logits (float32 ``[N, C]``).
        hidden: hidden channels; must split into ``num_groups`` groups whose size is a
            multiple of ``heads``.
        num_layers: ``num_layers - 1`` reversible blocks (at least one) between the input and
            output linear layers.
        dropout: dropout probability in ``[0, 1)``.
        encoder: optional input encoder (e.g. the P-feature ``PredictionEncoder``).
        heads: attention heads per group. (default: 2, so that the pipeline's default ``hidden``
            of 128 splits into 2 groups x 2 heads x 32 channels; TAPE's RevGAT uses 3 heads at
            hidden 256 on ogbn-arxiv, which does not split evenly)
        num_groups: groups per reversible block (the paper uses 2).

    Raises:
        ValueError: ``num_groups < 2``, ``heads < 1``, ``num_layers < 1``, ``dropout`` outside
            ``[0, 1)``, or ``hidden`` not divisible by ``num_groups * heads``.
    """
    if num_groups < 2:
        raise ValueError(f"RevGAT needs num_groups >= 2 for its reversible blocks, got {num_groups}")
    if heads < 1:
        raise ValueError(f"heads must be >= 1, got {heads}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if hidden % num_groups != 0:
        raise ValueError(f"hidden={hidden} must be divisible by num_groups={num_groups}")
    group = hidden // num_groups
    if group % heads != 0:
        raise ValueError(
            f"hidden={hidden} gives groups of {group} channels (num_groups={num_groups}), "
            f"which must be divisible by heads={heads}; choose hidden as a multiple of "
            f"num_groups * heads = {num_groups * heads}"
        )
    backbone = RevGAT(
        in_channels,
        hidden,
        num_classes,
        num_blocks=max(1, num_layers - 1),
        dropout=dropout,
        heads=heads,
        num_groups=num_groups,
    )
    return NodeClassifier(backbone, uses_graph=True, encoder=encoder)
