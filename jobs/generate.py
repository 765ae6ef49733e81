"""`phenaki generate`: sample a video from a transformer checkpoint, on this machine (no Ray needed).

Phenaki (a MaskGIT checkpoint): one --prompt gives one clip; several tell a story, one segment per prompt
(Phenaki sec. 3.3); --image animates a still (its tokens fix the first frame).

MAGVIT (a COMMIT checkpoint, `transformer.family: commit`): `--task fp|fi|opc|opv|oph|opd|ipc|ipd|cg|cfp
--input VIDEO` runs one of the ten tasks (`modeling.commit_tasks`) on the input's given region: the video (or
a still, for fp/cfp) is resized and centre-cropped to the tokenizer's size and cut to the checkpoint's clip
length (a shorter input holds its last frame), padded into V~, encoded into z~ and decoded by Algorithm 1
(`commit_generate`); cg needs no input. `--class ID|NAME` gives cg/cfp their class, `--prompt` text when the
model was trained with text. `CommitGenerator` is the same thing as a Python API (for serve).

Writes an MP4 (or a GIF when --out ends in .gif).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jobs.runtime import log, run_command

COMMIT_KIND = "commit"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


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

    def __init__(self, model, tokenizer, *, extra: dict, device: str = "cpu", meta: dict | None = None):
        from modeling.checkpoint import GenerationRecord
        from modeling.commit import CommitConfig
        from modeling.typed_config import build_dataclass

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
        from modeling.checkpoint import load_checkpoint

        path = Path(path)
        loaded = load_checkpoint(path, device)
        if loaded.kind != COMMIT_KIND:
            raise ValueError(f"{path} holds a {loaded.kind!r} checkpoint, not a COMMIT transformer")
        tok = load_checkpoint(path / "tokenizer", device)
        if tok.kind != "magvit_vq":
            raise ValueError(f"{path}/tokenizer holds a {tok.kind!r} checkpoint, not a MAGVIT-VQ tokenizer")
        meta = {"checkpoint": str(path.resolve()), "digest": loaded.digest, "tokenizer_digest": tok.digest}
        return cls(loaded.model, tok.model, extra=loaded.extra, device=device, meta=meta)

    # ---- inputs ---------------------------------------------------------------------------------------
    def read_video(self, src: str | Path | bytes) -> np.ndarray:
        """A video or a still (a file, or its bytes) -> (T, S, S, 3) uint8 at the tokenizer's size and clip
        length."""
        from pipelines.media import MediaError, decode_image, decode_video, resize_center_crop

        if isinstance(src, bytes):
            try:
                frames = decode_video(src, max_frames=self.num_frames).frames
            except MediaError:
                frames = decode_image(src)[None]
        elif Path(src).suffix.lower() in IMAGE_SUFFIXES:
            frames = decode_image(src)[None]
        else:
            frames = decode_video(src, max_frames=self.num_frames).frames
        frames = resize_center_crop(frames[: self.num_frames], self.image_size)
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

    def encode_text(self, prompts: list[str]):
        from modeling.text_encoder import load_text_encoder

        if not self.model.text:
            raise ValueError("this COMMIT model was trained without text (transformer.text: false)")
        if self._text_encoder is None:
            self._text_encoder = load_text_encoder(self.record.text_encoder, self.record.max_text_length)
            self._text_encoder.to(self.device)
        emb, mask = self._text_encoder.encode(list(prompts))
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
        **overrides,
    ) -> CommitOutput:
        """frames (B, T, H, W, 3) or (T, H, W, 3) uint8 at the tokenizer's size (None for cg) -> CommitOutput.

        `overrides`: CommitConfig decoding fields (steps, temperature, sample_temperature, confidence)."""
        import torch

        from modeling.commit import TASKS, condition_video, infer_stride, ispad
        from modeling.commit_model import commit_generate
        from modeling.pixels import frames_to_video, video_to_frames

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
            text_mask=text_mask, guidance_scale=guidance_scale, grid=self.grid,
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
    import torch

    from modeling.checkpoint import save_checkpoint
    from modeling.commit import commit_debug
    from modeling.commit_model import CommitTransformer, commit_transformer_debug
    from modeling.magvit_vq import MagvitVQ, magvit_vq_debug

    directory = Path(directory)
    torch.manual_seed(seed)
    tok_cfg = magvit_vq_debug()
    model_cfg = commit_transformer_debug(num_classes=len(class_names), text_dim=text_dim)
    num_frames = model_cfg.grid[0] * 4  # the debug 3D-VQ's temporal stride
    cfg = commit_debug(codebook_size=model_cfg.codebook_size, num_classes=model_cfg.num_classes, **commit)
    extra = {
        "family": COMMIT_KIND, "num_frames": num_frames, "fps": fps, "text_encoder": "minilm",
        "max_text_length": 24, "commit": dataclasses.asdict(cfg), "class_names": list(class_names),
        "token_grid": list(model_cfg.grid),
    }  # fmt: skip
    save_checkpoint(directory, CommitTransformer(model_cfg).eval(), model_cfg, extra)
    save_checkpoint(
        directory / "tokenizer", MagvitVQ(tok_cfg).eval(), tok_cfg, {"num_frames": num_frames, "fps": fps}
    )
    return directory


def write_video(frames: np.ndarray, out: Path, fps: float, gif: bool) -> list[Path]:
    from pipelines.media import encode_mp4_file, write_gif

    if out.suffix.lower() == ".gif":
        return [write_gif(frames, out, fps)]
    written = [encode_mp4_file(frames, out, fps)]
    if gif:
        written.append(write_gif(frames, out.with_suffix(".gif"), fps))
    return written


def commit_main(args: argparse.Namespace, device: str) -> int:
    from modeling.commit import CLASS_TASKS

    if not args.task:
        raise SystemExit(f"{args.checkpoint} is a COMMIT (MAGVIT) checkpoint: give --task and --input")
    generator = CommitGenerator.from_checkpoint(args.checkpoint, device=device)
    frames = generator.read_video(args.input) if args.input else None
    class_id = generator.class_id(args.class_id)
    if args.task in CLASS_TASKS and class_id is None and not args.prompt:
        raise SystemExit(f"--task {args.task} needs --class ID (-1: the null class) or --prompt")
    if args.prompt and len(args.prompt) > 1:
        raise SystemExit("a COMMIT generation takes one --prompt (stories are a Phenaki feature)")
    prompts = list(args.prompt) if args.prompt else None
    result = generator.generate(
        args.task,
        frames,
        class_ids=None if class_id is None else [class_id],
        prompts=prompts,
        seed=args.seed or 0,
        guidance_scale=args.guidance_scale or 0.0,
        steps=args.steps,
        temperature=args.temperature,
    )
    written = write_video(result.frames[0], Path(args.out), generator.fps, args.gif)
    log.info(
        "%s: %d frames at %g fps, tokens %s, condition tokens kept %.3f, in %.2f s",
        args.task, result.frames.shape[1], generator.fps, list(result.tokens.shape[1:]),
        result.kept_fraction(), result.seconds,
    )  # fmt: skip
    for path in written:
        print(f"wrote {path.resolve()}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="transformer checkpoint dir (holds tokenizer/)")
    parser.add_argument(
        "--prompt",
        action="append",
        help="text prompt; repeat for a story (one segment per prompt). Required for Phenaki checkpoints",
    )
    parser.add_argument("--out", required=True, help="output file: .mp4 (default) or .gif")
    parser.add_argument("--image", help="animate this still image (any Pillow-readable file)")
    parser.add_argument("--steps", type=int, help="MaskGIT sampling steps (default: the checkpoint's)")
    parser.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale")
    parser.add_argument("--temperature", type=float, help="choice (Gumbel) temperature")
    parser.add_argument(
        "--context-frames", type=int, help="story: frames carried into the next segment (1 + j*t_p)"
    )
    parser.add_argument("--seed", type=int, help="random seed (default: the checkpoint's, 0)")
    parser.add_argument("--gif", action="store_true", help="also write a GIF next to the MP4")
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda when available, else cpu)"
    )
    from modeling.commit_tasks import TASK_DESCRIPTIONS, TASKS

    parser.add_argument(
        "--task", choices=TASKS, help="MAGVIT (COMMIT checkpoint): the generation task (below)"
    )
    parser.add_argument("--input", help="MAGVIT: the condition video (or a still for fp/cfp); cg needs none")
    parser.add_argument(
        "--class", dest="class_id", help="MAGVIT cg/cfp: class id or name (-1: the null class)"
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the task table's lines
    parser.epilog = "MAGVIT tasks (--task; docs/magvit.md has the exact regions):\n" + "\n".join(
        f"  {task:<4} {text}" for task, text in TASK_DESCRIPTIONS.items()
    )


def main(args: argparse.Namespace) -> int:
    import torch

    from modeling.checkpoint import read_checkpoint_meta
    from modeling.generation import VideoGenerator
    from pipelines.media import decode_image, encode_mp4_file, write_gif

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.task or read_checkpoint_meta(args.checkpoint).get("kind") == COMMIT_KIND:
        return commit_main(args, device)
    if not args.prompt:
        raise SystemExit("--prompt is required for a Phenaki (MaskGIT) checkpoint")
    generator = VideoGenerator.from_checkpoint(args.checkpoint, device=device)
    _ = generator.text_encoder  # load before the clock starts
    cfg = generator.defaults.replace(
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        temperature=args.temperature,
        context_frames=args.context_frames,
        seed=args.seed,
    )
    image = decode_image(args.image) if args.image else None
    prompts = list(args.prompt)
    log.info("sampling %d segment(s), %d MaskGIT steps each, on %s", len(prompts), cfg.steps, device)
    video = generator.generate(prompts, cfg, image=image)

    out = Path(args.out)
    written = []
    if out.suffix.lower() == ".gif":
        written.append(write_gif(video.frames, out, video.fps))
    else:
        written.append(encode_mp4_file(video.frames, out, video.fps))
        if args.gif:
            written.append(write_gif(video.frames, out.with_suffix(".gif"), video.fps))
    mode = "animation" if image is not None else ("story" if len(prompts) > 1 else "clip")
    log.info(
        "%s: %d frames at %g fps (%.2f s of video) in %.2f s; segments %s",
        mode,
        len(video.frames),
        video.fps,
        video.duration,
        video.seconds,
        json.dumps(video.segments),
    )
    for path in written:
        print(f"wrote {path.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.generate", description=__doc__, allow_abbrev=False)
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    raise SystemExit(run_command("python -m jobs.generate", main, build_parser().parse_args()))
