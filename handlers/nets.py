"""The example models' architectures; ``models/train.py`` trains them, handlers load them."""

from __future__ import annotations

import torch
from torch import nn

IRIS_FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
DIGIT_SIDE = 8
DIGIT_MAX = 16.0


class IrisNet(nn.Module):
    """A small MLP on the four iris measurements (cm); standardizes its own input."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(len(IRIS_FEATURES)))
        self.register_buffer("std", torch.ones(len(IRIS_FEATURES)))
        self.layers = nn.Sequential(nn.Linear(len(IRIS_FEATURES), 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.layers((x - self.mean) / self.std)
        return logits


class DigitsNet(nn.Module):
    """A small CNN on 8x8 grey digits scaled to [0, 1] (scikit-learn's 0..16 divided by 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classify = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classify(self.features(x))
        return logits
