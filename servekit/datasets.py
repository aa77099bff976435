"""The example models' data: scikit-learn's bundled sets, split the same way everywhere."""

from __future__ import annotations

import io
from typing import NamedTuple

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits, load_iris
from sklearn.model_selection import train_test_split

SEED = 0
TEST_FRACTION = 0.25


class Split(NamedTuple):
    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    labels: list[str]


def iris_split() -> Split:
    """Iris measurements (cm) and species, stratified 75/25."""
    data = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data.astype(np.float32),
        data.target,
        test_size=TEST_FRACTION,
        random_state=SEED,
        stratify=data.target,
    )
    return Split(x_train, x_test, y_train, y_test, labels=[str(n) for n in data.target_names])


def digits_split() -> Split:
    """8x8 digit images (0..16 ink) and their digit, stratified 75/25."""
    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.images.astype(np.float32),
        data.target,
        test_size=TEST_FRACTION,
        random_state=SEED,
        stratify=data.target,
    )
    return Split(x_train, x_test, y_train, y_test, labels=[str(d) for d in range(10)])


def digit_png(image: np.ndarray, fmt: str = "PNG") -> bytes:
    """Encode one 8x8 digit (0..16 ink) as a greyscale image file, ink bright on dark."""
    pixels = np.clip(np.rint(image * 255.0 / 16.0), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format=fmt)
    return out.getvalue()
