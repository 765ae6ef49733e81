"""MAGVIT generation (a COMMIT checkpoint): the ten tasks of `modeling.commit_tasks` on a given video, decoded by
Algorithm 1 (`modeling.commit_model.commit_generate`), behind the same loading contract as Phenaki's
`modeling.generation.VideoGenerator` (`modeling.generators` picks one by the checkpoint's kind).

The input is frames, not files: reading a video or a still is the caller's (`jobs.generate.read_media`), so
this module stays pure PyTorch. Axes: B clips, T frames, S pixels (square), t/h/w the token grid.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modeling.checkpoint import GenerationRecord, TokenizerRecord, load_checkpoint, save_checkpoint
from modeling.commit import TASKS, CommitConfig, commit_debug, condition_video, infer_stride, ispad
from modeling.commit_model import CommitTransformer, commit_generate, commit_transformer_debug
from modeling.magvit_vq import MagvitVQ, magvit_vq_debug
from modeling.pixels import frames_to_video, resize_center_crop, video_to_frames
from modeling.text_encoder import load_text_encoder
from modeling.tokenizers import check_tokenizer_for
from modeling.typed_config import build_dataclass

log = logging.getLogger(__name__)

COMMIT_KIND = "commit"


@dataclass
class CommitOutput:
    task: str
    frames: np.ndarray  # (B, T, H, W, 3) uint8: the decoded output
    tokens: object  # (B, t, h, w) long torch tensor: Algorithm 1's output
    cond_tokens: object  # (B, t, h, w) long: z~ = f_T(V~) (zeros for cg)
    cond_mask: object  # (B, t, h, w) bool: Eq. 2's ~ispad, where z~ entered the decoder
    pixel_mask: object  # (B, 1, T, H, W) bool: the task's given pixels
    condition: object  # (B, 3, T, H, W) float in [-1, 1]: V~
    seconds: float

    def kept_fraction(self) -> float:
        """Fraction of condition positions whose output token equals z~ (Algorithm 1 refines them, so < 1
        is allowed); nan without condition tokens (cg)."""
        n = int(self.cond_mask.sum())
        return float(((self.tokens == self.cond_tokens) & self.cond_mask).sum()) / n if n else float("nan")


class CommitGenerator:
    """A loaded COMMIT transformer + its MAGVIT-VQ tokenizer (+ lazily its text encoder)."""

    kind = COMMIT_KIND  # `modeling.generators.GENERATORS`
    title = "MAGVIT COMMIT"

    def __init__(self, model, tokenizer, *, extra: dict, device: str = "cpu", meta: dict | None = None):
        self.device = device
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer.to(device).eval()
        self.record = GenerationRecord.from_extra(extra)
        self.num_frames = self.record.num_frames
        self.fps = self.record.fps
        self.cfg = build_dataclass(CommitConfig, self.record.commit)
        self.class_names = list(self.record.class_names)
        self.grid = tuple(self.tokenizer.token_grid(self.num_frames))
        self.image_size = int(self.tokenizer.cfg.image_size)
        self.meta = meta or {}
        self._text_encoder = None
        if self.tokenizer.cfg.codebook_size != self.model.cfg.codebook_size:
            raise ValueError("the tokenizer's and the transformer's codebook sizes differ")

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> CommitGenerator:
        path = Path(path)
        loaded = load_checkpoint(path, device)
        if loaded.kind != COMMIT_KIND:
            raise ValueError(f"{path} holds a {loaded.kind!r} checkpoint, not a COMMIT transformer")
        tok = load_checkpoint(path / "tokenizer", device)
        check_tokenizer_for(COMMIT_KIND, tok.kind, f"{path}/tokenizer")
        meta = {"checkpoint": str(path.resolve()), "digest": loaded.digest, "tokenizer_digest": tok.digest}
        return cls(loaded.model, tok.model, extra=loaded.extra, device=device, meta=meta)

    # ---- inputs ---------------------------------------------------------------------------------------
    def fit_frames(self, frames: np.ndarray) -> np.ndarray:
        """A decoded video or still (T, H, W, 3) uint8 -> (num_frames, S, S, 3) at the tokenizer's size and clip
        length: resized and centre-cropped, cut, and a shorter input holds its last frame."""
        frames = resize_center_crop(np.asarray(frames)[: self.num_frames], self.image_size)
        if len(frames) < self.num_frames:
            log.info("input has %d frames < %d: holding the last frame", len(frames), self.num_frames)
            frames = np.concatenate([frames, np.repeat(frames[-1:], self.num_frames - len(frames), axis=0)])
        return frames

    def class_id(self, value: str | int | None) -> int | None:
        """An id or a class name (`class_names` from the training config) -> id; None stays None."""
        if value is None:
            return None
        if isinstance(value, str) and not value.lstrip("-").isdigit():
            if value not in self.class_names:
                raise ValueError(f"unknown class {value!r}; classes: {self.class_names}")
            return self.class_names.index(value)
        cid = int(value)
        if not -1 <= cid < self.model.cfg.num_classes:
            raise ValueError(f"class id must be in [-1, {self.model.cfg.num_classes}), got {cid}")
        return cid

    @property
    def text_encoder(self):
        """The checkpoint's text encoder (loaded on first use); ValueError for a model trained without text."""
        if not self.model.text:
            raise ValueError("this COMMIT model was trained without text (transformer.text: false)")
        if self._text_encoder is None:
            self._text_encoder = load_text_encoder(self.record.text_encoder, self.record.max_text_length)
            self._text_encoder.to(self.device)
        return self._text_encoder

    def encode_text(self, prompts: list[str]):
        emb, mask = self.text_encoder.encode(list(prompts))
        return emb.to(self.device), mask.to(self.device)

    # ---- generation -----------------------------------------------------------------------------------
    def generate(
        self,
        task: str,
        frames: np.ndarray | None = None,
        *,
        class_ids: list[int] | None = None,
        prompts: list[str] | None = None,
        seed: int = 0,
        guidance_scale: float = 0.0,
        on_step: Callable[[int], None] | None = None,
        **overrides,
    ) -> CommitOutput:
        """frames (B, T, H, W, 3) or (T, H, W, 3) uint8 at the tokenizer's size (None for cg) -> CommitOutput.

        `overrides`: CommitConfig decoding fields (steps, temperature, sample_temperature, confidence);
        `on_step(steps done)` after each decoding step (`modeling.sampling.parallel_decode`)."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; tasks: {list(TASKS)}")
        cfg = dataclasses.replace(self.cfg, **{k: v for k, v in overrides.items() if v is not None})
        start = time.perf_counter()
        video = None
        if frames is not None:
            frames = np.asarray(frames)
            frames = frames[None] if frames.ndim == 4 else frames
            video = torch.cat([frames_to_video(f) for f in frames]).to(self.device)
            if tuple(video.shape[2:]) != (self.num_frames, self.image_size, self.image_size):
                raise ValueError(
                    f"frames must be {self.num_frames}x{self.image_size}x{self.image_size}, got {tuple(video.shape[2:])}"
                )
        elif task != "cg":
            raise ValueError(f"{task} needs an input video (its condition)")
        batch = video.shape[0] if video is not None else max(len(class_ids or ()), len(prompts or ()), 1)
        classes = None  # one class or one prompt is used for every clip of the batch
        if class_ids is not None:
            classes = torch.as_tensor(class_ids, dtype=torch.long).reshape(-1).expand(batch).clone()
        text = text_mask = None
        if prompts:
            text, text_mask = self.encode_text(prompts)
            if text.shape[0] == 1 and batch > 1:
                text, text_mask = text.expand(batch, -1, -1), text_mask.expand(batch, -1)
        gen = torch.Generator().manual_seed(int(seed))
        tokens = commit_generate(
            self.model, self.tokenizer.encode, video, task, classes, cfg=cfg, generator=gen, text=text,
            text_mask=text_mask, guidance_scale=guidance_scale, grid=self.grid, on_step=on_step,
        )  # fmt: skip
        shape = (batch, 3, self.num_frames, self.image_size, self.image_size)
        with torch.no_grad():
            out = video_to_frames(self.tokenizer.decode(tokens))
            if task == "cg":
                cond = torch.full(shape, cfg.pad_value)
                pixel_mask = torch.zeros(batch, 1, *shape[2:], dtype=torch.bool)
                z_cond, cond_mask = torch.zeros_like(tokens), torch.zeros_like(tokens, dtype=torch.bool)
            else:
                params = cfg.task_params(task, shape)
                cond, pixel_mask = condition_video(task, video, params, pad_value=cfg.pad_value)
                z_cond = self.tokenizer.encode(cond)
                cond_mask = ~ispad(pixel_mask, infer_stride(shape, z_cond.shape))
        return CommitOutput(
            task, out, tokens.cpu(), z_cond.cpu(), cond_mask.cpu(), pixel_mask.cpu(), cond.cpu(),
            time.perf_counter() - start,
        )  # fmt: skip


def write_debug_commit_checkpoint(
    directory: str | Path,
    *,
    text_dim: int | None = None,
    class_names: tuple[str, ...] = ("left", "right", "up", "down"),
    fps: float = 8.0,
    seed: int = 0,
    **commit,
) -> Path:
    """An untrained, tiny COMMIT checkpoint in `train-transformer`'s layout (the magvit_vq_debug 3D-VQ under
    tokenizer/, 16x32x32 clips -> 4x4x4 tokens; `commit_transformer_debug`): tests and smoke runs of
    serve/generate. `text_dim` (384 for minilm) makes it text-conditioned; `commit`: CommitConfig overrides."""
    directory = Path(directory)
    torch.manual_seed(seed)
    tok_cfg = magvit_vq_debug()
    model_cfg = commit_transformer_debug(num_classes=len(class_names), text_dim=text_dim)
    num_frames = model_cfg.grid[0] * 4  # the debug 3D-VQ's temporal stride
    cfg = commit_debug(codebook_size=model_cfg.codebook_size, num_classes=model_cfg.num_classes, **commit)
    record = GenerationRecord(
        num_frames, fps, text_encoder="minilm", max_text_length=24, commit=dataclasses.asdict(cfg),
        class_names=tuple(class_names), token_grid=tuple(model_cfg.grid),
    )  # fmt: skip
    save_checkpoint(directory, CommitTransformer(model_cfg).eval(), model_cfg, record.to_extra())
    save_checkpoint(
        directory / "tokenizer",
        MagvitVQ(tok_cfg).eval(),
        tok_cfg,
        TokenizerRecord(num_frames, fps).to_extra(),
    )
    return directory
