"""COMMIT (MAGVIT sec. 3.2): task conditions, Eq. 2 multivariate masks, the loss split, Algorithm 1 decoding.

Hand-built grids use a 16x32x32 clip and the 3D-VQ stride (4, 8, 8): a 4x4x4 token grid (N = 64).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modeling.commit import (
    TASKS,
    CommitConfig,
    CommitParts,
    PrefixLayout,
    commit_debug,
    commit_decode,
    commit_inputs,
    commit_loss,
    commit_num_unfixed,
    condition_token_mask,
    condition_video,
    default_task_params,
    infer_stride,
    ispad,
    sample_task,
    sample_task_params,
    tokenize_with_condition,
)
from modeling.commit_tasks import TaskParams, paper_offsets

STRIDE = (4, 8, 8)
SHAPE = (2, 3, 16, 32, 32)


def _video(seed: int = 0, shape=SHAPE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1


def _grid(rows_by_t: list[list[list[int]]]) -> torch.Tensor:
    return torch.tensor(rows_by_t, dtype=torch.bool)


def _same_every_frame(plane: list[list[int]]) -> torch.Tensor:
    return _grid([plane] * 4)


ALL = [[1] * 4] * 4
NONE = [[0] * 4] * 4
CENTRE = [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
NOT_CENTRE = [[1, 1, 1, 1], [1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]]
V_STRIP = [[0, 1, 1, 0]] * 4
H_STRIP = [[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]]


def _cols(*cols: int) -> list[list[int]]:
    return [[int(c in cols) for c in range(4)]] * 4


def _ipd_plane(missing: tuple[int, ...]) -> list[list[int]]:
    """Rows 1-2 (the box's rows) lack the given columns; rows 0 and 3 are whole."""
    middle = [int(c not in missing) for c in range(4)]
    return [[1] * 4, middle, middle, [1] * 4]


# (task, cond_frames, expected ~ispad grid (t, h, w), expected fully-given grid)
# Dynamic tasks use the paper trajectory o_t = round(linspace(0, 16, 16)) = 0..7, 9..16: the W/2 = 16 wide
# region covers columns [0, 19) in frames 0-3, [4, 23) in 4-7, [9, 28) in 8-11, [13, 32) in 12-15, and is
# present in all four frames of a block over [3, 16), [7, 20), [12, 25), [16, 29).
EXPECTED = [
    ("fp", 1, _grid([ALL, NONE, NONE, NONE]), _grid([NONE] * 4)),
    ("fp", 5, _grid([ALL, ALL, NONE, NONE]), _grid([ALL, NONE, NONE, NONE])),
    ("cfp", 1, _grid([ALL, NONE, NONE, NONE]), _grid([NONE] * 4)),
    ("fi", 1, _grid([ALL, NONE, NONE, ALL]), _grid([NONE] * 4)),
    ("fi", 4, _grid([ALL, NONE, NONE, ALL]), _grid([ALL, NONE, NONE, ALL])),
    ("opc", 1, _same_every_frame(CENTRE), _same_every_frame(CENTRE)),
    ("opv", 1, _same_every_frame(V_STRIP), _same_every_frame(V_STRIP)),
    ("oph", 1, _same_every_frame(H_STRIP), _same_every_frame(H_STRIP)),
    ("ipc", 1, _same_every_frame(NOT_CENTRE), _same_every_frame(NOT_CENTRE)),
    ("cg", 1, _grid([NONE] * 4), _grid([NONE] * 4)),
    (
        "opd",
        1,
        _grid([_cols(0, 1, 2), _cols(0, 1, 2), _cols(1, 2, 3), _cols(1, 2, 3)]),
        _grid([_cols(1), _cols(1), _cols(2), _cols(2)]),
    ),
    (
        "ipd",
        1,
        _grid([_ipd_plane((1,)), _ipd_plane((1,)), _ipd_plane((2,)), _ipd_plane((2,))]),
        _grid([_ipd_plane((0, 1, 2)), _ipd_plane((0, 1, 2)), _ipd_plane((1, 2, 3)), _ipd_plane((1, 2, 3))]),
    ),
]


def test_task_list_is_the_papers_ten():
    assert TASKS == ("fp", "fi", "opc", "opv", "oph", "opd", "ipc", "ipd", "cg", "cfp")


def test_paper_trajectory():
    assert paper_offsets(16, 32).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16]


@pytest.mark.parametrize(
    ("task", "frames", "cond", "full"), EXPECTED, ids=[f"{e[0]}{e[1]}" for e in EXPECTED]
)
def test_condition_token_grids(task, frames, cond, full):
    video = _video()
    _, pixel_mask = condition_video(task, video, default_task_params(task, video.shape, cond_frames=frames))
    assert pixel_mask.shape == (2, 1, 16, 32, 32) and pixel_mask.dtype == torch.bool
    pad = ispad(pixel_mask, STRIDE)
    assert pad.shape == (2, 4, 4, 4)
    for row in range(2):
        assert torch.equal(~pad[row], cond), f"{task}: ~ispad\n{(~pad[row]).int()}"
        assert torch.equal(condition_token_mask(pixel_mask, STRIDE)[row], full), f"{task}: fully given"


def test_dynamic_tasks_with_fixed_params():
    """A still region (offsets all 8) at columns [8, 24): token columns 1-2 exactly, every latent frame."""
    video = _video(shape=(1, 3, 16, 32, 32))
    params = TaskParams(offsets=torch.full((16,), 8))
    _, opd = condition_video("opd", video, params)
    _, ipd = condition_video("ipd", video, params)
    assert torch.equal(~ispad(opd, STRIDE)[0], _same_every_frame(V_STRIP))
    assert torch.equal(~ispad(ipd, STRIDE)[0], _same_every_frame(NOT_CENTRE))
    # per-sample offsets (B, T)
    two = TaskParams(offsets=torch.stack([torch.zeros(16, dtype=torch.long), torch.full((16,), 16)]))
    _, mask = condition_video("opd", _video(), two)
    assert torch.equal(~ispad(mask, STRIDE)[0], _same_every_frame(_cols(0, 1)))
    assert torch.equal(~ispad(mask, STRIDE)[1], _same_every_frame(_cols(2, 3)))


def test_ispad_is_computed_from_the_padding():
    mask = torch.zeros(1, 1, 4, 16, 16, dtype=torch.bool)  # a 1x2x2 token grid at stride (4, 8, 8)
    mask[:, :, :2, :8, :8] = True  # block (0, 0): half of its frames given
    mask[:, :, 3, 12, 12] = True  # block (1, 1): a single given pixel
    mask[:, :, :, :8, 8:] = True  # block (0, 1): fully given; block (1, 0): fully padded
    assert ispad(mask, STRIDE)[0, 0].tolist() == [[False, False], [True, False]]
    assert condition_token_mask(mask, STRIDE)[0, 0].tolist() == [[False, True], [False, False]]
    with pytest.raises(ValueError, match="divisible"):
        ispad(torch.zeros(1, 1, 5, 16, 16, dtype=torch.bool), STRIDE)


def _edge_pad_reference(video: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    """np.pad(mode="edge"), i.e. the reference's jnp.pad(mode="edge") of the kept crop."""
    h, w = video.shape[-2:]
    crop = video[..., rows, cols].numpy()
    pad = ((0, 0),) * 3 + ((rows.start, h - rows.stop), (cols.start, w - cols.stop))
    return torch.from_numpy(np.pad(crop, pad, mode="edge"))


@pytest.mark.parametrize("task", TASKS)
def test_padding_keeps_given_pixels_and_fills_as_specified(task):
    video = _video()
    params = default_task_params(task, video.shape, cond_frames=2)
    cond, pixel_mask = condition_video(task, video, params)
    assert cond.shape == video.shape and cond.dtype == video.dtype
    given = pixel_mask.expand_as(video)
    assert torch.equal(cond[given], video[given])  # bit-exact

    if task in ("fp", "cfp"):  # frames >= 2 copy frame 1
        assert torch.equal(cond[:, :, 2:], video[:, :, 1:2].expand(-1, -1, 14, -1, -1))
    elif task == "fi":  # frames 2..13 interpolate frame 1 -> frame 14 at i / 13
        for i in range(1, 13):
            expected = video[:, :, 1] + (video[:, :, 14] - video[:, :, 1]) * (i / 13)
            torch.testing.assert_close(cond[:, :, 1 + i], expected)
    elif task == "opc":
        assert torch.equal(cond, _edge_pad_reference(video, slice(8, 24), slice(8, 24)))
    elif task == "opv":
        assert torch.equal(cond, _edge_pad_reference(video, slice(0, 32), slice(8, 24)))
    elif task == "oph":
        assert torch.equal(cond, _edge_pad_reference(video, slice(8, 24), slice(0, 32)))
    else:  # opd, ipc, ipd, cg: black
        assert bool((cond[~given] == -1.0).all())
        assert (~given).any()
    if task == "cg":
        assert not pixel_mask.any()


@pytest.mark.parametrize("task", TASKS)
def test_padding_reads_only_given_pixels(task):
    """At inference only the condition is known: whatever fills the rest must not change V~."""
    video = _video()
    cond, pixel_mask = condition_video(task, video)
    other = torch.where(pixel_mask, video, _video(seed=1))
    assert torch.equal(condition_video(task, other)[0], cond)


def test_padding_rejects_bad_frame_counts():
    with pytest.raises(ValueError):
        condition_video("fp", _video(), TaskParams(cond_frames=16))
    with pytest.raises(ValueError):
        condition_video("fi", _video(), TaskParams(cond_frames=8))
    with pytest.raises(ValueError):
        condition_video("nope", _video())


def test_sample_task_params():
    shape = SHAPE
    assert torch.equal(sample_task_params("opd", shape).offsets, paper_offsets(16, 32))  # the paper: fixed
    assert sample_task_params("fp", shape, cond_frames=5).cond_frames == 5
    a = sample_task_params("ipd", shape, torch.Generator().manual_seed(3), random_motion=True).offsets
    b = sample_task_params("ipd", shape, torch.Generator().manual_seed(3), random_motion=True).offsets
    assert torch.equal(a, b) and a.shape == (16,) and int(a.min()) >= 0 and int(a.max()) <= 16
    assert sample_task_params("opc", shape, random_motion=True).offsets is None
    picks = {sample_task(torch.Generator().manual_seed(s)) for s in range(60)}
    assert picks <= set(TASKS) and len(picks) > 5


# --- Eq. 2 ---------------------------------------------------------------------------------------------

MASK = 99


def test_eq2_hand_built():
    z = torch.tensor([[10, 11, 12, 13, 14, 15]])
    z_cond = torch.tensor([[20, 21, 22, 23, 24, 25]])
    cond_mask = torch.tensor([[True, True, False, False, True, False]])  # ~ispad
    scores = torch.tensor([[0.1, 0.9, 0.2, 0.8, 0.3, 0.7]])
    # gamma(r) = 0.5: s* = the ceil(0.5 * 6) = 3rd smallest score = 0.3 -> positions 0, 2, 4 selected
    inputs, targets, parts = commit_inputs(z, z_cond, cond_mask, mask_id=MASK, mask_ratio=0.5, scores=scores)
    assert inputs.tolist() == [[20, 11, MASK, 13, 24, 15]]
    assert torch.equal(targets, z)
    assert parts.refine.tolist() == [[True, False, False, False, True, False]]
    assert parts.mask.tolist() == [[False, False, True, False, False, False]]
    assert parts.recon.tolist() == [[False, True, False, True, False, True]]
    # the condition value is used even where it equals the target: the part follows the case, not the value
    inputs, _, parts = commit_inputs(z, z.clone(), cond_mask, mask_id=MASK, mask_ratio=0.5, scores=scores)
    assert inputs.tolist() == [[10, 11, MASK, 13, 14, 15]] and parts.refine[0, 0]
    # at least one token is masked; ratio 1 masks all
    _, _, parts = commit_inputs(z, z_cond, cond_mask, mask_id=MASK, mask_ratio=1e-9, scores=scores)
    assert parts.recon.sum() == 5 and parts.refine[0, 0]
    inputs, _, _ = commit_inputs(z, z_cond, cond_mask, mask_id=MASK, mask_ratio=1.0, scores=scores)
    assert inputs.tolist() == [[20, 21, MASK, MASK, 24, MASK]]


def test_eq2_with_no_condition_is_maskgit():
    z = torch.arange(64)[None].repeat(3, 1)
    g = torch.Generator().manual_seed(0)
    ratios = torch.tensor([0.1, 0.5, 0.93])
    inputs, _, parts = commit_inputs(
        z, z + 100, torch.zeros_like(z, dtype=torch.bool), mask_id=MASK, mask_ratio=ratios, generator=g
    )
    assert not parts.refine.any()
    assert parts.mask.sum(1).tolist() == [math.ceil(0.1 * 64), 32, math.ceil(0.93 * 64)]
    assert torch.equal(inputs == MASK, parts.mask)


def test_eq2_sampled_ratio_is_seeded_and_partitions():
    z = torch.randint(0, 16, (4, 64), generator=torch.Generator().manual_seed(1))
    z_cond = torch.randint(0, 16, (4, 64), generator=torch.Generator().manual_seed(2))
    cond_mask = torch.rand(4, 64, generator=torch.Generator().manual_seed(3)) < 0.4
    a = commit_inputs(z, z_cond, cond_mask, mask_id=16, generator=torch.Generator().manual_seed(7))
    b = commit_inputs(z, z_cond, cond_mask, mask_id=16, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0])
    parts = a[2]
    total = parts.refine.int() + parts.mask.int() + parts.recon.int()
    assert bool((total == 1).all())
    assert torch.equal(a[0][parts.refine], z_cond[parts.refine])
    assert torch.equal(a[0][parts.recon], z[parts.recon])
    assert bool((a[0][parts.mask] == 16).all())


def test_eq2_on_task_grids():
    """FP through a fake tokenizer: selected first-latent-frame tokens get z~, selected others [MASK]."""
    video = _video()
    cond = tokenize_with_condition(_fake_encode, video, "fp")
    assert cond.grid == (4, 4, 4) and cond.z.shape == (2, 64)
    assert cond.cond_mask[:, :16].all() and not cond.cond_mask[:, 16:].any()
    inputs, _, parts = commit_inputs(cond.z, cond.z_cond, cond.cond_mask, mask_id=MASK, mask_ratio=1.0)
    assert torch.equal(inputs[:, :16], cond.z_cond[:, :16]) and bool((inputs[:, 16:] == MASK).all())
    assert parts.refine[:, :16].all() and parts.mask[:, 16:].all()


def _fake_encode(video: torch.Tensor) -> torch.Tensor:
    """A stand-in tokenizer: mean of each 4x8x8 block of channel 0, quantized to 16 levels -> (B, 4, 4, 4)."""
    pooled = torch.nn.functional.avg_pool3d(video[:, :1], STRIDE)[:, 0]
    return ((pooled + 1) / 2 * 15.999).long().clamp(0, 15)


def test_tokenize_with_condition_one_batch():
    calls = []

    def encode(video):
        calls.append(video.shape[0])
        return _fake_encode(video)

    video = _video()
    cond = tokenize_with_condition(encode, video, "opc")
    assert calls == [4]  # [V; V~] in one call
    assert infer_stride(video.shape, (2, 4, 4, 4)) == STRIDE
    assert torch.equal(cond.cond_mask, (~ispad(cond.pixel_mask, STRIDE)).reshape(2, -1))
    cond_v, _ = condition_video("opc", video)
    assert torch.equal(cond.z_cond, _fake_encode(cond_v).reshape(2, -1))
    calls.clear()
    cg = tokenize_with_condition(encode, video, "cg")
    assert calls == [2] and not cg.cond_mask.any()


# --- loss ----------------------------------------------------------------------------------------------


def _loss_case():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 8, generator=g, requires_grad=True)
    targets = torch.randint(0, 8, (2, 6), generator=g)
    refine = torch.tensor([[1, 0, 0, 0, 1, 0], [0, 0, 1, 0, 0, 0]], dtype=torch.bool)
    mask = torch.tensor([[0, 1, 1, 0, 0, 0], [1, 0, 0, 0, 1, 1]], dtype=torch.bool)
    return logits, targets, CommitParts(refine, mask, ~(refine | mask))


def test_loss_default_is_mean_ce_over_all_positions():
    logits, targets, parts = _loss_case()
    loss, metrics = commit_loss(logits, targets, parts)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 8), targets.reshape(-1))
    torch.testing.assert_close(loss, expected)
    assert metrics["refine_fraction"] == pytest.approx(3 / 12)
    assert metrics["mask_fraction"] == pytest.approx(5 / 12)


@pytest.mark.parametrize("zero", [0, 1, 2])
def test_loss_zero_weight_means_zero_gradient(zero):
    logits, targets, parts = _loss_case()
    weights = [1.0, 2.0, 0.5]
    weights[zero] = 0.0
    loss, _ = commit_loss(logits, targets, parts, tuple(weights))
    loss.backward()
    grad_norm = logits.grad.abs().sum(-1)  # (B, N)
    chosen = (parts.refine, parts.mask, parts.recon)
    for i, part in enumerate(chosen):
        if i == zero:
            assert bool((grad_norm[part] == 0).all())
        else:
            assert bool((grad_norm[part] > 0).all())


def test_loss_weights_are_per_part():
    logits, targets, parts = _loss_case()
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 8), targets.reshape(-1), reduction="none"
    ).reshape(2, 6)
    w = parts.refine * 3.0 + parts.mask * 1.0 + parts.recon * 0.0
    expected = ((ce * w).sum(1) / w.sum(1)).mean()
    torch.testing.assert_close(commit_loss(logits, targets, parts, (3.0, 1.0, 0.0))[0], expected)


# --- prefix / config -----------------------------------------------------------------------------------


def test_prefix_layout():
    layout = PrefixLayout(codebook_size=16, num_classes=4)
    assert (
        layout.mask_id,
        layout.task_offset,
        layout.class_offset,
        layout.null_class_id,
        layout.vocab_size,
    ) == (16, 17, 27, 31, 32)
    assert layout.prefix("fp", 2).tolist() == [[17, 31], [17, 31]]
    assert layout.prefix("cfp", 2, torch.tensor([3, -1])).tolist() == [[26, 30], [26, 31]]
    with pytest.raises(ValueError):
        layout.prefix("cg", 1)
    seq = layout.sequence(layout.prefix("cg", 1, torch.tensor([0])), torch.zeros(1, 64, dtype=torch.long))
    assert seq.shape == (1, 66) and seq[0, :2].tolist() == [25, 27]
    assert layout.token_logits(torch.zeros(1, 66, 32)).shape == (1, 64, 16)


def test_config_defaults_and_debug():
    cfg = CommitConfig()
    assert (cfg.num_tasks, cfg.steps, cfg.loss_weights, cfg.mask_schedule) == (
        10,
        12,
        (1.0, 1.0, 1.0),
        "cosine",
    )
    assert cfg.tokenizer_stride == (4, 8, 8) and cfg.fp_cond_frames == 1
    assert CommitConfig(fp_cond_frames=5).task_params("fp", SHAPE).cond_frames == 5
    debug = commit_debug(steps=3)
    assert debug.codebook_size == 16 and debug.steps == 3 and debug.layout().mask_id == 16


# --- Algorithm 1 ---------------------------------------------------------------------------------------

K = 16  # codebook; sampled tokens are forced into [8, 16), condition tokens live in [0, 4)


def _ceil(x: float) -> int:
    """ceil that ignores float error below 1e-9 (math.cos(math.pi / 3) = 0.5000000000000001)."""
    return math.ceil(x - 1e-9)


class Recorder:
    """logits_fn that records every input and only ever predicts tokens >= 8 (so they differ from z~)."""

    def __init__(self, seed: int = 0, peaked: bool = False):
        self.seen: list[torch.Tensor] = []
        self.g = torch.Generator().manual_seed(seed)
        self.peaked = peaked

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.seen.append(tokens.clone())
        logits = torch.randn(*tokens.shape, K, generator=self.g) * (4.0 if self.peaked else 1.0)
        logits[..., :8] = -math.inf
        return logits


def _decode_setup():
    video = _video()
    _, pixel_mask = condition_video("fp", video)
    cond_mask = (~ispad(pixel_mask, STRIDE)).reshape(2, -1)
    z_cond = torch.randint(0, 4, (2, 64), generator=torch.Generator().manual_seed(5))
    return z_cond, cond_mask


@pytest.mark.parametrize("steps", [12, 5, 1])
@pytest.mark.parametrize("confidence", ["prob", "log_prob"])
def test_algorithm1_schedule_and_transitions(steps, confidence):
    z_cond, cond_mask = _decode_setup()
    rec = Recorder()
    out = commit_decode(
        rec, z_cond, cond_mask, mask_id=MASK, steps=steps, temperature=4.5, confidence=confidence,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert len(rec.seen) == steps
    transition = torch.where(cond_mask, z_cond, torch.full_like(z_cond, MASK))
    assert torch.equal(rec.seen[0], transition)  # multivariate mask: z~ at condition tokens, [MASK] elsewhere
    n = 64
    fixed_before = torch.zeros_like(cond_mask)
    for t, seen in enumerate(rec.seen):
        unfixed = seen < 8  # z~ (< 4) or [MASK] (99 is >= 8, handled below)
        unfixed |= seen == MASK
        expected = n if t == 0 else _ceil(math.cos(math.pi / 2 * t / steps) * n)  # cos(pi/3) * 64 = 32
        assert unfixed.sum(1).tolist() == [expected, expected], f"step {t}"
        assert torch.equal(
            seen[unfixed], transition[unfixed]
        )  # re-masked to the conditional transition value
        fixed = ~unfixed
        assert bool((fixed_before <= fixed).all())  # once fixed, always fixed
        if t:
            assert torch.equal(seen[fixed_before], rec.seen[t - 1][fixed_before])  # and unchanged
        fixed_before = fixed
    assert bool((out >= 8).all()) and bool((out < K).all())  # none masked, nothing left at z~
    assert torch.equal(out[fixed_before], rec.seen[-1][fixed_before])


def test_algorithm1_counts():
    assert [commit_num_unfixed(t, 12, 64) for t in range(12)] == [
        _ceil(math.cos(math.pi / 2 * (t + 1) / 12) * 64) for t in range(11)
    ] + [0]
    assert (
        commit_num_unfixed(7, 12, 64) == 32
    )  # cos(pi/3) = 0.5 exactly, though math.cos says 0.5000000000000001
    assert [commit_num_unfixed(t, 3, 3, "linear") for t in range(3)] == [2, 1, 0]  # no float slop at 2/3 * 3


def test_algorithm1_keeps_the_most_confident_without_noise():
    z_cond, cond_mask = _decode_setup()
    rec = Recorder(peaked=True)
    commit_decode(rec, z_cond, cond_mask, mask_id=MASK, steps=4, temperature=0.0, sample_temperature=0.0)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 64, K, generator=g) * 4.0
    logits[..., :8] = -math.inf
    confidence = torch.softmax(logits, -1).max(-1).values
    fixed = rec.seen[1] >= 8
    fixed &= rec.seen[1] != MASK
    keep = 64 - commit_num_unfixed(0, 4, 64)
    assert fixed.sum(1).tolist() == [keep, keep]
    top = confidence.topk(keep, dim=1).indices
    assert torch.equal(fixed, torch.zeros_like(fixed).scatter(1, top, True))
    assert torch.equal(rec.seen[1][fixed], logits.argmax(-1)[fixed])


def test_algorithm1_is_deterministic_under_a_seed():
    z_cond, cond_mask = _decode_setup()

    def run(seed):
        return commit_decode(
            Recorder(), z_cond, cond_mask, mask_id=MASK, generator=torch.Generator().manual_seed(seed)
        )

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_algorithm1_small_sequence_many_steps():
    """N = 4 with 12 steps: early steps may fix nothing (ceil keeps all 4), the last fixes everything."""
    rec = Recorder()
    out = commit_decode(
        rec, torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.bool), mask_id=MASK, steps=12
    )
    assert len(rec.seen) == 12 and bool((rec.seen[0] == MASK).all()) and bool((out >= 8).all())
