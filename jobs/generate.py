"""`phenaki generate`: sample a video from a transformer checkpoint, on this machine (no Ray needed).

Phenaki (a MaskGIT checkpoint): one --prompt gives one clip; several tell a story, one segment per prompt
(Phenaki sec. 3.3); --image animates a still (its tokens fix the first frame).

MAGVIT (a COMMIT checkpoint, `transformer.family: commit`): `--task fp|fi|opc|opv|oph|opd|ipc|ipd|cg|cfp
--input VIDEO` runs one of the ten tasks (`modeling.commit_tasks`) on the input's given region: the video (or
a still, for fp/cfp) is resized and centre-cropped to the tokenizer's size and cut to the checkpoint's clip
length (a shorter input holds its last frame), padded into V~, encoded into z~ and decoded by Algorithm 1
(`commit_generate`); cg needs no input. `--class ID|NAME` gives cg/cfp their class, `--prompt` text when the
model was trained with text. The same as Python APIs: `modeling.generators.load_generator(checkpoint)`.

Writes an MP4 (or a GIF when --out ends in .gif).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from jobs.runtime import log, run_command

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def read_media(src: str | Path | bytes, max_frames: int) -> np.ndarray:
    """A video or a still (a file, or its bytes) -> (T, H, W, 3) uint8, at most `max_frames` frames."""
    from pipelines.media import MediaError, decode_image, decode_video

    if isinstance(src, bytes):
        try:
            return decode_video(src, max_frames=max_frames).frames
        except MediaError:
            return decode_image(src)[None]
    if Path(src).suffix.lower() in IMAGE_SUFFIXES:
        return decode_image(src)[None]
    return decode_video(src, max_frames=max_frames).frames


def read_condition(generator, src: str | Path | bytes) -> np.ndarray:
    """What a COMMIT task is given, read as `phenaki generate --input` and the server read it: the video or
    still at the tokenizer's size and the checkpoint's clip length (`CommitGenerator.fit_frames`)."""
    return generator.fit_frames(read_media(src, generator.num_frames))


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
    from modeling.commit_generation import CommitGenerator

    if not args.task:
        raise SystemExit(f"{args.checkpoint} is a COMMIT (MAGVIT) checkpoint: give --task and --input")
    generator = CommitGenerator.from_checkpoint(args.checkpoint, device=device)
    frames = read_condition(generator, args.input) if args.input else None
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


def phenaki_main(args: argparse.Namespace, device: str) -> int:
    from modeling.generation import VideoGenerator
    from pipelines.media import decode_image

    for flag, value in (("--task", args.task), ("--input", args.input), ("--class", args.class_id)):
        if value is not None:
            raise SystemExit(
                f"{flag} is a MAGVIT option; {args.checkpoint} is a Phenaki (MaskGIT) checkpoint"
            )
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
    written = write_video(video.frames, Path(args.out), video.fps, args.gif)
    mode = "animation" if image is not None else ("story" if len(prompts) > 1 else "clip")
    log.info(
        "%s: %d frames at %g fps (%.2f s of video) in %.2f s; segments %s", mode, len(video.frames), video.fps,
        video.duration, video.seconds, json.dumps(video.segments),
    )  # fmt: skip
    for path in written:
        print(f"wrote {path.resolve()}")
    return 0


MAINS = {"maskgit": phenaki_main, "commit": commit_main}  # by `modeling.generators.generator_kind`


def main(args: argparse.Namespace) -> int:
    import torch

    from modeling.generators import generator_kind

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return MAINS[generator_kind(args.checkpoint)](args, device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.generate", description=__doc__, allow_abbrev=False)
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    raise SystemExit(run_command("python -m jobs.generate", main, build_parser().parse_args()))
