"""A small character-level transformer (GPT-style, pre-norm) for the `lm-shakespeare`
workload. Imports torch at module level: import it only after `require_torch()`.

It has parameters only, no buffers (the causal mask is `is_causal`, positions are a learned
embedding), so geoml can synchronise all of its state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    """LayerNorm -> causal multi-head self-attention -> LayerNorm -> MLP, both residual."""

    def __init__(self, d_model: int, heads: int, ff_mult: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, ff_mult * d_model)
        self.ff2 = nn.Linear(ff_mult * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        shape = (b, t, self.heads, c // self.heads)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))


class CharTransformer(nn.Module):
    """Token and position embeddings, `layers` blocks, a final LayerNorm and a linear head
    over the vocabulary: (batch, time) token ids -> (batch, time, vocab) logits."""

    def __init__(self, vocab: int, context: int, d_model: int, layers: int, heads: int,
                 ff_mult: int = 4) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"lm: d_model {d_model} is not a multiple of heads {heads}")
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, ff_mult) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok(idx) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def sequence_cross_entropy(logits: Any, targets: Any) -> Any:
    """Mean next-character cross entropy (nats) over every position of the batch."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
