"""`phenaki eval`: detector-based adherence of generated videos to their prompts, or a tokenizer's fidelity.

Either a demo/generation `results.json` (records `{"prompts": [...], "file": ..., "segments": ...}`, files
relative to the JSON's directory), one `--video` with its `--prompt`(s), `--checkpoint CKPT` (a transformer
checkpoint: it generates every held-out and purple composition of the synthetic world with `--seeds` seeds,
and the detector reads them; a COMMIT checkpoint runs every task on 72 fresh clips instead), or `--tokenizer
CKPT` (a tokenizer checkpoint, or a transformer checkpoint with its tokenizer inside): the detector on the
tokenizer's reconstructions of fresh clips of every colour x shape x motion (`pipelines.fidelity`). Every
figure leads with "one clean object": colour, shape and motion count only on a video that shows one.

The papers' metrics come after, when their networks' weight files are given (docs/metrics.md): FVD / FID /
IS / CLIP score of a set of videos (--results, --videos, or a Phenaki checkpoint's generated videos) against
--real clips, PSNR / SSIM / LPIPS of paired videos, of a tokenizer's reconstructions and of each COMMIT
task's outputs (`pipelines.metrics`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jobs.runtime import run_command
from pipelines.metrics import MetricWeights, SetOptions, load_networks, paired_metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", help="results.json written by `phenaki demo`")
    parser.add_argument("--video", help="one video file to score")
    parser.add_argument("--prompt", action="append", default=[], help="the video's prompt(s)")
    parser.add_argument(
        "--checkpoint",
        help="transformer checkpoint: generate the held-out and purple "
        "compositions and read them (videos go to <checkpoint>/eval-videos); a COMMIT "
        "checkpoint: every task on 72 fresh clips, read against each clip's truth",
    )
    parser.add_argument("--seeds", type=int, default=4, help="--checkpoint: samples per composition")
    parser.add_argument(
        "--sampling",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="--checkpoint: a sampling setting instead of the checkpoint's (e.g. guidance_scale=1.5)",
    )
    parser.add_argument(
        "--tokenizer",
        help="tokenizer checkpoint (or a transformer checkpoint holding one): "
        "object fidelity of its reconstructions",
    )
    parser.add_argument("--repeats", type=int, default=1, help="--tokenizer: 72 fresh clips per repeat")
    parser.add_argument(
        "--frames",
        type=int,
        default=None,
        help="--tokenizer: frames per clip (default: the checkpoint's training clips)",
    )
    parser.add_argument("--videos", help="a folder of generated videos (instead of --results; no prompts)")
    parser.add_argument("--out", help="write the full evaluation as JSON here")
    metrics = parser.add_argument_group(
        "the papers' metrics (docs/metrics.md): each runs when its network's local weights are given"
    )
    metrics.add_argument(
        "--i3d", metavar="PATH", help="FVD: pytorch-i3d's rgb_imagenet.pt (Kinetics-400 I3D)"
    )
    metrics.add_argument(
        "--inception", metavar="PATH", help="FID and IS: pytorch-fid's FID Inception weights"
    )
    metrics.add_argument("--clip", metavar="DIR", help="CLIP score: a transformers CLIP model directory")
    metrics.add_argument("--lpips-vgg", metavar="PATH", help="LPIPS: torchvision's VGG16 state dict")
    metrics.add_argument(
        "--lpips-lin", metavar="PATH", help="LPIPS: the lpips package's vgg.pth linear layers"
    )
    metrics.add_argument(
        "--real",
        metavar="SOURCE",
        help="real clips for FVD / FID of --results, --videos or --checkpoint: a clip-shard directory from "
        "`phenaki prepare` or a folder of videos (same file names as --videos: PSNR / SSIM / LPIPS too)",
    )
    metrics.add_argument(
        "--metric-workers",
        type=int,
        default=1,
        help="Ray Data actors extracting features of --results / --videos / --real (0: in this process)",
    )
    metrics.add_argument(
        "--image-frames",
        type=int,
        default=None,
        metavar="N",
        help="FID / IS / CLIP score of video sets read N evenly spaced frames per video (default: every frame)",
    )


def metric_settings(args: argparse.Namespace) -> tuple[MetricWeights, SetOptions]:
    """The feature networks' weight files and the metric options, checked before anything runs."""
    options = SetOptions(workers=args.metric_workers, image_frames=args.image_frames).validate()
    if args.real and not Path(args.real).exists():
        raise FileNotFoundError(f"--real {args.real}: no such clip-shard directory or folder of videos")
    weights = MetricWeights(args.i3d, args.inception, args.clip, args.lpips_vgg, args.lpips_lin).validate()
    if args.real and not (weights.i3d or weights.inception or weights.lpips):
        raise ValueError(
            "--real is compared through FVD (--i3d), FID (--inception) or LPIPS (--lpips-*): give one"
        )
    return weights, options


def tokenizer_fidelity_report(
    checkpoint: str, repeats: int = 1, frames: int | None = None, weights: MetricWeights | None = None
) -> dict:
    """Object fidelity of a tokenizer checkpoint (or of the one inside a transformer checkpoint), and the
    reconstructions' PSNR / SSIM (and LPIPS, FVD, FID with `weights`) against their clips."""
    from modeling.checkpoint import load_checkpoint, read_checkpoint_meta
    from modeling.tokenizers import FAMILIES
    from pipelines.fidelity import fidelity_clips, tokenizer_fidelity

    path = Path(checkpoint)
    if read_checkpoint_meta(path).get("kind") not in FAMILIES:
        path = path / "tokenizer"  # a transformer checkpoint carries its tokenizer here
    loaded = load_checkpoint(path)
    frames = frames or loaded.tokenizer_record.num_frames
    clips = fidelity_clips(loaded.model.cfg.image_size, frames, repeats)
    report, recon = tokenizer_fidelity(loaded.model, clips)
    metrics = paired_metrics(clips.frames, recon, load_networks(weights or MetricWeights()))
    return {"tokenizer": str(path), "frames": frames, **report, "reconstruction": metrics}


def checkpoint_adherence_report(
    checkpoint: str, seeds: int, sampling: list[str], weights: MetricWeights | None = None
) -> dict:
    """The held-out and purple compositions generated by a transformer checkpoint, read by the detector; for a
    COMMIT checkpoint, every task on fresh clips with its metrics against the clips (`commit_task_report`)."""
    from modeling.generators import generator_kind

    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    return ADHERENCE_REPORTS[generator_kind(checkpoint)](checkpoint, seeds, sampling, weights)


def phenaki_adherence_report(
    checkpoint: str, seeds: int, sampling: list[str], weights: MetricWeights | None = None
) -> dict:
    """The held-out and purple compositions a Phenaki checkpoint generates, `seeds` samples each, read by the
    detector (`pipelines.evaluate.generated_adherence`); `sampling`: key=value changes to its defaults. The
    videos and their prompts stay in <checkpoint>/eval-videos (with a results.json), where `main` measures them
    as a set with `weights`; here they are only made and read."""
    import dataclasses

    from jobs.runtime import key_value_pairs
    from modeling.generation import SamplingConfig, VideoGenerator
    from pipelines.evaluate import generated_adherence

    changes = key_value_pairs(sampling, "--sampling")
    gen = VideoGenerator.from_checkpoint(checkpoint)
    cfg = SamplingConfig.from_dict({**dataclasses.asdict(gen.defaults), **changes})
    summary = generated_adherence(gen, seeds, cfg, Path(checkpoint) / "eval-videos")
    return {"checkpoint": str(checkpoint), "seeds": seeds, "sampling": dataclasses.asdict(cfg), **summary}


def commit_adherence_report(
    checkpoint: str, seeds: int, sampling: list[str], weights: MetricWeights | None = None
) -> dict:
    if sampling:
        raise ValueError(
            "--sampling applies to Phenaki checkpoints; a COMMIT checkpoint decodes with its own"
        )
    return commit_task_report(checkpoint, seeds, weights=weights)


def commit_task_report(
    checkpoint: str, seeds: int = 1, batch_size: int = 24, weights: MetricWeights | None = None
) -> dict:
    """Every COMMIT task on the 72 fresh clips of every colour x shape x motion (`pipelines.fidelity`, which
    the models never saw), `seeds` samples each, read by the detector against each clip's truth. cg and cfp get
    the clip's motion as their class. What a task can know: fp the colour and shape (not the motion), cg only
    the motion, cfp all three, fi and the out/inpainting tasks all three from the pixels they keep.

    Each task's `metrics` compare its videos with the clips (`pipelines.metrics.paired_metrics`): PSNR and SSIM
    (not for cg, which is given no pixels), and with `weights` LPIPS, FVD and FID."""
    import numpy as np

    from modeling.commit_generation import CommitGenerator
    from modeling.commit_tasks import CLASS_TASKS
    from pipelines.fidelity import fidelity_clips, score_reconstructions

    generator = CommitGenerator.from_checkpoint(checkpoint)
    clips = fidelity_clips(generator.image_size, generator.num_frames)
    classes = [
        generator.class_names.index(m) if m in generator.class_names else -1 for _, _, m in clips.truths
    ]
    nets = load_networks(weights or MetricWeights())
    tasks = {}
    for task in generator.cfg.tasks:
        videos = []
        for seed in range(seeds):
            for i in range(0, len(clips.frames), batch_size):
                frames = None if task == "cg" else clips.frames[i : i + batch_size]
                ids = classes[i : i + batch_size] if task in CLASS_TASKS else None
                out = generator.generate(task, frames, class_ids=ids, seed=seed)
                videos.append(out.frames)
        outputs = np.concatenate(videos)
        report = score_reconstructions(outputs, clips.truths * seeds)
        metrics = paired_metrics(np.concatenate([clips.frames] * seeds), outputs, nets)
        if task == "cg":  # generated from a class alone: no pixel is owed to any one clip
            metrics = {k: v for k, v in metrics.items() if k not in ("psnr_db", "ssim", "lpips")}
        tasks[task] = {**{k: v for k, v in report.items() if k != "per_clip"}, "metrics": metrics}
    return {"checkpoint": str(checkpoint), "seeds": seeds, "tasks": tasks}


# by `modeling.generators.generator_kind` of the checkpoint
ADHERENCE_REPORTS = {"maskgit": phenaki_adherence_report, "commit": commit_adherence_report}


def _emit(report: dict, out: str | None, detail: str | None = None) -> int:
    """Print the report (without its per-item `detail` key); write all of it to `out` when given."""
    print(json.dumps({k: v for k, v in report.items() if k != detail}, indent=2))
    if out:
        Path(out).write_text(json.dumps(report, indent=2))
    return 0


def main(args: argparse.Namespace) -> int:
    from pipelines.detector import unscored_note
    from pipelines.evaluate import evaluate_videos, load_records
    from pipelines.fidelity import summary_line
    from pipelines.metrics import metrics_line, records_refs, set_metrics_report, set_refs

    weights, options = metric_settings(args)  # every flag checked before a model loads or Ray starts
    if args.checkpoint:
        report = checkpoint_adherence_report(args.checkpoint, args.seeds, args.sampling, weights)
        for task, numbers in report.get("tasks", {}).items():  # COMMIT: one line per task
            print(f"{task:>4}: {summary_line(numbers)}; {metrics_line(numbers['metrics'])}")
        if "tasks" not in report and weights.any:  # Phenaki: the videos it generated, as a set
            videos = set_refs(str(Path(args.checkpoint) / "eval-videos" / "results.json"))
            report["metrics"] = set_metrics_report(videos, args.real, weights, options)
            print(f"metrics: {metrics_line(report['metrics'])}")
        return _emit(report, args.out)
    if args.tokenizer:
        report = tokenizer_fidelity_report(args.tokenizer, args.repeats, args.frames, weights)
        print(f"object fidelity of {report['tokenizer']}: {summary_line(report)}")
        print(f"reconstructions: {metrics_line(report['reconstruction'])}")
        return _emit(report, args.out, "per_clip")
    if sum(map(bool, (args.results, args.video, args.videos))) != 1:
        raise SystemExit(
            "phenaki eval: pass --results results.json, --video FILE --prompt TEXT, --videos DIR, "
            "--checkpoint CKPT or --tokenizer CKPT"
        )
    if args.video and not args.prompt:
        raise SystemExit("phenaki eval: --video needs the --prompt it was generated from")
    if args.videos:  # no prompts: nothing for the detector to read
        if not weights.any:
            raise SystemExit(
                "phenaki eval: --videos is measured with --i3d, --inception, --clip or --lpips-*"
            )
        report = {"metrics": set_metrics_report(set_refs(args.videos), args.real, weights, options)}
        print(f"metrics: {metrics_line(report['metrics'])}")
        return _emit(report, args.out)
    records = load_records(args.results) if args.results else [{"prompts": args.prompt, "file": args.video}]
    prompts = dict.fromkeys(p for r in records for p in r["prompts"])  # each once, in order
    for note in filter(None, map(unscored_note, prompts)):
        print(f"note: {note}")
    report = evaluate_videos(records)
    if weights.any:  # the detector's figures (the weight-free metric) are printed first, then these
        print(json.dumps({k: v for k, v in report.items() if k != "segments"}, indent=2))
        report["metrics"] = set_metrics_report(records_refs(records), args.real, weights, options)
        print(f"metrics: {metrics_line(report['metrics'])}")
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2))
        return 0
    return _emit(report, args.out, "segments")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.eval", description=__doc__, allow_abbrev=False)
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    raise SystemExit(run_command("python -m jobs.eval", main, build_parser().parse_args()))
