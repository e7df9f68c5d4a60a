"""The key-map toolkit every adapter is written with (vitlab.weights.adapter): loud failures
naming the tensors that do not fit, and the shape readers of files without a config."""

import pytest
import torch

from vitlab.errors import CheckpointError
from vitlab.weights.adapter import (
    UNKNOWN,
    apply_rules,
    count_indexed,
    grid_from_tokens,
    guess_num_heads,
    invert_rules,
    rule,
)

RULES = [
    rule("a.weight", "A/kernel", lambda k: k.T, lambda w: [w.T]),
    rule("b", ("q", "k"), lambda q, k: torch.cat([q, k]), lambda t: list(t.chunk(2))),
    rule("head.weight", "head/kernel", optional=True),
]


def test_rules_map_both_ways():
    theirs = {"A/kernel": torch.arange(6.0).reshape(2, 3), "q": torch.ones(2), "k": torch.zeros(2)}
    ours = apply_rules(RULES, theirs, "test")
    assert ours["a.weight"].shape == (3, 2) and "head.weight" not in ours  # optional, absent
    back = invert_rules(RULES, ours, "test")
    assert back.keys() == theirs.keys() and all(torch.equal(back[k], theirs[k]) for k in back)


def test_missing_and_unknown_tensors_are_named_together():
    with pytest.raises(CheckpointError, match=r"missing: k; not understood: extra"):
        apply_rules(RULES, {"A/kernel": torch.ones(1, 1), "q": torch.ones(1), "extra": 1}, "f")
    with pytest.raises(CheckpointError, match="has no place for: c"):
        invert_rules(RULES, {"a.weight": torch.ones(1, 1), "c": torch.ones(1)}, "the layout")


def test_shape_readers():
    keys = {"blocks.0.x", "blocks.11.y", "blocks.3.z", "norm.weight"}
    assert count_indexed(keys, r"blocks\.(\d+)\.") == 12
    assert count_indexed(keys, r"stages\.(\d+)\.") == 0
    assert grid_from_tokens(197, 1) == (14, True) and grid_from_tokens(196, 1) == (14, False)
    with pytest.raises(CheckpointError, match="square"):
        grid_from_tokens(50, 0)
    assert guess_num_heads(384, 12, 1536) == (6, "the registry's vit_s16")
    assert guess_num_heads(1280, 32, 5120) == (16, "the registry's vit_h14")  # 80-wide heads
    assert guess_num_heads(256, 3, 512) == (4, "heads 64 wide, as the paper's")  # said
    assert guess_num_heads(32, 1, 64)[1] == UNKNOWN  # ambiguous: load_checkpoint refuses
