"""Task heads in AdapterHub's layout (`adapters` ClassificationHead / MultipleChoiceHead / QuestionAnsweringHead).

Every head returns logits of one shape, (B, H, K): H independent categorical distributions over K outcomes
per example — classification (H=1, K=labels), multiple choice (H=1, K=choices), span QA (H=2: start and
end, K=tokens). The loss, prediction and the Fisher information (fun/fisher.py) are written once against
that shape, so the training loop and the Fisher code have no task branches.
"""

from __future__ import annotations

import torch
from torch import nn


def prediction_mlp(hidden_size: int, out: int, layers: int, dropout: float) -> nn.Sequential:
    """AdapterHub PredictionHead: (dropout → Linear(d, d) → tanh) × (layers-1), then dropout → Linear(d, out)."""
    mods: list[nn.Module] = []
    for _ in range(layers - 1):
        mods += [nn.Dropout(dropout), nn.Linear(hidden_size, hidden_size), nn.Tanh()]
    mods += [nn.Dropout(dropout), nn.Linear(hidden_size, out)]
    return nn.Sequential(*mods)


class ClassificationHead(nn.Module):
    """First-token classifier, 2 layers (AdapterHub default). (B, T, d) → (B, 1, num_labels)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1, layers: int = 2):
        super().__init__()
        self.head = prediction_mlp(hidden_size, num_labels, layers, dropout)

    def forward(self, hidden: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
        return self.head(hidden[:, 0]).unsqueeze(1)  # (B, 1, C)


class MultipleChoiceHead(nn.Module):
    """One score per (context, choice) pair from its first token. (B·C, T, d) → (B, 1, C)."""

    def __init__(self, hidden_size: int, dropout: float = 0.1, layers: int = 2):
        super().__init__()
        self.head = prediction_mlp(hidden_size, 1, layers, dropout)

    def forward(self, hidden: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
        batch, choices = input_shape[0], input_shape[1]
        return self.head(hidden[:, 0]).view(batch, 1, choices)  # (B, 1, C)


class QuestionAnsweringHead(nn.Module):
    """Start/end scores per token, 1 layer (AdapterHub default). (B, T, d) → (B, 2, T)."""

    def __init__(self, hidden_size: int, dropout: float = 0.1, layers: int = 1):
        super().__init__()
        self.head = prediction_mlp(hidden_size, 2, layers, dropout)

    def forward(self, hidden: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
        return self.head(hidden).transpose(1, 2)  # (B, 2, T)
