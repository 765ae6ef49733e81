"""`phenaki train-transformer`: train the MaskGIT transformer on a token cache with Ray Train + DeepSpeed.

MVTM loss (Phenaki sec. 2.2): cosine mask schedule, text dropped 10% of the time (classifier-free guidance),
images and videos mixed at `video_fraction` (an image scores only its first h_z*w_z tokens). The model's
codebook size, sequence length and tokens per frame come from the tokenizer checkpoint and the cache, the
text width from the cache's embeddings, so the `transformer` section only sizes the network.

Config sections: `transformer` (MaskGITConfig), `transformer_train` (TransformerTrainConfig), `text_encoder`.
Writes a self-contained serving checkpoint to <out> (model.safetensors, config.yaml with extra.text_encoder,
extra.tokenizer_digest, extra.token_grid, and <out>/tokenizer/), plus <out>/metrics.jsonl and <out>/ray/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from jobs.runtime import add_ray_arguments, init_ray, run_command
from jobs.train_common import (
    CHECKPOINT_FILES,
    TrainConfig,
    build_engine,
    engine_dtype,
    export_serving,
    launch,
    restore,
    schedule_lr,
    set_lr,
    setup_worker,
    worker_print,
)
from jobs.train_loop import StepTail
from jobs.train_metrics import MetricsLog, StepRecords, Throughput
from modeling.checkpoint import read_checkpoint_meta
from modeling.maskgit import MaskGIT, MaskGITConfig, code_sizes
from modeling.masking import mvtm_loss
from modeling.presets import build_dataclass, load_config

RUN_NAME = "transformer"


@dataclass
class TransformerTrainConfig(TrainConfig):
    video_fraction: float = 0.8  # paper: 80% videos, 20% images (mix="kind")
    mix: str = "kind"  # "kind": videos vs images at video_fraction; "source": by source weight
    source_weights: dict[str, float] | None = None  # mix="source": source name -> weight (else as prepared)
    text_drop_prob: float = 0.1  # classifier-free guidance training
    mask_schedule: str = "cosine"
    loss_normalization: str = "sample"  # "sample": each sample weighs the same; "token": MaskGIT's mean


@dataclass
class TransformerJob:
    data: str | list[str]  # one token cache, or several trained on together
    tokenizer: str
    model: MaskGITConfig
    train: TransformerTrainConfig
    extra: dict  # written into the checkpoint's config.yaml: text encoder, tokenizer digest, token grid


def job_from_config(config: dict, data: str | list[str], tokenizer: str) -> TransformerJob:
    """Fill the model's data-dependent sizes from the tokenizer checkpoint and the token cache(s).

    `transformer.family: commit` selects MAGVIT's COMMIT trainer (`jobs.train_commit`, a `CommitJob`)."""
    from jobs.train_commit import is_commit
    from jobs.train_commit import job_from_config as commit_job_from_config
    from pipelines.loaders import check_tokenizer_digest, split_cache_dirs, token_cache_info

    if is_commit(config):
        return commit_job_from_config(config, data, tokenizer)
    section = {k: v for k, v in (config.get("transformer") or {}).items() if k != "family"}
    config = {**config, "transformer": section}  # `family: maskgit` is the default

    tokenizer = str(Path(tokenizer).resolve())  # workers run in another directory than this driver
    dirs = split_cache_dirs(data)  # a list, or comma-separated
    data = dirs[0] if len(dirs) == 1 else dirs

    meta = read_checkpoint_meta(tokenizer)
    if meta.get("kind") != "cvivit":
        raise ValueError(f"{tokenizer} holds a {meta.get('kind')!r} checkpoint, not a C-ViViT tokenizer")
    tok = meta["config"]
    grid = tok["image_size"] // tok["patch_size"]
    info = token_cache_info(data)
    check_tokenizer_digest(data, info.tokenizer_digest, tokenizer)  # fail on the driver, before any worker
    if info.frame_tokens != grid * grid:
        raise ValueError(
            f"token cache {data} has {info.frame_tokens} tokens per frame, tokenizer {tokenizer} {grid}x{grid}"
        )
    sizes = {
        **code_sizes(tok, section),
        "seq_len": info.seq_len,
        "tokens_per_frame": info.frame_tokens,
        "text_dim": info.text_dim,
    }
    model = build_dataclass(MaskGITConfig, {**(config.get("transformer") or {}), **sizes})
    latent_frames = info.seq_len // info.frame_tokens
    text_cfg = config.get("text_encoder") or {}
    extra = {
        # what generation needs (modeling.generation.VideoGenerator.from_checkpoint)
        "num_frames": 1 + (latent_frames - 1) * int(tok["temporal_patch_size"]),
        "fps": _clip_fps(meta, config),
        "text_encoder": info.text_encoder or text_cfg.get("name", "minilm"),
        "max_text_length": int(info.max_text_length or text_cfg.get("max_length", 32)),
        "sampling": dict(config.get("sampling") or {}),
        # provenance
        "tokenizer_digest": info.tokenizer_digest,
        "token_grid": [latent_frames, grid, grid],
        "data": data,
    }
    return TransformerJob(
        data,
        tokenizer,
        model,
        build_dataclass(TransformerTrainConfig, config.get("transformer_train")),
        extra,
    )


def _clip_fps(tokenizer_meta: dict, config: dict) -> float:
    """Frame rate of the training clips: recorded by train-tokenizer, else the prepare config's."""
    fps = (tokenizer_meta.get("extra") or {}).get("fps") or (config.get("prepare") or {}).get("fps")
    if not fps:
        raise ValueError(
            "unknown clip frame rate: the tokenizer checkpoint has no extra.fps; set prepare.fps"
        )
    return float(fps)


# --------------------------------------------------------------------------------------------- worker
def _step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """Mask and text-drop randomness as a pure function of (seed, rank, step): resumes need no RNG state."""
    value = int(np.random.SeedSequence([seed, rank, step]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(value)


def _throughput(job: TransformerJob, worker) -> Throughput:
    """Per-worker work of a step: every sample (video, or image padded to the video length) runs the full
    sequence against the cache's text length (`modeling.flops.maskgit_forward_flops`)."""
    from modeling.flops import maskgit_forward_flops

    cfg = job.train
    samples = cfg.batch_size * cfg.grad_accum
    flops = samples * maskgit_forward_flops(job.model, text_len=int(job.extra["max_text_length"]))
    return Throughput.for_worker(worker, cfg, RUN_NAME, samples=samples, tokens=samples * job.model.seq_len, flops=flops)


def train_loop(config: dict) -> None:
    import deepspeed  # noqa: F401  (imported here, in the worker, never in the driver or modeling/)

    from pipelines.loaders import TokenBatches, TokenLoaderConfig

    job: TransformerJob = config["job"]
    cfg = job.train
    worker = setup_worker(cfg)
    loader = TokenBatches(
        job.data,
        TokenLoaderConfig(cfg.batch_size, cfg.video_fraction, cfg.seed, cfg.mix, cfg.source_weights),
        rank=worker.rank,
        world_size=worker.world_size,
        seq_len=job.model.seq_len,
    )
    engine = build_engine(lambda: MaskGIT(job.model), cfg, worker.world_size)
    engines = {"transformer": engine}
    state = restore(engines) or {"step": 0, "data_position": 0}  # also reinstates the RNG states
    step = int(state["step"])
    loader.load_state({"position": int(state["data_position"])})
    out_dir = config["out_dir"]
    log = MetricsLog(out_dir, worker, cfg.log_every, cfg.steps, RUN_NAME)
    records = StepRecords(out_dir, worker, cfg.record_samples, restored_from=step)
    if worker.is_main:
        worker_print(
            f"[{RUN_NAME}] samples on rank 0 {loader.num_samples}, seq_len {job.model.seq_len}, "
            f"codebook {job.model.codebook_size}, start step {step}"
        )
    dtype = engine_dtype(engine)
    tail = StepTail(cfg, worker, engines, log, _throughput(job, worker), out_dir, start_step=step)
    while step < cfg.steps:
        lr = schedule_lr(cfg, step)
        set_lr(engine, lr)
        gen = _step_generator(cfg.seed, worker.rank, step)
        sample_ids: list[str] = []
        losses: list[float] = []
        for _ in range(cfg.grad_accum):
            batch = loader.next_batch()
            sample_ids.extend(loader.last_keys)
            loss, metrics = mvtm_loss(
                engine,
                batch["tokens"].to(worker.device),
                batch["text"].to(worker.device, dtype),
                batch["text_mask"].to(worker.device),
                batch["num_scored"].to(worker.device),
                generator=gen,
                text_drop_prob=cfg.text_drop_prob,
                schedule=cfg.mask_schedule,
                normalization=cfg.loss_normalization,
            )
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
        step += 1
        records.write(step, sum(losses) / len(losses), sample_ids)
        metrics.update(loss=losses[-1], image_fraction=float(batch["is_image"].float().mean()))
        if tail.after_step(step, lr, metrics, {"step": step, "data_position": loader.position}):
            break
    tail.finish(step, {"step": step, "data_position": loader.position})

    export_serving(
        engine,
        lambda: MaskGIT(job.model),
        job.model,
        out_dir,
        worker,
        cfg.zero_stage,
        {**job.extra, "step": step},
    )
    if worker.is_main:
        copy_tokenizer(job.tokenizer, str(Path(out_dir) / "tokenizer"))


def copy_tokenizer(src: str, dst: str) -> None:
    """Only the serving files: the tokenizer's own training state (ray/, metrics) stays behind."""
    dst_path = Path(dst)
    tmp = dst_path.with_name(dst_path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        shutil.copy2(Path(src) / name, tmp / name)
    shutil.rmtree(dst_path, ignore_errors=True)
    tmp.rename(dst_path)


# --------------------------------------------------------------------------------------------- driver
def run(config: dict, data: str | list[str], tokenizer: str, out_dir: str) -> dict:
    """Train from a loaded config dict; returns the last logged metrics (empty if no step ran).

    `transformer.family: commit` runs MAGVIT's COMMIT trainer (`jobs.train_commit.train`) instead."""
    return train(job_from_config(config, data, tokenizer), out_dir)


def train(job, out_dir: str) -> dict:
    """Train a checked job (`run` minus building and checking it): a `TransformerJob`, or a COMMIT job."""
    from jobs.train_commit import CommitJob

    if isinstance(job, CommitJob):
        from jobs.train_commit import train as train_commit

        return train_commit(job, out_dir)
    # Import the loop under its module name, so Ray pickles it by reference even under `python -m`.
    from jobs.train_transformer import train_loop as loop

    tokenizer = job.tokenizer
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_config.yaml").write_text(
        yaml.safe_dump(
            {
                "data": job.data if isinstance(job.data, str) else list(job.data),  # no YAML alias
                "tokenizer": tokenizer,
                "transformer": dataclasses.asdict(job.model),
                "transformer_train": dataclasses.asdict(job.train),
                "extra": job.extra,
            },
            sort_keys=False,
        )
    )
    result = launch(loop, {"job": job}, job.train, str(out), RUN_NAME)
    if result.error is not None:
        raise result.error
    metrics_file = out / "metrics.jsonl"
    lines = metrics_file.read_text().splitlines() if metrics_file.exists() else []
    return json.loads(lines[-1]) if lines else {}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="YAML config file or preset name (configs/<name>.yaml)"
    )
    parser.add_argument(
        "--data",
        required=True,
        action="append",
        help="token cache directory (written by `phenaki tokenize`); repeat it or separate with commas "
        "to train on several caches together",
    )
    parser.add_argument("--tokenizer", required=True, help="tokenizer checkpoint the cache was made with")
    parser.add_argument(
        "--out", required=True, help="output directory: self-contained checkpoint, metrics, ray state"
    )
    add_ray_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. transformer_train.steps=10")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phenaki train-transformer", description=__doc__.split("\n")[0], allow_abbrev=False)
    add_arguments(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    # A bad config, token cache or tokenizer fails here, in one line, before Ray starts (and is never retried).
    job = job_from_config(load_config(args.config, args.overrides), args.data, args.tokenizer)
    init_ray(args.address)
    last = train(job, args.out)
    loss = last.get("loss")
    print(f"[{RUN_NAME}] checkpoint: {Path(args.out).resolve()}  last step: {last.get('step')}  loss: "
          + (f"{loss:.4f}" if isinstance(loss, int | float) else "n/a"))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("python -m jobs.train_transformer", main, build_parser().parse_args()))
