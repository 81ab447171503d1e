"""Task heads and per-example losses for the four task types.

The task type changes only the head, its loss and how labels are sampled; TaskEmb's accumulation
and fine-tuning code are shared by all of them.
"""

from __future__ import annotations

import torch
from torch import nn

from embeddings.data import TaskType
from embeddings.features import IGNORE_INDEX

_NEG = -1e4  # masks padding out of span logits without overflowing bf16


class TaskHead(nn.Module):
    """Maps final-layer states (B, T, H) to logits; `per_example_loss` returns a (B,) tensor."""

    def __init__(self, task_type: TaskType, hidden_size: int, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.task_type = task_type
        self.dropout = nn.Dropout(dropout)
        out = {TaskType.REGRESSION: 1, TaskType.QUESTION_ANSWERING: 2}.get(task_type, num_labels)
        if task_type in (TaskType.CLASSIFICATION, TaskType.SEQUENCE_LABELING) and num_labels < 2:
            raise ValueError(f"a {task_type.value} head needs at least two labels, got {num_labels}")
        self.proj = nn.Linear(hidden_size, out)
        self.proj.weight.data.normal_(0.0, 0.02)
        self.proj.bias.data.zero_()

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.dropout(states)
        if self.task_type in (TaskType.CLASSIFICATION, TaskType.REGRESSION):
            logits = self.proj(states[:, 0])
            return logits.squeeze(-1) if self.task_type == TaskType.REGRESSION else logits
        logits = self.proj(states)
        if self.task_type == TaskType.QUESTION_ANSWERING:
            logits = logits.masked_fill(attention_mask.unsqueeze(-1) == 0, _NEG)
        return logits

    def per_example_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.task_type == TaskType.CLASSIFICATION:
            return nn.functional.cross_entropy(logits, labels, reduction="none")
        if self.task_type == TaskType.REGRESSION:
            return nn.functional.mse_loss(logits, labels.float(), reduction="none")
        if self.task_type == TaskType.QUESTION_ANSWERING:
            start = nn.functional.cross_entropy(logits[..., 0], labels[:, 0], reduction="none")
            end = nn.functional.cross_entropy(logits[..., 1], labels[:, 1], reduction="none")
            return (start + end) / 2
        token_loss = nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none",
                                                 ignore_index=IGNORE_INDEX)
        labelled = (labels != IGNORE_INDEX).sum(dim=1).clamp(min=1)
        return token_loss.sum(dim=1) / labelled  # mean over labelled tokens: long sentences don't dominate

    @torch.no_grad()
    def sample_labels(self, logits: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Labels drawn from the model's predictive distribution (the true Fisher; works without gold labels)."""
        logits = logits.detach().float()
        if self.task_type == TaskType.REGRESSION:  # unit-variance Gaussian around the prediction
            noise = torch.randn(logits.shape, generator=generator, device="cpu").to(logits.device)
            return logits + noise
        if self.task_type == TaskType.QUESTION_ANSWERING:
            start = _sample(logits[..., 0], generator)
            end = _sample(logits[..., 1], generator)
            return torch.stack([start, end], dim=1)
        sampled = _sample(logits, generator)
        if self.task_type == TaskType.SEQUENCE_LABELING:  # keep the gold mask: only first sub-tokens count
            sampled = sampled.masked_fill(labels == IGNORE_INDEX, IGNORE_INDEX)
        return sampled


def _sample(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    probs = torch.softmax(logits, dim=-1).cpu()
    flat = probs.reshape(-1, probs.shape[-1])
    draws = torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
    return draws.to(logits.device)
