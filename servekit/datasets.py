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


def _split(x: np.ndarray, y: np.ndarray, labels: list[str]) -> Split:
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype(np.float32), y, test_size=TEST_FRACTION, random_state=SEED, stratify=y
    )
    return Split(x_train, x_test, y_train, y_test, labels)


def iris_split() -> Split:
    """Iris measurements (cm) and species, stratified 75/25."""
    data = load_iris()
    return _split(data.data, data.target, [str(n) for n in data.target_names])


def digits_split() -> Split:
    """8x8 digit images (0..16 ink) and their digit, stratified 75/25."""
    data = load_digits()
    return _split(data.images, data.target, [str(d) for d in range(10)])


def digit_png(image: np.ndarray, fmt: str = "PNG") -> bytes:
    """Encode one 8x8 digit (0..16 ink) as a greyscale image file, ink bright on dark."""
    pixels = np.clip(np.rint(image * 255.0 / 16.0), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format=fmt)
    return out.getvalue()
