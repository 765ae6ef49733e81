"""COMMIT's ten tasks: interior conditions, padding functions, and the pixel -> token condition masks.

MAGVIT (Yu et al. 2022) sec. 3.2: "At each step, we sample a task prompt rho, obtain the task-specific interior
condition pixels, pad it into V~ with the same shape as V, and get the condition tokens z~ = f_T(V~).
Appendix B.1 lists the padding functions for each task." Our copy of the paper (shared/papers) stops before
the appendix, so the regions and padding below are read from the authors' released implementation
(google-research/magvit: `videogvt/train_lib/cond_utils.py`, `configs/maskgvt_bair_multitask_config.py`,
`configs/maskgvt_bair_config.py`), which is what produced the paper's BAIR-MT8 numbers.

| task | name                          | given pixels (`pixel_mask` True)                           | rest of V~ (padding)          |
|------|-------------------------------|------------------------------------------------------------|-------------------------------|
| fp   | frame prediction              | first k frames (k=1 BAIR, k=5 Kinetics-600; `cond_frames`) | last given frame replicated   |
| fi   | frame interpolation           | first k and last k frames (k=1)                            | linear interpolation in time  |
| opc  | central outpainting           | central box rows [H/4, 3H/4) x cols [W/4, 3W/4)            | edge pixels replicated        |
| opv  | vertical outpainting          | vertical strip cols [W/4, 3W/4), full height               | edge pixels replicated        |
| oph  | horizontal outpainting        | horizontal strip rows [H/4, 3H/4), full width              | edge pixels replicated        |
| opd  | dynamic outpainting           | vertical strip W/2 wide at cols [o_t, o_t + W/2), moving   | constant (black)              |
| ipc  | central inpainting            | all but the central box rows [H/4, 3H/4) x cols [W/4, 3W/4)| constant (black)              |
| ipd  | dynamic inpainting            | all but a box rows [H/4, 3H/4) x cols [o_t, o_t + W/2)     | constant (black)              |
| cg   | class-conditional generation  | none (the class token is the only condition)               | all padding                   |
| cfp  | class-conditional frame pred. | as fp                                                      | as fp                         |

Regions hold for every frame unless they move; "moving" means o_t = round(linspace(0, W/2, T))[t], left to
right across the clip (`cond_utils.py`'s `dynamic_vertical` / `dynamic_central`). Boundaries use integer
division (H // 4, H * 3 // 4) as the reference does. "Vertical outpainting" keeps a *vertical* strip and
generates the left and right sides; "horizontal" keeps a horizontal strip and generates top and bottom.
Replicate padding is `jnp.pad(mode="edge")` there: in time for fp (every later frame is a copy of frame k-1),
in space for opc/opv/oph (each missing pixel copies the nearest pixel of the kept region; corners copy the
region's corner). Interpolation for fi fills frame k-1+i (i = 1..L, L = T-2k) with
start + (end - start) * i / (L + 1), start = frame k-1, end = frame T-k. Constant padding is 0 on the
reference's [0, 1] pixels, i.e. black: -1 on our [-1, 1] pixels (`pad_value`).

Padding only ever reads given pixels, so at inference a caller passes any video whose given region holds the
condition (the rest may be anything).

Token level (Eq. 2's ispad): "ispad(z~_i) returns whether the corresponding supervoxel of z~_i in V~ only
contains padding", and z_i is replaced by z~_i "if the corresponding supervoxel of z_i contains condition
pixels". A token's supervoxel is its stride block (4 x 8 x 8 pixels for MAGVIT's 3D-VQ), so
`ispad` = no given pixel in the block, and Eq. 2's condition tokens are `~ispad` (any given pixel). The
stricter `condition_token_mask` (every pixel of the block given) is reported too; it is *not* what Eq. 2 uses:
with 1-frame FP and a temporal stride of 4 it has no tokens at all, while the paper's BAIR setup conditions on
the first latent frame (`cond_latent_frames = 1` in the reference config).

Axes: B batch, C channels, T/H/W pixels, t/h/w token grid, N = t*h*w tokens (raster order t, h, w).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from modeling.names import CLASS_TASKS as CLASS_TASKS  # re-exported: modeling.commit and others read it here
from modeling.names import TASKS

TASK_IDS = {task: i for i, task in enumerate(TASKS)}
# What each task generates from what, in words (for `--help`, the serve page and the docs; the table above has
# the exact regions).
TASK_DESCRIPTIONS = {
    "fp": "frame prediction: continue the input's first frame",
    "fi": "frame interpolation: fill in between the input's first and last frames",
    "opc": "central outpainting: keep the input's central box, generate the border around it",
    "opv": "vertical outpainting: keep the input's central vertical strip, generate left and right",
    "oph": "horizontal outpainting: keep the input's central horizontal strip, generate top and bottom",
    "opd": "dynamic outpainting: keep a half-width strip sweeping left to right, generate the rest",
    "ipc": "central inpainting: generate the central box, keep the rest of the input",
    "ipd": "dynamic inpainting: generate a box sweeping left to right, keep the rest of the input",
    "cg": "class-conditional generation: a clip from the class alone (--class; no input)",
    "cfp": "class-conditional frame prediction: fp, steered by the class (--class)",
}
DYNAMIC_TASKS = ("opd", "ipd")
DEFAULT_STRIDE = (4, 8, 8)  # MAGVIT 3D-VQ: 4x temporal, 8x8 spatial
FP_COND_FRAMES = {"bair": 1, "kinetics600": 5}  # sec. 4.1: "BAIR (1-frame condition), Kinetics-600 (5-frame)"


@dataclass(frozen=True)
class TaskParams:
    """Per-task geometry. `cond_frames`: fp/cfp leading frames given; fi frames given at *each* end.
    `offsets`: opd/ipd left column of the moving W//2-wide region, per frame, (T,) or (B, T) long."""

    cond_frames: int = 1
    offsets: torch.Tensor | None = None


def _check_task(task: str) -> None:
    if task not in TASK_IDS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def paper_offsets(num_frames: int, width: int) -> torch.Tensor:
    """The reference trajectory: o_t = round(linspace(0, W//2, T)), left edge to the right half. (T,) long."""
    return torch.round(torch.linspace(0, width // 2, num_frames, dtype=torch.float64)).long()


def default_task_params(task: str, shape: Sequence[int], *, cond_frames: int | None = None) -> TaskParams:
    """The paper's fixed geometry for a video of `shape` (..., T, H, W). fp/cfp/fi default to 1 frame."""
    _check_task(task)
    num_frames, _, width = shape[-3:]
    offsets = paper_offsets(num_frames, width) if task in DYNAMIC_TASKS else None
    return TaskParams(cond_frames=1 if cond_frames is None else cond_frames, offsets=offsets)


def sample_task_params(
    task: str,
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    *,
    cond_frames: int | None = None,
    random_motion: bool = False,
) -> TaskParams:
    """Training-time parameters for one step. The reference samples nothing but the task: every region is
    fixed, so by default this returns `default_task_params`. `random_motion=True` (an extension, not in the
    paper) draws a start and end column for the moving region uniformly in [0, W - W//2] and moves linearly
    between them, so opd/ipd also see right-to-left and still regions."""
    params = default_task_params(task, shape, cond_frames=cond_frames)
    if not (random_motion and task in DYNAMIC_TASKS):
        return params
    num_frames, _, width = shape[-3:]
    start, end = torch.randint(0, width - width // 2 + 1, (2,), generator=generator).tolist()
    offsets = torch.round(torch.linspace(start, end, num_frames, dtype=torch.float64)).long()
    return TaskParams(cond_frames=params.cond_frames, offsets=offsets)


def sample_task(
    generator: torch.Generator | None = None,
    tasks: Sequence[str] = TASKS,
    weights: Sequence[float] | None = None,
) -> str:
    """One task per training step (the reference samples one task for the whole batch)."""
    probs = torch.ones(len(tasks)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    return tasks[int(torch.multinomial(probs, 1, generator=generator))]


def condition_pixel_mask(
    task: str,
    shape: Sequence[int],
    params: TaskParams | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(B, C, T, H, W) shape -> pixel_mask (B, 1, T, H, W) bool, True where the task gives the pixel."""
    _check_task(task)
    params = params or default_task_params(task, shape)
    b, _, t, h, w = shape
    ti = torch.arange(t, device=device)[:, None, None]
    yi = torch.arange(h, device=device)[None, :, None]
    xi = torch.arange(w, device=device)[None, None, :]
    rows = (yi >= h // 4) & (yi < h * 3 // 4)
    cols = (xi >= w // 4) & (xi < w * 3 // 4)
    k = params.cond_frames
    if task in ("fp", "cfp"):
        if not 0 < k < t:
            raise ValueError(f"{task}: cond_frames must be in [1, {t - 1}], got {k}")
        mask = ti < k
    elif task == "fi":
        if not 0 < 2 * k < t:
            raise ValueError(f"fi: 2 * cond_frames must be in [1, {t - 1}], got {2 * k}")
        mask = (ti < k) | (ti >= t - k)
    elif task == "opc":
        mask = rows & cols
    elif task == "opv":
        mask = cols
    elif task == "oph":
        mask = rows
    elif task == "ipc":
        mask = ~(rows & cols)
    elif task in DYNAMIC_TASKS:
        if params.offsets is None:
            raise ValueError(f"{task}: params.offsets is required")
        offsets = params.offsets.to(device).reshape(-1, t)[:, :, None, None]  # (1 or B, T, 1, 1)
        moving = (xi >= offsets) & (xi < offsets + w // 2)  # (1 or B, T, 1, W)
        mask = moving if task == "opd" else ~(rows & moving)
    elif task == "cg":
        mask = torch.zeros(1, 1, 1, dtype=torch.bool, device=device)
    if mask.dim() == 3:
        mask = mask[None]
    return mask.expand(b, t, h, w)[:, None]


def condition_video(
    task: str, video: torch.Tensor, params: TaskParams | None = None, *, pad_value: float = -1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The padding function: video (B, C, T, H, W) in [-1, 1] -> (V~ (B, C, T, H, W), pixel_mask (B, 1, T, H, W)).

    Given pixels are copied bit-exact; the rest is filled as in the module table.
    """
    params = params or default_task_params(task, video.shape)
    pixel_mask = condition_pixel_mask(task, video.shape, params, video.device)
    _, _, t, h, w = video.shape
    k = params.cond_frames
    if task in ("fp", "cfp"):
        frames = torch.arange(t, device=video.device).clamp(max=k - 1)
        cond = video.index_select(2, frames)
    elif task == "fi":
        length = t - 2 * k
        start, end = video[:, :, k - 1 : k], video[:, :, t - k : t - k + 1]
        frac = torch.arange(1, length + 1, device=video.device, dtype=video.dtype) / (length + 1)
        middle = start + (end - start) * frac[:, None, None]
        cond = torch.cat([video[:, :, :k], middle, video[:, :, t - k :]], dim=2)
    elif task in ("opc", "opv", "oph"):
        ys = torch.arange(h, device=video.device)
        xs = torch.arange(w, device=video.device)
        if task in ("opc", "oph"):
            ys = ys.clamp(h // 4, h * 3 // 4 - 1)
        if task in ("opc", "opv"):
            xs = xs.clamp(w // 4, w * 3 // 4 - 1)
        cond = video.index_select(3, ys).index_select(4, xs)
    else:  # opd, ipc, ipd, cg: constant padding
        cond = torch.where(pixel_mask, video, torch.full_like(video, pad_value))
    return cond, pixel_mask


def _blocks(pixel_mask: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """(B, 1, T, H, W) -> (B, t, h, w, st*sh*sw): the pixels of each token's supervoxel."""
    b, _, t, h, w = pixel_mask.shape
    st, sh, sw = stride
    if t % st or h % sh or w % sw:
        raise ValueError(f"pixel grid {(t, h, w)} is not divisible by the tokenizer stride {tuple(stride)}")
    x = pixel_mask.reshape(b, t // st, st, h // sh, sh, w // sw, sw)
    return x.permute(0, 1, 3, 5, 2, 4, 6).reshape(b, t // st, h // sh, w // sw, -1)


def ispad(pixel_mask: torch.Tensor, stride: Sequence[int] = DEFAULT_STRIDE) -> torch.Tensor:
    """Eq. 2's ispad: (B, 1, T, H, W) bool -> (B, t, h, w) bool, True where the token's supervoxel holds no given
    pixel (it "only contains padding"). A half-given block is *not* padding."""
    return ~_blocks(pixel_mask, stride).any(dim=-1)


def condition_token_mask(pixel_mask: torch.Tensor, stride: Sequence[int] = DEFAULT_STRIDE) -> torch.Tensor:
    """(B, 1, T, H, W) bool -> (B, t, h, w) bool, True where *every* pixel of the token's supervoxel is given.

    Informational (how much of the condition is clean); Eq. 2 replaces with z~ wherever `~ispad` holds.
    """
    return _blocks(pixel_mask, stride).all(dim=-1)


def infer_stride(video_shape: Sequence[int], token_shape: Sequence[int]) -> tuple[int, int, int]:
    """Tokenizer stride from a video (..., T, H, W) and its token grid (..., t, h, w)."""
    stride = []
    for pixels, tokens in zip(video_shape[-3:], token_shape[-3:], strict=True):
        if pixels % tokens:
            raise ValueError(f"video {tuple(video_shape)} does not tile into tokens {tuple(token_shape)}")
        stride.append(pixels // tokens)
    return tuple(stride)  # type: ignore[return-value]


@dataclass
class CommitCondition:
    """One batch's COMMIT condition: z (B, N) targets, z_cond (B, N) = f_T(V~), cond_mask (B, N) = ~ispad."""

    z: torch.Tensor
    z_cond: torch.Tensor
    cond_mask: torch.Tensor
    grid: tuple[int, int, int]  # (t, h, w)
    pixel_mask: torch.Tensor  # (B, 1, T, H, W)


@torch.no_grad()
def tokenize_with_condition(
    encode: Callable[[torch.Tensor], torch.Tensor],
    video: torch.Tensor,
    task: str,
    params: TaskParams | None = None,
    *,
    pad_value: float = -1.0,
) -> CommitCondition:
    """Any tokenizer `encode(video (B, C, T, H, W)) -> (B, t, h, w)`: z = f_T(V), z~ = f_T(V~) in one batch of 2B
    (as the reference does); the stride comes from the shapes. cg has no condition pixels, so V~ is not
    encoded and z_cond is all zeros (never read: cond_mask is all False)."""
    cond_video, pixel_mask = condition_video(task, video, params, pad_value=pad_value)
    b = video.shape[0]
    if task == "cg":
        z = encode(video)
        z_cond = torch.zeros_like(z)
    else:
        z, z_cond = encode(torch.cat([video, cond_video])).split(b)
    grid = tuple(z.shape[1:])
    cond_mask = ~ispad(pixel_mask, infer_stride(video.shape, grid))
    return CommitCondition(
        z.reshape(b, -1), z_cond.reshape(b, -1), cond_mask.reshape(b, -1), grid, pixel_mask
    )
