"""Batch tokenized strings by length: sort, cut into groups, pad each group to its own longest.

A TorchServe batch is a list of requests, each with one or more strings. The handler
flattens them, runs the groups, and splits the rows back per request::

    >>> batch = LengthGroups.build([TextInput([[101, 7, 102]], single=True),
    ...                             TextInput([[101, 102], [101, 5, 6, 7, 102]], single=False)],
    ...                            group_size=2, pad_id=0)
    >>> [tuple(ids.shape) for ids, _ in batch.groups]  # longest first, padded per group
    [(2, 5), (1, 2)]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TextInput:
    """One request's strings as token ids; ``single`` when it sent one string, not a list."""

    ids: list[list[int]]
    single: bool


@dataclass(frozen=True)
class LengthGroups:
    """The strings of a batch sorted by length (longest first) in padded groups."""

    groups: list[tuple[torch.Tensor, torch.Tensor]]
    """``(input_ids, attention_mask)`` per group, each ``[strings, longest in group]``."""
    order: list[int]
    """Flat index (requests' strings in order) of each sorted row."""
    inputs: list[TextInput]

    @classmethod
    def build(cls, inputs: list[TextInput], group_size: int, pad_id: int) -> LengthGroups:
        flat = [ids for item in inputs for ids in item.ids]
        order = sorted(range(len(flat)), key=lambda i: -len(flat[i]))
        groups = [
            _pad([flat[i] for i in order[start : start + group_size]], pad_id)
            for start in range(0, len(order), group_size)
        ]
        return cls(groups, order, inputs)

    def to(self, device: torch.device) -> LengthGroups:
        """The same groups with their tensors on ``device`` (itself when they are there)."""
        if all(ids.device == device and mask.device == device for ids, mask in self.groups):
            return self
        groups = [(ids.to(device), mask.to(device)) for ids, mask in self.groups]
        return dataclasses.replace(self, groups=groups)

    def per_request(self, sorted_rows: torch.Tensor) -> Iterator[tuple[TextInput, torch.Tensor]]:
        """Each request with its rows of ``sorted_rows`` (one row per sorted string), on
        the device ``sorted_rows`` is on."""
        rows = torch.empty_like(sorted_rows)
        rows[torch.tensor(self.order, device=sorted_rows.device)] = sorted_rows
        start = 0
        for item in self.inputs:
            yield item, rows[start : start + len(item.ids)]
            start += len(item.ids)


def _pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return input_ids, mask
