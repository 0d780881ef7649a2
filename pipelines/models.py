"""The model architectures, looked up by name (a family spec's ``architecture``) in :data:`ARCHITECTURES`.

Each model takes raw features and normalises them with buffers fitted on the training
split, so the exported ONNX graph carries its own preprocessing. Every model outputs
probabilities named ``prob``: ``[B, 1]`` P(positive) for the binary families, ``[B, 2]``
class probabilities for ``price_direction``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from factory_core.config import Family, FamilyConfig
from factory_core.errors import BadInput
from factory_core.families import spec


class Normalise(nn.Module):
    """Standardises raw features with buffers fitted on the training split (``fit``), inside the exported graph."""

    def __init__(self, n_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    def fit(self, x: torch.Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1]).double()
        self.mean.copy_(flat.mean(0).float())
        self.std.copy_(flat.std(0).clamp_min(1e-6).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MarketAlertGRU(nn.Module):
    """GRU over ``[B, T, F]`` ticks (T in 30..120) → P(abnormal move) ``[B, 1]``."""

    def __init__(self, n_features: int, hidden: int = 64, layers: int = 1):
        super().__init__()
        self.norm = Normalise(n_features)
        self.gru = nn.GRU(n_features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(self.norm(x))
        return self.head(h[:, -1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


class PriceDirectionNet(nn.Module):
    """Conv1d + Transformer encoder over ``[B, 64, 16]`` → class probabilities ``[B, 2]``."""

    def __init__(self, n_features: int, seq_len: int = 64, hidden: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.norm = Normalise(n_features)
        self.conv = nn.Sequential(
            nn.Conv1d(n_features, hidden, kernel_size=3, padding=1), nn.GELU(),
            nn.Conv1d(hidden, hidden, kernel_size=3, padding=1), nn.GELU(),
        )
        self.pos = nn.Parameter(torch.zeros(1, seq_len, hidden))
        layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=2 * hidden, dropout=0.1,
                                           activation="gelu", batch_first=True, norm_first=True)
        # enable_nested_tensor=False keeps the plain (exportable) path in eval mode.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(2 * hidden, 2)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(self.norm(x).transpose(1, 2)).transpose(1, 2) + self.pos
        z = self.encoder(z)
        # The freshest tick carries most of a 100 ms signal; the mean carries the context.
        return self.head(torch.cat([z[:, -1], z.mean(dim=1)], dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=-1)


class FraudMLP(nn.Module):
    """MLP over ``[B, F]`` transaction features → P(fraud) ``[B, 1]``."""

    def __init__(self, n_features: int, hidden: int = 64, layers: int = 2):
        super().__init__()
        self.norm = Normalise(n_features)
        blocks: list[nn.Module] = []
        width = n_features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(0.1)]
            width = hidden
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.norm(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


class UnknownArchitecture(BadInput, LookupError):
    """A family spec names an architecture no module is registered under."""


ARCHITECTURES: dict[str, Callable[[FamilyConfig, int], nn.Module]] = {
    "gru": lambda fc, n: MarketAlertGRU(n, fc.hidden, fc.layers),
    "cnn_transformer": lambda fc, n: PriceDirectionNet(n, fc.window, fc.hidden, fc.layers),
    "mlp": lambda fc, n: FraudMLP(n, fc.hidden, fc.layers),
}
"""Architecture name → ``build(family_config, n_features)``. A module needs a ``norm`` (:class:`Normalise`),
``logits(x)`` and ``forward(x)`` returning the ``prob`` output."""


def build_model(family: Family, fam_cfg: FamilyConfig, n_features: int) -> nn.Module:
    arch = spec(family).architecture
    if arch not in ARCHITECTURES:
        raise UnknownArchitecture(f"{family}: architecture {arch!r} has no module in pipelines.models.ARCHITECTURES "
                                  f"(registered: {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[arch](fam_cfg, n_features)


def positive_probability(family: Family, prob: "torch.Tensor | object"):
    """P(positive class) from a model's ``prob`` output (torch or numpy)."""
    return prob[:, spec(family).positive_index]


def load_model(checkpoint: "str | Path") -> nn.Module:
    """Rebuild a trained model from its local checkpoint file (CPU, eval mode)."""
    ckpt = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    model = build_model(Family(ckpt["family"]), FamilyConfig(**ckpt["family_config"]), ckpt["n_features"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
