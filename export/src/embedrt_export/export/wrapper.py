"""The exported computation: transformer body, pooling and L2 normalisation in one graph.

Also the reference that parity is measured against: the model's official pooling, written
independently of the exported pooling (the Qwen3-Embedding model card's ``last_token_pool``, and
sentence-transformers' mean / CLS pooling).
"""

from __future__ import annotations

import torch
from torch import nn


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "last_token":
        # Last position where the mask is 1: correct under left and right padding alike. The pad id
        # equals the appended end-of-text id, so the token is never located by id.
        # ArgMax runs on float: ONNX Runtime's CUDA ArgMax has no int64 kernel, and an int64 ArgMax
        # would sit on the CPU behind Memcpy nodes (which also rule out CUDA graphs). Positions are
        # exact in float32 up to 2^24.
        positions = torch.arange(1, mask.shape[1] + 1, device=mask.device, dtype=torch.float32)
        last = (mask.to(torch.float32) * positions.unsqueeze(0)).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)
    if pooling == "cls":
        return hidden[:, 0]
    raise ValueError(f"unknown pooling {pooling!r}")


class EmbeddingGraph(nn.Module):
    """input_ids, attention_mask -> sentence_embedding (L2-normalised), embedding_norm [, hidden]."""

    def __init__(self, model: nn.Module, pooling: str, normalize: bool, with_hidden_states: bool) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.normalize = normalize
        self.with_hidden_states = with_hidden_states
        self.needs_token_types = "token_type_ids" in model.forward.__code__.co_varnames

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kwargs = {"token_type_ids": torch.zeros_like(input_ids)} if self.needs_token_types else {}
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        pooled = _pool(hidden.float(), attention_mask, self.pooling)
        norm = pooled.norm(dim=-1, keepdim=True)
        embedding = pooled / norm.clamp_min(1e-12) if self.normalize else pooled
        outputs: tuple[torch.Tensor, ...] = (embedding, norm.squeeze(-1))
        if self.with_hidden_states:
            outputs += (hidden.float(),)
        return outputs


def reference_pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """The official pooling of each family, written as their authors wrote it."""
    if pooling == "last_token":  # Qwen3-Embedding model card
        left_padding = bool(mask[:, -1].sum() == mask.shape[0])
        if left_padding:
            return hidden[:, -1]
        lengths = mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths]
    if pooling == "mean":  # sentence-transformers Pooling(mean)
        expanded = mask.unsqueeze(-1).expand(hidden.size()).float()
        return torch.sum(hidden * expanded, 1) / torch.clamp(expanded.sum(1), min=1e-9)
    return hidden[:, 0]
