"""Length grouping of tokenized strings: sort, pad per group, split back per request."""

from __future__ import annotations

import torch

from servekit.runtime.text_batching import LengthGroups, TextInput

PAD = 0


def requests() -> list[TextInput]:
    return [
        TextInput([[101, 7, 102]], single=True),
        TextInput([[101, 102], [101, 5, 6, 7, 8, 9, 102], [101, 4, 4, 102]], single=False),
        TextInput([[101, 3, 3, 3, 3, 102]], single=True),
    ]


def test_groups_are_sorted_longest_first_and_padded_to_their_own_longest() -> None:
    batch = LengthGroups.build(requests(), group_size=2, pad_id=PAD)
    shapes = [tuple(ids.shape) for ids, _ in batch.groups]
    assert shapes == [(2, 7), (2, 4), (1, 2)]
    ids, mask = batch.groups[0]
    assert mask.sum(dim=1).tolist() == [7, 6]
    assert ids[1, 6].item() == PAD and mask[1, 6].item() == 0


def test_one_group_when_the_batch_fits() -> None:
    batch = LengthGroups.build(requests(), group_size=32, pad_id=PAD)
    assert [tuple(ids.shape) for ids, _ in batch.groups] == [(5, 7)]


def test_rows_come_back_to_their_request_in_input_order() -> None:
    inputs = requests()
    batch = LengthGroups.build(inputs, group_size=2, pad_id=PAD)
    # A fake model output: each sorted row carries its string's length.
    sorted_lengths = torch.cat([mask.sum(dim=1, keepdim=True) for _, mask in batch.groups])
    back = list(batch.per_request(sorted_lengths.float()))
    assert [item for item, _ in back] == inputs
    assert [rows[:, 0].tolist() for _, rows in back] == [[3.0], [2.0, 7.0, 4.0], [6.0]]
