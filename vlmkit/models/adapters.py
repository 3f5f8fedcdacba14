"""LaVIN's trainable pieces: the mixture-of-modality adapter (MMA), its per-layer dropout schedules, the visual projection.

``MMAdapter`` is the reference's ``RepAdapter_Router``: a shared 1×1 down-projection A (d → adapter_dim), two 1×1
up-projections B and D (adapter_dim → d, 2 groups, zero-initialised so a new adapter is the identity), and a router
that mixes the two experts per sample::

    w   = softmax(router(x_route) / temperature)          # (B, 2), x_route: one d-vector per sample
    out = x + s·w0·B(drop(A x)) + s·w1·D(drop(A x))

The router input is the adapter's own input at sequence position 0 unless given: in the LLM that is the modality
token (its hidden state in that layer), in CLIP the CLS token — of each sample, not of batch element 0 (the reference's
sequence-first CLIP routed every sample with element 0's weights; vlmkit routes per sample).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlmkit.errors import ConfigError

#: The reference splits each up-projection into two groups (``RepAdapter_Router(groups=2)``).
UP_PROJECTION_GROUPS = 2
#: Number of experts mixed by the router (B and D).
N_EXPERTS = 2

DROPOUT_SCHEDULES = ("constant", "linear_increase", "linear_decrease", "cosine_increase", "cosine_decrease")


class MMAdapter(nn.Module):
    """Mixture-of-modality adapter on (B, L, d) tensors; parameters stay in their own dtype (fp32), I/O in the caller's."""

    def __init__(self, dim: int, *, adapter_dim: int, scale: float, temperature: float, dropout: float) -> None:
        # No defaults here: the values come from model.* (vlmkit/configs/models/lavin.yaml), their one home.
        super().__init__()
        if dim % UP_PROJECTION_GROUPS or adapter_dim % UP_PROJECTION_GROUPS:
            raise ConfigError(f"adapter: dim {dim} and adapter_dim {adapter_dim} must be divisible by {UP_PROJECTION_GROUPS}")
        self.conv_A = nn.Conv1d(dim, adapter_dim, kernel_size=1, bias=True)
        self.conv_B = nn.Conv1d(adapter_dim, dim, kernel_size=1, groups=UP_PROJECTION_GROUPS, bias=True)
        self.conv_D = nn.Conv1d(adapter_dim, dim, kernel_size=1, groups=UP_PROJECTION_GROUPS, bias=True)
        self.router = nn.Linear(dim, N_EXPERTS, bias=True)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale
        self.temperature = temperature
        # As the reference: A xavier, biases and both experts zero, so the adapter starts as the identity.
        nn.init.xavier_uniform_(self.conv_A.weight)
        nn.init.zeros_(self.conv_A.bias)
        for conv in (self.conv_B, self.conv_D):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def routing_weights(self, route_input: torch.Tensor) -> torch.Tensor:
        """(B, d) router inputs → (B, 2) expert weights."""
        logits = self.router(route_input.to(self.router.weight.dtype))
        return torch.softmax(logits / self.temperature, dim=-1)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, L, d); ``weights`` (B, 2) expert weights, computed from ``x[:, 0]`` when not given."""
        if weights is None:
            weights = self.routing_weights(x[:, 0])
        h = x.to(self.conv_A.weight.dtype)
        hidden = self.dropout(_pointwise(self.conv_A, h))
        w = weights.to(h.dtype)
        delta = self.scale * (w[:, 0, None, None] * _pointwise(self.conv_B, hidden)
                              + w[:, 1, None, None] * _pointwise(self.conv_D, hidden))
        return (h + delta).to(x.dtype)


def _pointwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A 1×1 (grouped) Conv1d applied to channels-last ``x`` (B, L, C) as one matmul.

    Same result as ``conv(x.transpose(1, 2)).transpose(1, 2)``; CPU conv1d costs milliseconds per call at these sizes,
    a matmul microseconds. Group g maps input channels [g·in/G, (g+1)·in/G) to output channels [g·out/G, (g+1)·out/G).
    """
    weight = conv.weight.squeeze(-1)  # (out, in / groups)
    if conv.groups == 1:
        return F.linear(x, weight, conv.bias)
    per_group = torch.einsum("...gi,goi->...go", x.unflatten(-1, (conv.groups, -1)), weight.unflatten(0, (conv.groups, -1)))
    return per_group.flatten(-2) + conv.bias


class AdapterMLP(nn.Module):
    """The visual projection: Linear(width → hidden) → SiLU → Linear(hidden → d_model), xavier weights, zero biases."""

    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.conv_A = nn.Linear(in_features, hidden)  # the reference's names, kept so its checkpoints map one-to-one
        self.conv_B = nn.Linear(hidden, out_features)
        for lin in (self.conv_A, self.conv_B):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_B(F.silu(self.conv_A(x.to(self.conv_A.weight.dtype))))


def dropout_schedule(kind: str, n_layers: int, p: float = 0.1, p_min: float = 0.0, p_max: float = 0.2) -> list[float]:
    """Adapter dropout probability of each of ``n_layers`` layers (index 0 = first layer).

    With t_i = i / (n_layers - 1) (t = 0 for a single layer):
      constant         p_i = p
      linear_increase  p_i = p_min + (p_max - p_min) · t_i
      linear_decrease  p_i = p_max - (p_max - p_min) · t_i
      cosine_increase  p_i = p_min + (p_max - p_min) · (1 - cos(π t_i)) / 2     (half-cosine ramp: flat at both ends)
      cosine_decrease  p_i = p_min + (p_max - p_min) · (1 + cos(π t_i)) / 2
    """
    if kind not in DROPOUT_SCHEDULES:
        raise ConfigError(f"unknown model.dropout_schedule '{kind}'; choose one of: {', '.join(DROPOUT_SCHEDULES)}")
    for name, value in (("adapter_dropout", p), ("dropout_min", p_min), ("dropout_max", p_max)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"model.{name} must be in [0, 1), got {value}")
    if kind != "constant" and p_min > p_max:
        raise ConfigError(f"model.dropout_min ({p_min}) must not exceed model.dropout_max ({p_max})")
    if kind == "constant":
        return [float(p)] * n_layers
    span = p_max - p_min
    out = []
    for i in range(n_layers):
        t = i / (n_layers - 1) if n_layers > 1 else 0.0
        if kind == "linear_increase":
            out.append(p_min + span * t)
        elif kind == "linear_decrease":
            out.append(p_max - span * t)
        elif kind == "cosine_increase":
            out.append(p_min + span * (1.0 - math.cos(math.pi * t)) / 2.0)
        else:  # cosine_decrease
            out.append(p_min + span * (1.0 + math.cos(math.pi * t)) / 2.0)
    return out
