"""Train the example models deterministically from scikit-learn's bundled data.

    python -m models.train            # from the repo root (make train): models/*.pt, accuracy.json

Same code, same machine: same weights. Held-out accuracy goes to accuracy.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from handlers.nets import DIGIT_MAX, DigitsNet, IrisNet
from servekit.datasets import SEED, digits_split, iris_split

ROOT = Path(__file__).resolve().parent.parent

OUT = ROOT / "models"


def _fit(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int, lr: float
) -> None:
    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            optimizer.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            optimizer.step()
    model.eval()


def _accuracy(model: nn.Module, x: torch.Tensor, y: np.ndarray) -> float:
    with torch.inference_mode():
        predicted = model(x).argmax(dim=1).numpy()
    return float((predicted == y).mean())


def train_iris() -> dict[str, object]:
    split = iris_split()
    model = IrisNet()
    x = torch.from_numpy(split.x_train)
    model.mean.copy_(x.mean(dim=0))
    model.std.copy_(x.std(dim=0))
    _fit(model, x, torch.from_numpy(split.y_train), epochs=200, batch=16, lr=0.01)
    torch.save(model.state_dict(), OUT / "iris.pt")
    (OUT / "iris_labels.json").write_text(json.dumps(split.labels) + "\n")
    acc = _accuracy(model, torch.from_numpy(split.x_test), split.y_test)
    return {"test_accuracy": round(acc, 4), "test_samples": len(split.y_test)}


def train_digits() -> dict[str, object]:
    split = digits_split()
    model = DigitsNet()
    x = torch.from_numpy(split.x_train / DIGIT_MAX).unsqueeze(1)
    _fit(model, x, torch.from_numpy(split.y_train), epochs=40, batch=64, lr=0.002)
    torch.save(model.state_dict(), OUT / "digits.pt")
    x_test = torch.from_numpy(split.x_test / DIGIT_MAX).unsqueeze(1)
    acc = _accuracy(model, x_test, split.y_test)
    return {"test_accuracy": round(acc, 4), "test_samples": len(split.y_test)}


def main() -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    results = {"iris": train_iris(), "digits": train_digits(), "torch": torch.__version__}
    (OUT / "accuracy.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
