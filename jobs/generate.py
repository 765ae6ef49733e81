"""`phenaki generate`: sample a video from a transformer checkpoint, on this machine (no Ray needed).

One --prompt gives one clip; several tell a story, one segment per prompt (Phenaki sec. 3.3); --image
animates a still (its tokens fix the first frame). Writes an MP4 (or a GIF when --out ends in .gif).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jobs.runtime import log, setup_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="transformer checkpoint dir (holds tokenizer/)")
    parser.add_argument(
        "--prompt",
        action="append",
        required=True,
        help="text prompt; repeat for a story (one segment per prompt)",
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


def main(args: argparse.Namespace) -> int:
    import torch

    from modeling.generation import VideoGenerator
    from pipelines.media import decode_image, encode_mp4_file, write_gif

    setup_logging()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
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
    parser = argparse.ArgumentParser(prog="python -m jobs.generate", description=__doc__)
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    raise SystemExit(main(build_parser().parse_args()))
