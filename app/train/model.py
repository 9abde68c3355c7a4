"""The behaviour model: a causal transformer over a user's item events (SASRec class).

Each position's input is the item's embedding (a learnt id embedding, plus a learnt
projection of the item's text-encoder vector when text is given, so that an item nobody
touched yet still has one) plus the event kind's, the time-gap bucket's and the position's.
Blocks are pre-norm transformer layers under a causal mask. The output at a position
scores every item by a dot product with the same item table (tied embeddings): trained
with full-softmax cross-entropy on the next item at every position.

Torch is imported here and in the training command only; the worker serves the exported
ONNX graph.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

from app.core.sequence import GAP_BUCKETS, KINDS


@dataclass(frozen=True)
class ModelConfig:
    items: int              # vocabulary size, without the padding index 0
    length: int = 200       # events read per user
    dim: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    text_dim: int = 0       # width of the text vectors; 0: no text

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


class BehaviourModel(nn.Module):
    def __init__(self, config: ModelConfig, text: Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.item = nn.Embedding(config.items + 1, d, padding_idx=0)
        self.kind = nn.Embedding(len(KINDS) + 1, d, padding_idx=0)
        self.gap = nn.Embedding(GAP_BUCKETS, d, padding_idx=0)
        self.position = nn.Embedding(config.length, d)
        self.text_projection: nn.Linear | None = None
        if config.text_dim:
            if text is None or text.shape != (config.items + 1, config.text_dim):
                raise ValueError("text vectors must be (items + 1, text_dim)")
            self.register_buffer("text", text.float())
            self.text_projection = nn.Linear(config.text_dim, d, bias=False)
        layer = nn.TransformerEncoderLayer(
            d, config.heads, dim_feedforward=4 * d, dropout=config.dropout,
            activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, config.blocks,
                                            enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        nn.init.normal_(self.item.weight, std=0.02)
        with torch.no_grad():
            self.item.weight[0].zero_()
        mask = torch.triu(torch.full((config.length, config.length), float("-inf")), 1)
        self.register_buffer("causal", mask)

    def item_table(self) -> Tensor:
        """Every item's embedding, (items + 1, dim): row 0 is padding."""
        table = self.item.weight
        if self.text_projection is not None:
            table = table + self.text_projection(self.text)
        return table

    def forward(self, items: Tensor, kinds: Tensor, gaps: Tensor,
                last_only: bool = False) -> Tensor:
        """Hidden states (batch, length, dim) for left-padded token arrays (batch, length);
        with ``last_only``, the last position's only, (batch, 1, dim): the last block then
        computes that one position (the same numbers, about half the work with 2 blocks)."""
        length = items.shape[1]
        table = self.item_table()
        positions = torch.arange(length, device=items.device)
        x = (table[items] * self.config.dim ** 0.5 + self.kind(kinds) + self.gap(gaps)
             + self.position(positions)[None])
        x = dropout(x, self.config.dropout, self.training) * (items > 0).unsqueeze(-1)
        causal: Tensor = self.causal   # type: ignore[assignment]  # a registered buffer
        mask = causal[:length, :length]
        layers = list(self.blocks.layers)
        for n, layer in enumerate(layers):
            x = _block(layer, x, mask, last_only and n == len(layers) - 1)
        normed: Tensor = self.norm(x)
        return normed

    def user_vectors(self, items: Tensor, kinds: Tensor, gaps: Tensor) -> Tensor:
        """The last position's hidden state: what the model expects next, (batch, dim)."""
        return self.forward(items, kinds, gaps, last_only=True)[:, -1]

    def scores(self, items: Tensor, kinds: Tensor, gaps: Tensor) -> Tensor:
        """Every item's score for each user's next event, (batch, items + 1)."""
        return self.user_vectors(items, kinds, gaps) @ self.item_table().T


def _block(layer: nn.TransformerEncoderLayer, x: Tensor, mask: Tensor,
           last_only: bool = False) -> Tensor:
    """One pre-norm block, computed from the layer's own parameters: what
    ``nn.TransformerEncoderLayer`` computes with ``norm_first=True`` and GELU, written out so
    that it exports to ONNX as it runs in torch (the layer's fused inference path and its
    causal-mask detection do not export faithfully). With ``last_only`` only the last
    position is computed (it attends to every position; the causal mask's last row is 0)."""
    attention = layer.self_attn
    heads = attention.num_heads
    batch, length, dim = x.shape
    normed = layer.norm1(x)
    k, v = functional.linear(normed, attention.in_proj_weight[dim:],
                             attention.in_proj_bias[dim:]).chunk(2, dim=-1)
    if last_only:
        x, normed, mask, rows = x[:, -1:], normed[:, -1:], mask[-1:], 1
    else:
        rows = length
    q = functional.linear(normed, attention.in_proj_weight[:dim], attention.in_proj_bias[:dim])

    def split(t: Tensor, n: int) -> Tensor:
        return t.reshape(batch, n, heads, dim // heads).transpose(1, 2)

    weights = torch.softmax(split(q, rows) @ split(k, length).transpose(-2, -1)
                            * (dim // heads) ** -0.5 + mask, dim=-1)
    p, training = layer.dropout.p, layer.training
    weights = dropout(weights, attention.dropout, training)
    mixed = (weights @ split(v, length)).transpose(1, 2).reshape(batch, rows, dim)
    x = x + dropout(attention.out_proj(mixed), p, training)
    hidden = dropout(functional.gelu(layer.linear1(layer.norm2(x))), p, training)
    out: Tensor = x + dropout(layer.linear2(hidden), p, training)
    return out


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout, as ``functional.dropout``, with the keep mask drawn 16 bits per
    element from 64-bit random words: torch's CPU dropout draws one Bernoulli per element and
    was a quarter of a training step's time (this is ~3x cheaper). ``p`` is rounded to a
    multiple of 2^-16."""
    if not training or p <= 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    words = -(-x.numel() // 4)
    bits = torch.randint(-2 ** 63, 2 ** 63 - 1, (words,), dtype=torch.int64,
                         device=x.device).view(torch.int16)[:x.numel()].view(x.shape)
    cut = round(p * 65536) - 32768            # int16 spans [-32768, 32767]: P(bits < cut) = p
    keep = (bits >= cut).to(x.dtype) * (1.0 / (1.0 - p))
    return x * keep
