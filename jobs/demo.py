"""`phenaki demo`: the whole pipeline on the synthetic world, each stage the real one, on a local Ray cluster.

synth -> prepare (Ray Data) -> train tokenizer (Ray Train + DeepSpeed) -> tokenize (Ray Data actor pool)
-> train transformer (Ray Train + DeepSpeed, images and videos mixed) -> Ray Serve endpoint -> HTTP requests
for held-out compositions, purple (seen only in stills) and a story -> videos, index.html, results.json,
detector-based adherence. Every artifact stays in --out so the printed commands can reuse it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from jobs.runtime import add_ray_arguments, free_port, init_ray, log, run_command, stage


@dataclass(frozen=True)
class DemoConfig:
    """The `demo` section: the synthetic world's size and seed, and how many videos per evaluation prompt."""

    videos: int = 600  # synthetic mp4s in a WebVid CSV
    images: int = 300  # synthetic stills (purple only here) in a LAION parquet
    seed: int = 0
    samples_per_prompt: int = 1  # generated videos per evaluation prompt (different seeds)

    def __post_init__(self) -> None:
        if self.videos < 1 or self.images < 0 or self.samples_per_prompt < 1:
            raise ValueError(f"demo needs videos >= 1, images >= 0, samples_per_prompt >= 1; got {self}")


def demo_prompts(fast: bool) -> list[dict]:
    """Held-out compositions (never seen as video), purple (seen only in stills), and a story."""
    from pipelines.synth import HELD_OUT, caption_for

    held_out = HELD_OUT[:3] if fast else HELD_OUT
    requests = [{"kind": "held-out", "prompts": [caption_for(c, s, m, 0)]} for c, s, m in held_out]
    purple = (
        [("purple", "square", "right")]
        if fast
        else [("purple", "square", "right"), ("purple", "circle", "down")]
    )
    requests += [{"kind": "purple", "prompts": [caption_for(c, s, m, 0)]} for c, s, m in purple]
    story = [("blue", "circle", "right"), ("red", "square", "down")]
    if not fast:
        story.append(("yellow", "triangle", "left"))
    requests.append({"kind": "story", "prompts": [caption_for(c, s, m, 0) for c, s, m in story]})
    return requests


def request_videos(url: str, requests_: list[dict], samples: int, sampling: dict, out: Path) -> list[dict]:
    """Send every request to the Serve endpoint at once (`POST /v1/videos/sync`, so the sampler batches them);
    save mp4 + gif; return gallery/eval records in request order."""
    import concurrent.futures

    import requests

    from pipelines.media import decode_video, write_gif

    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    calls = [(i, req, seed) for i, req in enumerate(requests_) for seed in range(samples)]

    def call(item: tuple[int, dict, int]) -> tuple[requests.Response, float]:
        _, req, seed = item
        body = {"prompts": req["prompts"], "seed": seed, **sampling, "format": "mp4"}
        start = time.perf_counter()
        response = requests.post(f"{url}/v1/videos/sync", json=body, timeout=600)
        if response.status_code != 200:
            raise RuntimeError(f"endpoint answered {response.status_code} for {body}: {response.text[:500]}")
        return response, time.perf_counter() - start

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, calls))
    records = []
    for (i, req, seed), (response, seconds) in zip(calls, answers, strict=True):
        name = f"{i:02d}-{req['kind']}-seed{seed}"
        mp4 = videos / f"{name}.mp4"
        mp4.write_bytes(response.content)
        decoded = decode_video(str(mp4))
        write_gif(decoded.frames, videos / f"{name}.gif", decoded.fps)
        segments = json.loads(response.headers.get("X-Phenaki-Segments", "null") or "null")  # [[start, end]]
        records.append(
            {
                "kind": req["kind"],
                "prompts": req["prompts"],
                "seed": seed,
                "file": f"videos/{name}.mp4",
                "gif": f"videos/{name}.gif",
                "segments": segments if segments and len(req["prompts"]) > 1 else None,
                "request_seconds": round(seconds, 3),
                "batch_size": int(response.headers.get("X-Phenaki-Batch", "1")),
            }
        )
        log.info("  %s <- %s (%.2f s, batch of %s)", mp4.name, " | ".join(req["prompts"]), seconds,
                 records[-1]["batch_size"])  # fmt: skip
    return records


def score_records(records: list[dict], out: Path) -> dict:
    """Detector readings per video and adherence per request kind.

    Each record gains `evaluation`: one entry per scored segment (prompt, frame range, clean / colour /
    shape / motion / colour_every_frame, and what the detector read), so the page can show every video
    beside its reading. Record files are relative to `out` (the page's links). Returns {kind: summary}."""
    from pipelines.evaluate import evaluate_videos

    summary = {}
    for kind in sorted({r["kind"] for r in records}):
        chosen = [r for r in records if r["kind"] == kind]
        report = evaluate_videos([{**r, "file": str(out / r["file"])} for r in chosen])
        segments = iter(report["segments"])
        for record in chosen:
            count = len(record["prompts"]) if record.get("segments") else 1
            record["evaluation"] = [
                {k: v for k, v in next(segments).items() if k != "file"} for _ in range(count)
            ]
        summary[kind] = {k: v for k, v in report.items() if k != "segments"}
    return summary


def reuse_commands(out: Path, config: str = "demo") -> str:
    """The commands that go on from what a demo run made (`config`: the preset or YAML file it ran with)."""
    return "\n".join(
        [
            f"  phenaki generate --checkpoint {out}/transformer --prompt 'a green circle moving up' --out my.mp4",
            f"  phenaki generate --checkpoint {out}/transformer --prompt 'a red square moving left' "
            f"--prompt 'a blue ball moves down' --out story.mp4",
            f"  phenaki serve --checkpoint {out}/transformer --port 8000",
            f"  phenaki train-transformer --config {config} --data {out}/tokens "
            f"--tokenizer {out}/tokenizer --out {out}/transformer-2 transformer_train.time_budget_s=900",
            f"  phenaki tokenize --tokenizer {out}/tokenizer --data {out}/clips --out {out}/tokens",
            f"  phenaki eval --results {out}/results.json",
        ]
    )


def run_demo(out: Path, config_name: str, overrides: list[str], fast: bool, address: str | None) -> dict:
    from jobs.config import load_config
    from jobs.serving.app import start as start_serve
    from jobs.serving.app import stop as stop_serve
    from jobs.tokenize import tokenize_config_from
    from jobs.train_tokenizer import run as train_tokenizer
    from jobs.train_transformer import run as train_transformer
    from modeling.typed_config import build_dataclass
    from pipelines.prepare import PrepareConfig, prepare
    from pipelines.synth import synthesize
    from pipelines.tokenize import tokenize

    config = load_config(config_name, overrides)
    demo = build_dataclass(DemoConfig, config.get("demo"))  # load_config checked every section
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo-config.json").write_text(json.dumps(config, indent=2))
    timings: dict[str, float] = {}
    started = time.perf_counter()

    with stage("ray: start a local cluster", timings):
        init_ray(address)
    with stage("synth: the synthetic world", timings):
        summary = synthesize(
            out / "source",
            num_videos=demo.videos,
            num_images=demo.images,
            seed=demo.seed,
        )
        log.info("%s", summary)
    with stage("prepare: Ray Data -> clip shards", timings):
        prepare(
            [str(out / "source" / "webvid.csv"), str(out / "source" / "laion.parquet")],
            str(out / "clips"),
            build_dataclass(PrepareConfig, config.get("prepare")),
        )
    with stage("train-tokenizer: Ray Train + DeepSpeed, C-ViViT", timings):
        tokenizer_eval = train_tokenizer(config, str(out / "clips"), str(out / "tokenizer"))
    with stage("tokenize: Ray Data -> token cache", timings):
        tokenize(
            str(out / "tokenizer"), str(out / "clips"), str(out / "tokens"), tokenize_config_from(config)
        )
    with stage("train-transformer: Ray Train + DeepSpeed, MaskGIT", timings):
        train_transformer(config, str(out / "tokens"), str(out / "tokenizer"), str(out / "transformer"))
    with stage("serve: Ray Serve endpoint + HTTP requests", timings):
        url = start_serve(str(out / "transformer"), host="127.0.0.1", port=free_port())
        log.info("endpoint up at %s", url)
        try:
            records = request_videos(
                url, demo_prompts(fast), demo.samples_per_prompt, config.get("sampling", {}), out
            )
        finally:
            stop_serve()
    with stage("eval: detector adherence", timings):
        adherence = score_records(records, out)
    timings["total"] = round(time.perf_counter() - started, 2)
    results = {
        "records": records,
        "adherence": adherence,
        "tokenizer_eval": tokenizer_eval,
        "timings_s": timings,
        "config": config_name,
        "fast": fast,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_page(out, results)
    return results


def write_page(out: Path, results: dict) -> Path:
    """`<out>/index.html` (and its training plots) from the demo's results."""
    from jobs.training.metrics import METRICS_FILE
    from pipelines.demo_page import write_demo_page

    return write_demo_page(out, results, reuse_commands(out, results.get("config", "demo")), METRICS_FILE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo-out", help="output directory (every artifact is kept here)")
    parser.add_argument(
        "--fast", action="store_true", help="a tiny run of every stage with the `debug` preset (~1 min)"
    )
    parser.add_argument(
        "--config",
        default=None,
        help="config preset or YAML file (default: demo, ~14 min on 2 cores; quality: the same "
        "models trained ~5x longer, ~1 h; debug with --fast)",
    )
    add_ray_arguments(parser)
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. transformer_train.time_budget_s=600"
    )


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out = Path(args.out).resolve()
    config = args.config or ("debug" if args.fast else "demo")
    results = run_demo(out, config, args.overrides, args.fast, args.address)
    print("\n" + summary_text(results, out))
    return 0


def summary_text(results: dict, out: Path) -> str:
    """What the terminal shows at the end: stage times, the headline, the tokenizer's fidelity, where quality
    is lost, the page, and the commands that reuse what the demo made."""
    from pipelines.demo_page import diagnosis, fidelity_of, headline_table
    from pipelines.fidelity import summary_line

    times = [f"  {name:<50} {seconds:>8.1f} s" for name, seconds in results["timings_s"].items()]
    fidelity = fidelity_of(results["tokenizer_eval"])
    if fidelity is not None:
        tokenizer = f"{summary_line(fidelity)} (of {fidelity['clips']} fresh clips it never saw)"
    else:
        psnr = (results["tokenizer_eval"] or {}).get("psnr_db")
        tokenizer = "object fidelity not measured (checkpoint predates it)" + (
            f"; PSNR {psnr:.1f} dB" if psnr else ""
        )
    return "\n".join([
        "Stage times:", *times, "",
        "Generated videos, read by the detector (colour, shape and motion count only on one clean object):",
        *(f"  {line}" for line in headline_table(results["adherence"])), "",
        f"Tokenizer reconstructions: {tokenizer}", "",
        f"Where quality is lost: {diagnosis(results['adherence'], results['tokenizer_eval'])}", "",
        f"Open the results page: {(out / 'index.html').as_uri()}",
        f"Results as JSON: {out / 'results.json'}", "",
        f"Go on by hand (artifacts in {out}):", reuse_commands(out, results.get("config", "demo")),
    ])  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__, allow_abbrev=False)
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    raise SystemExit(run_command("python -m jobs.demo", main, build_parser().parse_args()))
