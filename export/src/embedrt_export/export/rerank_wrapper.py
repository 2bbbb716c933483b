"""The exported reranker computations: one relevance logit per pair, and its score.

- ``YesNoGraph`` (Qwen3-Reranker): the transformer body, the last real token's hidden state (found
  from the attention mask, as the embedding graph's last-token pooling), and one dot product with
  the difference of the LM head's "yes" and "no" rows: logit("yes") - logit("no"), which is all
  the model card's softmax over [no, yes] depends on. The full-vocabulary head (151,669 rows on the
  real model) is never computed, at any position.
- ``CrossEncoderGraph`` (BERT family): the sequence classifier's single logit.

Both output ``score`` (the activation of the logit: sigmoid, or the logit itself) and ``logit``.
The parity reference (``rerank_reference``) is the model card's method, written apart from these.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .wrapper import _pool

OUTPUTS = ("score", "logit")


def _activate(logit: torch.Tensor, activation: str) -> torch.Tensor:
    return torch.sigmoid(logit) if activation == "sigmoid" else logit


class YesNoGraph(nn.Module):
    """input_ids, attention_mask -> score = sigmoid(logit), logit = logit(yes) - logit(no) at the last token."""

    def __init__(self, causal_lm: Any, yes: int, no: int) -> None:  # a transformers *ForCausalLM
        super().__init__()
        self.model: nn.Module = causal_lm.model  # the body alone: the same module tree as the embedding graph's
        head = causal_lm.get_output_embeddings()
        assert isinstance(head, nn.Linear)
        direction = head.weight[yes] - head.weight[no]
        bias = head.bias[yes] - head.bias[no] if head.bias is not None else torch.zeros(())
        self.direction: torch.Tensor
        self.bias: torch.Tensor
        self.register_buffer("direction", direction.detach().float().clone())
        self.register_buffer("bias", bias.detach().float().clone())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = _pool(hidden.float(), attention_mask, "last_token")
        logit = last @ self.direction + self.bias
        return torch.sigmoid(logit), logit


class CrossEncoderGraph(nn.Module):
    """input_ids, attention_mask[, token_type_ids] -> score = activation(logit), logit (the classifier's one)."""

    def __init__(self, model: nn.Module, activation: str) -> None:
        super().__init__()
        self.model = model
        self.activation = activation

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        logit = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits[:, 0].float()
        return _activate(logit, self.activation), logit


def rerank_graph(model: nn.Module, label_token_ids: dict[str, int], activation: str) -> nn.Module:
    """The graph for a loaded reranker: yes / no for a causal LM (label ids given), else the classifier."""
    if label_token_ids:
        return YesNoGraph(model, label_token_ids["yes"], label_token_ids["no"])
    return CrossEncoderGraph(model, activation)
