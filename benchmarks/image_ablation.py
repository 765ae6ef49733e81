"""Do images teach concepts the videos lack? Train the same transformer with and without the image data.

Phenaki (sec. 3.1, table 3) trains on video and image-text pairs jointly and claims the images teach concepts
no video shows. The synthetic world is built to test exactly that: purple appears only in stills. This
benchmark trains two demo-preset transformers on one token cache and one tokenizer, identical in everything
but `transformer_train.video_fraction` (0.8: the paper's 80/20 mix; 1.0: videos only), for the same number
of optimizer steps (no time budget, so CPU contention cannot change what either run sees). Each is then
asked for every purple composition (12 triples) and, as a control, the 10 held-out video compositions, with
several seeds, and the detector reads one clean object, then colour (also in every frame) / shape / motion.

    python -m benchmarks.image_ablation --work /tmp/ablation [--reuse DEMO_OUT] [--seeds 2]

`--reuse` takes the tokenizer and token cache of an earlier `phenaki demo --out DEMO_OUT` (same preset);
otherwise the synth -> prepare -> train-tokenizer -> tokenize stages run first. A rerun skips finished arms.
Writes benchmarks/results/image_ablation.json with the machine described.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.machine import describe_machine, measured_on

DEFAULT_OUT = Path(__file__).parent / "results" / "image_ablation.json"
ARMS = {"with-images": 0.8, "videos-only": 1.0}


def prepare_tokens(work: Path, config: dict, reuse: Path | None) -> tuple[str, str]:
    """-> (token cache dir, tokenizer checkpoint dir), from `reuse` or made here (the demo's first stages)."""
    if reuse is not None:
        for name in ("tokenizer", "tokens"):
            if not (reuse / name).exists():
                raise FileNotFoundError(
                    f"--reuse {reuse}: no {name}/ there; run `phenaki demo --out {reuse}` first"
                )
        return str(reuse / "tokens"), str(reuse / "tokenizer")
    from jobs.tokenize import tokenize_config_from
    from jobs.train_tokenizer import run as train_tokenizer
    from modeling.typed_config import build_dataclass
    from pipelines.prepare import PrepareConfig, prepare
    from pipelines.synth import synthesize
    from pipelines.tokenize import tokenize

    demo = config.get("demo", {})
    if not (work / "tokens" / "manifest.json").exists():
        synthesize(
            work / "source",
            num_videos=demo.get("videos", 600),
            num_images=demo.get("images", 300),
            seed=demo.get("seed", 0),
        )
        prepare(
            [str(work / "source" / "webvid.csv"), str(work / "source" / "laion.parquet")],
            str(work / "clips"),
            build_dataclass(PrepareConfig, config.get("prepare")),
        )
        train_tokenizer(config, str(work / "clips"), str(work / "tokenizer"))
        tokenize(
            str(work / "tokenizer"), str(work / "clips"), str(work / "tokens"), tokenize_config_from(config)
        )
    return str(work / "tokens"), str(work / "tokenizer")


def train_arm(
    work: Path, config_name: str, tokens: str, tokenizer: str, video_fraction: float, steps: int
) -> dict:
    from jobs.config import load_config
    from jobs.train_transformer import run as train_transformer

    out = work / f"transformer-vf{video_fraction:g}"
    if (out / "model.safetensors").exists():
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return {"checkpoint": str(out), "last": json.loads(lines[-1]), "seconds": None, "reused": True}
    config = load_config(
        config_name,
        [
            f"transformer_train.video_fraction={video_fraction}",
            f"transformer_train.steps={steps}",
            "transformer_train.time_budget_s=null",
        ],
    )
    start = time.perf_counter()
    last = train_transformer(config, tokens, tokenizer, str(out))
    return {
        "checkpoint": str(out),
        "last": last,
        "seconds": round(time.perf_counter() - start, 1),
        "reused": False,
    }


def evaluate_arm(checkpoint: str, seeds: int, sampling: dict) -> dict:
    """Generate every purple and held-out composition with `seeds` seeds; detector adherence per kind."""
    from modeling.generation import SamplingConfig, VideoGenerator
    from pipelines.evaluate import generated_adherence

    gen = VideoGenerator.from_checkpoint(checkpoint)
    return generated_adherence(
        gen, seeds, SamplingConfig.from_dict(sampling), Path(checkpoint) / "ablation-videos"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/phenaki-image-ablation", help="working directory (kept)")
    parser.add_argument(
        "--reuse", default=None, help="a `phenaki demo --out` directory whose tokenizer/tokens to use"
    )
    parser.add_argument("--config", default="demo", help="preset for every stage (default: demo)")
    parser.add_argument(
        "--steps", type=int, default=None, help="optimizer steps per arm (default: the preset's)"
    )
    parser.add_argument("--seeds", type=int, default=2, help="samples per composition")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)

    from jobs.config import load_config
    from jobs.runtime import init_ray, setup_logging

    setup_logging()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    config = load_config(args.config)
    steps = args.steps or int(config["transformer_train"]["steps"])
    init_ray()
    tokens, tokenizer = prepare_tokens(work, config, Path(args.reuse).resolve() if args.reuse else None)
    arms = {}
    for name, video_fraction in ARMS.items():
        trained = train_arm(work, args.config, tokens, tokenizer, video_fraction, steps)
        adherence = evaluate_arm(trained["checkpoint"], args.seeds, config.get("sampling", {}))
        arms[name] = {
            "video_fraction": video_fraction,
            "steps": steps,
            "train_seconds": trained["seconds"],
            "final_metrics": trained["last"],
            "adherence": adherence,
        }
    results = {
        "benchmark": "image_ablation",
        "question": "does training on stills teach a concept (purple) that no video shows?",
        "date": measured_on(),
        "machine": describe_machine(),
        "config": args.config,
        "tokens": tokens,
        "tokenizer": tokenizer,
        "seeds_per_composition": args.seeds,
        "sampling": config.get("sampling", {}),
        "arms": arms,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    columns = ("clean", "colour", "shape", "motion", "colour_every_frame", "all")
    print(f"\n{'arm':<12} {'kind':<9} " + " ".join(f"{c:>8.8}" for c in columns))
    for name, arm in arms.items():
        for kind, a in arm["adherence"].items():
            cells = " ".join(f"{a[k]:>8.2f}" if a.get(k) is not None else f"{'-':>8}" for k in columns)
            print(f"{name:<12} {kind:<9} {cells}")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
