"""Hue rotation for tokenizer training (`pipelines.augment`) and its use in the clip loader."""

from __future__ import annotations

import math

import pytest
import torch

from pipelines.augment import hue_rotation_matrices, random_hue_rotation, rotate_hues
from pipelines.synth import BACKGROUND, PALETTE


def _clip(rgb: tuple[int, int, int], frames: int = 2) -> torch.Tensor:
    """(1, 3, T, 4, 4) clip of one colour in [-1, 1]."""
    x = torch.tensor(rgb, dtype=torch.float32).div(127.5).sub(1.0)
    return x[None, :, None, None, None].expand(1, 3, frames, 4, 4).clone()


def test_rotations_are_orthogonal_and_keep_grey() -> None:
    rot = hue_rotation_matrices(torch.linspace(0, 2 * math.pi, 7, dtype=torch.float64))
    eye = torch.eye(3, dtype=torch.float64).expand(7, 3, 3)
    assert torch.allclose(rot @ rot.transpose(1, 2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(7, dtype=torch.float64))
    grey = torch.ones(3, dtype=torch.float64)
    assert torch.allclose(rot @ grey, grey.expand(7, 3))
    assert torch.allclose(rot[0], eye[0]) and torch.allclose(rot[-1], eye[0], atol=1e-12)


def test_a_third_of_a_turn_cycles_the_channels() -> None:
    red = _clip(PALETTE["red"])
    turned = rotate_hues(red, torch.tensor([2 * math.pi / 3]))
    # R -> G -> B: a third of a turn about (1,1,1) moves each channel's value to the next channel
    assert torch.allclose(turned[0, :, 0, 0, 0], red[0, [2, 0, 1], 0, 0, 0], atol=1e-6)


def test_background_is_unchanged_and_values_stay_in_range() -> None:
    background = _clip(BACKGROUND)
    assert torch.allclose(rotate_hues(background, torch.tensor([1.234])), background, atol=1e-6)
    clips = torch.cat([_clip(c) for c in PALETTE.values()])
    turned = rotate_hues(clips, torch.linspace(0.3, 6.0, len(PALETTE)))
    assert turned.min() >= -1.0 and turned.max() <= 1.0
    assert not torch.allclose(turned, clips)


def test_random_rotation_is_drawn_from_the_generator_only() -> None:
    clips = torch.cat([_clip(c) for c in PALETTE.values()] * 4)  # 24 clips
    a = random_hue_rotation(clips, 0.5, torch.Generator().manual_seed(3))
    b = random_hue_rotation(clips, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    changed = [not torch.allclose(x, y) for x, y in zip(a, clips, strict=True)]
    assert 0 < sum(changed) < len(changed)  # some clips rotated, some left as they were
    assert torch.equal(random_hue_rotation(clips, 0.0, torch.Generator().manual_seed(3)), clips)
    with pytest.raises(ValueError, match="probability"):
        random_hue_rotation(clips, 1.5, torch.Generator())
    with pytest.raises(ValueError, match="angles"):
        rotate_hues(clips, torch.zeros(2))


def test_the_tokenizer_config_refuses_a_share_outside_0_1_before_any_cluster() -> None:
    from jobs.training.tokenizer import job_from_config

    config = {"tokenizer": {}, "tokenizer_train": {"hue_rotation": 1.5}}
    with pytest.raises(ValueError, match=r"tokenizer_train.hue_rotation .* \[0, 1\]"):
        job_from_config(config, "/nowhere")
