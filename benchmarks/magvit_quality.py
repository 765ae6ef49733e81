"""MAGVIT quality on the synthetic world: tokenizer reconstruction (3D-VQ vs C-ViViT), COMMIT on its ten tasks, and
COMMIT vs MaskGIT-style latent masking at an equal budget (MAGVIT Table 5).

    python -m benchmarks.magvit_quality                 # full run, ~12-20 min on 2 idle CPU cores (docs/magvit.md)
    python -m benchmarks.magvit_quality --quick --out /tmp/magvit_quality.json   # every stage, tiny, < 60 s

Everything trains in process with plain PyTorch loops over `modeling/` (no Ray, no DeepSpeed), with the jobs'
own losses (`modeling.losses.generator_loss` without GAN, `commit_training_step`) and optimizer settings
(`jobs.training.common.TrainConfig`: AdamW, betas, weight decay, clipping; warm-up + cosine learning rate).

1. Tokenizers: the MAGVIT 3D-VQ (`magvit-commit-debug` preset) against C-ViViT at the `debug` and `demo` presets.
   The budget is the *same number of optimizer steps on the same batches* (same clips, batch size and learning
   rate schedule); wall time is recorded, not equalised. The 3D-VQ takes 16-frame 32x32 clips (a multiple of
   4), C-ViViT 17 frames (1 + 8 x 2) of the same clips; PSNR is over the 16 frames both see, on held-out clips
   (other seeds, the HELD_OUT compositions included).
2. COMMIT per task: a COMMIT transformer trained on the 3D-VQ's tokens (condition tokens as `phenaki tokenize
   --commit` stores them), decoded by Algorithm 1 on held-out clips. Per task: PSNR of the generated region
   (pixels the task does not give) and of the condition region against the ground truth, and how often the
   detector (`pipelines.detector`) reads the same motion from the output as from the ground-truth clip.
3. Latent masking (`modeling.latent_masking`): the same transformer, tokenizer, batches, tasks and steps;
   trained with the full video's tokens unmasked at the condition positions, decoded with z~ fixed there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.machine import describe_machine, measured_on
from benchmarks.magvit_metrics import (
    agreement,
    clip_psnr,
    detected_motions,
    motion_class_ids,
    ratio,
    render_clips,
    summary,
)
from jobs.config import load_config
from jobs.training.commit import sample_tasks, task_probs
from jobs.training.common import TrainConfig
from modeling.commit import TASKS, CommitConfig, commit_decode, tokenize_with_condition
from modeling.commit_model import CommitTransformer, commit_training_step, commit_transformer_debug
from modeling.latent_masking import MASKGIT_LOSS_WEIGHTS, latent_masking_decode, latent_masking_training_step
from modeling.losses import TokenizerLossConfig, generator_loss
from modeling.lr_schedule import warmup_cosine
from modeling.pixels import frames_to_video, video_to_frames
from modeling.tokenizers import tokenizer_config_from
from modeling.typed_config import build_dataclass
from pipelines.commit_data import encode_condition_tokens, select_condition, task_token_masks
from pipelines.synth import HELD_OUT, TRAIN_TRIPLES

DEFAULT_OUT = Path(__file__).parent / "results" / "magvit_quality.json"
SIZE, FRAMES, CVIVIT_FRAMES = 32, 16, 17  # 3D-VQ: multiple of 4 frames; C-ViViT: 1 + 8 * t_p (t_p = 2)
TOKENIZER_PRESETS = {"magvit_vq": "magvit-commit-debug", "cvivit_debug": "debug", "cvivit_demo": "demo"}
COMMIT_PRESET = "magvit-commit-debug"
# commit_transformer_debug is 2 layers of width 32; this is the smallest that learns the tasks in minutes.
TRANSFORMER = dict(dim=64, depth=4, heads=4, mlp_dim=256, dropout=0.0)
ARMS = ("commit", "latent_masking")
MT8 = TASKS[:8]  # fp..ipd: the eight BAIR-MT8 tasks of Table 5 (no classes there)
TRAIN_SEED, EVAL_SEED = 1, 2  # clip streams of `render_clips`: disjoint clips


@dataclass(frozen=True)
class Budget:
    train_clips: int
    eval_clips: int
    tokenizer_steps: int  # per tokenizer, batch `tokenizer_batch`
    tokenizer_batch: int
    tokenizer_lr: float
    commit_steps: int  # per arm and seed, batch `commit_batch`
    commit_batch: int
    commit_lr: float
    warmup: int
    seeds: int  # transformer seeds per arm (init, batches, masks, decoding noise)
    decode_steps: int  # K of Algorithm 1 (and of the baseline's MaskGIT decoding)


FULL = Budget(512, 64, 1000, 8, 1e-3, 1500, 16, 1e-3, 50, 2, 12)
QUICK = Budget(8, 4, 3, 2, 1e-3, 4, 4, 1e-3, 1, 1, 12)


# --------------------------------------------------------------------------------------------- training
def train(
    model: nn.Module,
    loss_fn: Callable[[int, torch.Generator], torch.Tensor],
    *,
    steps: int,
    peak_lr: float,
    warmup: int,
    seed: int,
    after_step: Callable[[int, torch.Generator], None] | None = None,
) -> dict[str, float]:
    """A plain loop: loss_fn(step, generator) -> loss; AdamW with the jobs' defaults. All randomness of a step
    comes from a generator seeded by (seed, step), so two arms with the same seed draw the same batches."""
    defaults = TrainConfig()
    opt = torch.optim.AdamW(
        model.parameters(), lr=peak_lr, betas=defaults.betas, weight_decay=defaults.weight_decay
    )
    model.train()
    losses, start = [], time.perf_counter()
    for step in range(steps):
        lr = warmup_cosine(step, peak_lr=peak_lr, warmup_steps=warmup, total_steps=steps, min_ratio=0.1)
        for group in opt.param_groups:
            group["lr"] = lr
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        loss = loss_fn(step, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), defaults.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if after_step is not None:
            after_step(step, gen)
    model.eval()
    window = max(1, min(20, steps // 5))  # first and last losses, averaged so one noisy batch does not decide
    return {
        "steps": steps,
        "seconds": round(time.perf_counter() - start, 2),
        "first_loss": round(float(np.mean(losses[:window])), 4),
        "final_loss": round(float(np.mean(losses[-window:])), 4),
    }


def tokenizer_run(
    preset: str, train_videos: torch.Tensor, budget: Budget, seed: int
) -> tuple[nn.Module, dict]:
    """Build the preset's tokenizer and train it on `train_videos` (N, C, T, H, W) with L2 + VQ (no GAN, no
    perceptual terms: no pretrained weights here, as in the demo). EMA codebooks get the jobs' dead-code
    restarts every 50 steps; learned codebooks (the 3D-VQ's) do not, as in `jobs.train_tokenizer`."""
    family, cfg = tokenizer_config_from(load_config(preset)["tokenizer"])
    torch.manual_seed(seed)
    model = family.model_cls(cfg)
    frames = FRAMES if family.name == "magvit_vq" else CVIVIT_FRAMES
    videos = train_videos[:, :, :frames]
    loss_cfg = TokenizerLossConfig(adv_weight=0.0)
    last: dict[str, torch.Tensor] = {}

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        video = videos[torch.randint(0, len(videos), (budget.tokenizer_batch,), generator=gen)]
        out = model(video)
        last["latents"] = out.latents.detach()
        return generator_loss(out, video, None, loss_cfg, step)[0]

    def restart(step: int, gen: torch.Generator) -> None:
        if (step + 1) % 50 == 0 and model.quantizer.restartable:
            model.quantizer.restart_dead_codes(last["latents"], 0.03, gen)

    stats = train(
        model, loss_fn, steps=budget.tokenizer_steps, peak_lr=budget.tokenizer_lr, warmup=budget.warmup,
        seed=seed, after_step=restart,
    )  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    return model, {
        "preset": preset,
        "family": family.name,
        "clip_frames": frames,
        "parameters": params,
        **stats,
    }


@torch.no_grad()
def reconstruct(model: nn.Module, videos: torch.Tensor, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """videos (N, C, T, H, W) -> (reconstruction (N, C, T, H, W), token ids (N, t, h, w)), in chunks."""
    outs = [model(v) for v in videos.split(chunk)]
    return torch.cat([o.recon for o in outs]), torch.cat([o.indices for o in outs])


def evaluate_tokenizer(model: nn.Module, info: dict, eval_videos: torch.Tensor, truth: list) -> dict:
    """Held-out PSNR over the first FRAMES frames, tokens per clip, codebook use, detector motion agreement of
    the reconstruction with the ground truth's detection (`truth`)."""
    recon, ids = reconstruct(model, eval_videos[:, :, : info["clip_frames"]])
    recon = recon[:, :, :FRAMES]
    tokens = math.prod(ids.shape[1:])
    return {
        **info,
        "token_grid": list(ids.shape[1:]),
        "tokens_per_clip": tokens,
        "tokens_per_frame": round(tokens / info["clip_frames"], 3),
        "codes_used": int(ids.unique().numel()),
        "codebook_size": int(model.cfg.codebook_size),
        "psnr_db": summary(clip_psnr(recon, eval_videos[:, :, :FRAMES])),
        "motion_agreement": agreement(detected_motions(video_to_frames(recon)), truth),
    }


# --------------------------------------------------------------------------------------------- COMMIT data
@dataclass
class TokenData:
    z: torch.Tensor  # (N, n) long: f_T(V)
    cond: torch.Tensor  # (N, 9, n) long: z~ per task with condition pixels (`COND_TASKS` order)
    classes: torch.Tensor  # (N,) long: motion ids
    masks: torch.Tensor  # (10, n) bool: cond_mask = ~ispad per task (`TASKS` order)


def commit_config(tokenizer: nn.Module, decode_steps: int) -> CommitConfig:
    """The COMMIT preset's loss weights and decoding settings with this tokenizer's codebook and stride."""
    values = {**load_config(COMMIT_PRESET).get("commit", {}), "steps": decode_steps}
    tc = tokenizer.cfg
    return dataclasses.replace(
        build_dataclass(CommitConfig, values), codebook_size=tc.codebook_size, num_classes=4,
        tokenizer_stride=(tc.temporal_compression, tc.spatial_compression, tc.spatial_compression),
    )  # fmt: skip


@torch.no_grad()
def token_data(
    tokenizer: nn.Module, videos: torch.Tensor, motions: list[str], cfg: CommitConfig
) -> TokenData:
    """What `phenaki tokenize --commit` stores, computed in memory: z, the nine z~ rows, class ids."""
    n = len(videos)
    z = torch.cat([tokenizer.encode(v) for v in videos.split(32)]).reshape(n, -1)
    cond = encode_condition_tokens(tokenizer.encode, videos, cfg, 32).reshape(n, -1, z.shape[1])
    masks = task_token_masks(videos.shape[2:], cfg.tokenizer_stride, cfg)
    return TokenData(z.long(), cond.long(), motion_class_ids(motions), masks)


def arm_loss(arm: str, model: CommitTransformer, data: TokenData, cfg: CommitConfig, batch: int):
    """loss_fn for `train`: a batch and a task per row drawn first (the same for both arms under one seed),
    then the arm's corruption and loss."""
    probs = task_probs(None)  # uniform over the ten tasks

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, len(data.z), (batch,), generator=gen)
        tasks = sample_tasks(probs, batch, "row", gen)
        z, classes = data.z[idx], data.classes[idx]
        if arm == "commit":
            z_cond, cond_mask = select_condition(data.cond[idx], tasks, data.masks)
            return commit_training_step(model, z, z_cond, cond_mask, tasks, classes, cfg=cfg, generator=gen)[
                0
            ]
        return latent_masking_training_step(
            model, z, data.masks[tasks], tasks, classes, schedule=cfg.mask_schedule, generator=gen
        )[0]

    return loss_fn


# --------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def generate(arm: str, model: CommitTransformer, cond, task: str, classes: torch.Tensor, cfg: CommitConfig,
             seed: int) -> torch.Tensor:  # fmt: skip
    """One task on the evaluation batch -> tokens (B, n). Both arms decode from the same z~ and cond_mask (the
    padded condition video's tokens: all either can have at inference)."""
    logits_fn = model.logits_fn(task, classes)
    settings = dict(
        mask_id=model.mask_token_id, steps=cfg.steps, schedule=cfg.mask_schedule, temperature=cfg.temperature,
        sample_temperature=cfg.sample_temperature, generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    if arm == "commit":
        return commit_decode(logits_fn, cond.z_cond, cond.cond_mask, confidence=cfg.confidence, **settings)
    return latent_masking_decode(logits_fn, cond.z_cond, cond.cond_mask, **settings)


def task_metrics(
    video: torch.Tensor, tokens: torch.Tensor, cond, truth_video: torch.Tensor, truth: list
) -> dict:
    """Generated video (B, C, T, H, W) vs ground truth: region PSNRs, detector motion agreement, and the share
    of condition positions whose output token is z~ (COMMIT refines them; the baseline keeps all)."""
    given = cond.pixel_mask
    kept = ((tokens == cond.z_cond) & cond.cond_mask).sum() / cond.cond_mask.sum().clamp(min=1)
    return {
        "psnr_generated_db": summary(clip_psnr(video, truth_video, ~given))["mean"],
        "psnr_condition_db": summary(clip_psnr(video, truth_video, given))["mean"],
        "motion_agreement": agreement(detected_motions(video_to_frames(video)), truth),
        "condition_tokens_kept": round(float(kept), 4) if cond.cond_mask.any() else None,
    }


@torch.no_grad()
def evaluate_arm(arm: str, model: CommitTransformer, tokenizer: nn.Module, conds: dict, classes: torch.Tensor,
                 cfg: CommitConfig, seed: int, eval_videos: torch.Tensor, truth: list) -> dict:  # fmt: skip
    out = {}
    for task, cond in conds.items():
        tokens = generate(arm, model, cond, task, classes, cfg, seed)
        video = tokenizer.decode(tokens.reshape(len(tokens), *cond.grid))
        out[task] = task_metrics(video, tokens, cond, eval_videos, truth)
    return out


def ceilings(tokenizer: nn.Module, conds: dict, eval_videos: torch.Tensor, truth: list) -> dict:
    """The tokenizer's reconstruction of the ground truth, scored per task like a generation: the best any
    transformer can do with this tokenizer."""
    with torch.no_grad():
        recon = tokenizer.decode(next(iter(conds.values())).z.reshape(len(eval_videos), *cond_grid(conds)))
    motion = agreement(detected_motions(video_to_frames(recon)), truth)
    return {
        task: {
            "psnr_generated_db": summary(clip_psnr(recon, eval_videos, ~c.pixel_mask))["mean"],
            "psnr_condition_db": summary(clip_psnr(recon, eval_videos, c.pixel_mask))["mean"],
            "motion_agreement": motion,
        }
        for task, c in conds.items()
    }


def cond_grid(conds: dict) -> tuple[int, int, int]:
    return next(iter(conds.values())).grid


def median_over_seeds(runs: list[dict], key: str) -> dict[str, float | None]:
    """runs: per seed {task: metrics} -> {task: median over seeds of metrics[key]} (None if always None)."""
    out = {}
    for task in TASKS:
        values = [r[task][key] for r in runs if r[task][key] is not None]
        out[task] = round(float(np.median(values)), 4) if values else None
    return out


def compare(per_arm: dict[str, dict[str, dict]]) -> dict:
    """Table 5 on our world: per task the generated-region PSNR of both arms, ratio and difference."""
    commit, latent = per_arm["commit"], per_arm["latent_masking"]
    rows = {}
    for task in TASKS:
        a, b = commit["psnr_generated_db"][task], latent["psnr_generated_db"][task]
        rows[task] = {
            "commit_psnr_generated_db": a, "latent_masking_psnr_generated_db": b,
            "ratio_commit_over_latent_masking": ratio(a, b),
            "delta_db": None if a is None or b is None else round(a - b, 4),
            "commit_motion_agreement": commit["motion_agreement"][task],
            "latent_masking_motion_agreement": latent["motion_agreement"][task],
        }  # fmt: skip

    def mean(arm: dict, tasks: tuple[str, ...]) -> float:
        return round(float(np.mean([arm["psnr_generated_db"][t] for t in tasks])), 4)

    means = {
        name: {"commit": mean(commit, tasks), "latent_masking": mean(latent, tasks)}
        for name, tasks in (("all_ten", TASKS), ("mt8", MT8))
    }
    for m in means.values():
        m["ratio_commit_over_latent_masking"] = ratio(m["commit"], m["latent_masking"])
    return {"tasks": rows, "mean_psnr_generated_db": means}


# --------------------------------------------------------------------------------------------- driver
def run(budget: Budget, quick: bool, log: Callable[[str], None] = print) -> dict:
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.perf_counter() - clock, 2)
        log(f"[magvit_quality] {name}: {timings[name]} s")
        clock = time.perf_counter()

    train_frames, train_motions = render_clips(
        budget.train_clips, seed=TRAIN_SEED, num_frames=CVIVIT_FRAMES, size=SIZE
    )
    eval_triples = TRAIN_TRIPLES[::5] + HELD_OUT  # both seen and never-seen compositions, other seeds
    eval_frames, eval_motions = render_clips(
        budget.eval_clips, seed=EVAL_SEED, num_frames=CVIVIT_FRAMES, size=SIZE, triples=eval_triples
    )
    train_videos, eval_videos = frames_to_video(train_frames), frames_to_video(eval_frames)
    truth = detected_motions(eval_frames[:, :FRAMES])  # the detector's reading of the ground truth
    lap("render clips")

    tokenizers, trained = {}, {}
    for name, preset in TOKENIZER_PRESETS.items():
        model, info = tokenizer_run(preset, train_videos, budget, seed=0)
        trained[name] = model.eval()
        tokenizers[name] = evaluate_tokenizer(model, info, eval_videos, truth)
        lap(f"tokenizer {name}")
    magvit = trained["magvit_vq"]

    cfg = commit_config(magvit, budget.decode_steps)
    train16, eval16 = train_videos[:, :, :FRAMES], eval_videos[:, :, :FRAMES]
    data = token_data(magvit, train16, train_motions, cfg)
    classes = motion_class_ids(eval_motions)
    conds = {
        t: tokenize_with_condition(
            magvit.encode, eval16, t, cfg.task_params(t, eval16.shape), pad_value=cfg.pad_value
        )
        for t in TASKS
    }
    lap("tokenize (z, z~)")

    model_cfg = commit_transformer_debug(
        codebook_size=cfg.codebook_size,
        num_classes=4,
        seq_len=data.z.shape[1],
        grid=cond_grid(conds),
        **TRANSFORMER,
    )
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for arm in ARMS:
        for seed in range(budget.seeds):
            torch.manual_seed(seed)  # the same initial weights for both arms
            model = CommitTransformer(model_cfg)
            stats = train(model, arm_loss(arm, model, data, cfg, budget.commit_batch), steps=budget.commit_steps,
                          peak_lr=budget.commit_lr, warmup=budget.warmup, seed=seed)  # fmt: skip
            tasks = evaluate_arm(arm, model, magvit, conds, classes, cfg, seed, eval16, truth)
            runs[arm].append({"seed": seed, "train": stats, "tasks": tasks})
            lap(f"{arm} seed {seed}")
    metrics = ("psnr_generated_db", "psnr_condition_db", "motion_agreement", "condition_tokens_kept")
    per_arm = {
        arm: {key: median_over_seeds([r["tasks"] for r in runs[arm]], key) for key in metrics} for arm in ARMS
    }
    commit_tasks = {t: {key: per_arm["commit"][key][t] for key in metrics} for t in TASKS}
    mag, cv = tokenizers["magvit_vq"]["psnr_db"]["mean"], tokenizers["cvivit_demo"]["psnr_db"]["mean"]
    return {
        "benchmark": "magvit_quality",
        "quick": quick,
        "date": measured_on(),
        "machine": describe_machine(("torch", "numpy")),
        "threads": torch.get_num_threads(),
        "setup": {
            "budget": dataclasses.asdict(budget),
            "clips": {
                "size": SIZE,
                "magvit_frames": FRAMES,
                "cvivit_frames": CVIVIT_FRAMES,
                "train": budget.train_clips,
                "eval": budget.eval_clips,
                "eval_triples": len(eval_triples),
            },
            "tokenizer_budget": "same optimizer steps, batches and learning-rate schedule for every tokenizer",
            "tokenizer_presets": TOKENIZER_PRESETS,
            "commit": dataclasses.asdict(cfg),
            "transformer": dataclasses.asdict(model_cfg),
            "latent_masking_loss_weights": MASKGIT_LOSS_WEIGHTS,
            "aggregation": "per task: mean over eval clips, then median over seeds",
            "detector_truth_agreement": agreement(truth, eval_motions),  # detector vs the rendered motion
        },  # fmt: skip
        "tokenizers": tokenizers,
        "tokenizer_psnr_ratio_magvit_over_cvivit_demo": ratio(mag, cv),
        "commit_per_task": commit_tasks,
        "tokenizer_ceiling_per_task": ceilings(magvit, conds, eval16, truth),
        "commit_vs_latent_masking": compare(per_arm),
        "arms": {arm: {"per_task_median": per_arm[arm], "runs": runs[arm]} for arm in ARMS},
        "seconds": {**timings, "total": round(sum(timings.values()), 1)},
    }


def print_report(report: dict) -> None:
    print(f"\n{'tokenizer':<14}{'params':>10}{'tokens':>8}{'PSNR dB':>9}{'motion':>8}{'train s':>9}")
    for name, t in report["tokenizers"].items():
        print(f"{name:<14}{t['parameters']:>10}{t['tokens_per_clip']:>8}{t['psnr_db']['mean']:>9.2f}"
              f"{t['motion_agreement']:>8.2f}{t['seconds']:>9.1f}")  # fmt: skip
    print(
        f"\n{'task':<6}{'gen dB':>8}{'cond dB':>9}{'motion':>8}{'LM gen dB':>11}{'LM motion':>11}{'ratio':>8}"
    )
    rows = report["commit_vs_latent_masking"]["tasks"]
    for task, c in report["commit_per_task"].items():
        r = rows[task]
        cells = [c["psnr_generated_db"], c["psnr_condition_db"], c["motion_agreement"],
                 r["latent_masking_psnr_generated_db"], r["latent_masking_motion_agreement"],
                 r["ratio_commit_over_latent_masking"]]  # fmt: skip
        widths = (8, 9, 8, 11, 11, 8)
        print(
            f"{task:<6}"
            + "".join(f"{'-' if v is None else f'{v:.2f}':>{w}}" for v, w in zip(cells, widths, strict=True))
        )
    print(f"\nmean generated-region PSNR: {report['commit_vs_latent_masking']['mean_psnr_generated_db']}")
    print(f"seconds: {report['seconds']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny budget, every stage (the smoke test; < 60 s)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"results JSON (default: {DEFAULT_OUT}; --quick needs one)"
    )
    args = parser.parse_args(argv)
    if args.quick and args.out is None:  # quick-mode numbers are not results: never overwrite the real file
        parser.error("--quick needs --out (benchmarks/results/ holds full runs only)")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(QUICK if args.quick else FULL, args.quick)
    print_report(report)
    out = args.out or DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
