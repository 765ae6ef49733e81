"""MAGVIT end to end on a tiny synthetic world: train the 3D-VQ, tokenize with COMMIT condition tokens, train
COMMIT through `jobs.train_transformer.run` (`transformer.family: commit`), generate every task.

Real Ray (Data for tokenize, Train + DeepSpeed on 2 CPU workers), the `magvit-commit-debug` preset, a few
steps per stage.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from jobs.config import load_config
from modeling.commit import TASKS
from pipelines.media import decode_video
from pipelines.shards import list_shards, load_npy, read_shard

pytestmark = [pytest.mark.slow, pytest.mark.ray]

VIDEOS, IMAGES, FRAMES, SIZE = 30, 4, 16, 32
TOKENIZER_STEPS, COMMIT_STEPS = 40, 200
GRID, CODEBOOK = (4, 4, 4), 64
EVAL_CLIPS = 16
CLASSES = ["left", "right", "up", "down"]  # the preset's class_keywords: the synthetic world's motions


def preset(**train) -> dict:
    config = load_config("magvit-commit-debug")
    # fidelity_repeats=0: the 72-clip object fidelity is the recipe test's check (tests/test_docs.py)
    config["tokenizer_train"].update(steps=TOKENIZER_STEPS, log_every=100, max_failures=0, fidelity_repeats=0)
    config["transformer_train"].update(
        steps=COMMIT_STEPS, warmup_steps=5, peak_lr=3e-3, batch_size=8, log_every=50, max_failures=0,
        checkpoint_every=0, **train,
    )  # fmt: skip
    return config


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_local):
    from pipelines.prepare import PrepareConfig, prepare
    from pipelines.synth import synthesize

    root = tmp_path_factory.mktemp("magvit")
    src = synthesize(root / "source", num_videos=VIDEOS, num_images=IMAGES, num_frames=FRAMES, size=SIZE)
    cfg = PrepareConfig(size=SIZE, num_frames=FRAMES, fps=8.0, samples_per_shard=32, num_workers=2)
    prepare([str(src.webvid_csv), str(src.laion_parquet)], str(root / "clips"), cfg)
    return root


@pytest.fixture(scope="module")
def tokenizer(world):
    from jobs.train_tokenizer import run

    run(preset(), str(world / "clips"), str(world / "tokenizer"))
    return world / "tokenizer"


@pytest.fixture(scope="module")
def cache(world, tokenizer):
    from jobs.tokenize import tokenize_config_from
    from pipelines.tokenize import tokenize

    cfg = tokenize_config_from(preset())
    cfg.num_workers = 1
    manifest = tokenize(str(tokenizer), str(world / "clips"), str(world / "tokens"), cfg)
    return world / "tokens", manifest


@pytest.fixture(scope="module")
def commit_ckpt(world, tokenizer, cache):
    from jobs.train_transformer import run

    last = run(preset(), str(cache[0]), str(tokenizer), str(world / "commit"))
    return world / "commit", last


@pytest.fixture(scope="module")
def generator(commit_ckpt):
    from modeling.commit_generation import CommitGenerator

    return CommitGenerator.from_checkpoint(commit_ckpt[0])


@pytest.fixture(scope="module")
def clips(world) -> tuple[np.ndarray, list[str]]:
    """The first EVAL_CLIPS prepared videos (T, H, W, 3) uint8 and their captions."""
    frames, captions = [], []
    for uri in list_shards(str(world / "clips")):
        for sample in read_shard(uri):
            if "mp4" in sample and len(frames) < EVAL_CLIPS:
                frames.append(decode_video(sample["mp4"]).frames[:FRAMES])
                captions.append(sample["txt"].decode())
    return np.stack(frames), captions


# --------------------------------------------------------------------------------------------- tokenize
def test_usable_frames_per_family() -> None:
    """What each tokenizer family takes, asked of the registry (`modeling.tokenizers.FAMILIES`), not by name."""
    from modeling.tokenizers import FAMILIES

    magvit = {k: v for k, v in load_config("magvit-debug")["tokenizer"].items() if k != "family"}  # as saved
    assert [FAMILIES["magvit_vq"].usable_frames(magvit, n) for n in (3, 4, 9, 16, 17)] == [0, 4, 8, 16, 16]
    cvivit = load_config("debug")["tokenizer"]
    assert [FAMILIES["cvivit"].usable_frames(cvivit, n) for n in (0, 1, 4, 9, 10)] == [0, 1, 3, 9, 9]
    assert FAMILIES["cvivit"].takes_stills and not FAMILIES["magvit_vq"].takes_stills


def test_tokenize_stores_condition_tokens(cache, tokenizer) -> None:
    from modeling.checkpoint import load_checkpoint
    from modeling.commit import CommitConfig
    from modeling.pixels import frames_to_video
    from pipelines.commit_data import COND_TASKS, encode_condition_tokens

    out, manifest = cache
    assert manifest["counts"] == {"video": VIDEOS, "image": 0}
    assert manifest["skips"] == {"image_unsupported": IMAGES}  # stills: skipped for MAGVIT, counted
    assert manifest["tokenizer"]["kind"] == "magvit_vq" and manifest["config"]["commit"] is True
    assert manifest["commit"]["tasks"] == list(COND_TASKS) and len(COND_TASKS) == 9
    assert (manifest["commit"]["fp_cond_frames"], manifest["commit"]["fi_cond_frames"]) == (1, 1)
    samples = [s for uri in list_shards(str(out)) for s in read_shard(uri)]
    sample = samples[0]
    tokens, cond = load_npy(sample["tokens.npy"]), load_npy(sample["cond_tokens.npy"])
    assert tokens.shape == GRID and cond.shape == (9, *GRID) and cond.dtype == tokens.dtype == np.int16
    assert cond.min() >= 0 and cond.max() < CODEBOOK
    np.testing.assert_array_equal(cond[COND_TASKS.index("fp")], cond[COND_TASKS.index("cfp")])
    assert json.loads(sample["json"])["num_frames"] == FRAMES
    # the stored z~ are f_T(V~) of the clip: recomputed here from the clip shard
    clip = next(
        s for uri in list_shards(str(cache[0].parent / "clips")) for s in read_shard(uri)
        if s["__key__"] == sample["__key__"]
    )  # fmt: skip
    video = frames_to_video(decode_video(clip["mp4"]).frames[None, :FRAMES])
    model = load_checkpoint(tokenizer).model
    again = encode_condition_tokens(model.encode, video, CommitConfig(), 8)[0].numpy()
    assert (again == cond).mean() >= 0.95  # equal up to float ties between nearly equidistant codes


# --------------------------------------------------------------------------------------------- training
def test_commit_trains_through_train_transformer_and_exports(commit_ckpt, tokenizer) -> None:
    from modeling.checkpoint import load_checkpoint

    out, last = commit_ckpt
    assert last["step"] == COMMIT_STEPS and math.isfinite(last["loss"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, COMMIT_STEPS + 1))
    for r in rows:
        assert math.isfinite(r["loss"]) and 0 <= r["refine_accuracy"] <= 1
        assert sum(r[f"task_{t}"] for t in TASKS) == pytest.approx(1.0)  # the tasks drawn in the step
    first = np.mean([r["loss"] for r in rows[:10]])
    final = np.mean([r["loss"] for r in rows[-10:]])
    assert final < first, (first, final)

    loaded = load_checkpoint(out)
    assert loaded.kind == "commit"
    cfg = loaded.config
    assert (cfg.codebook_size, cfg.seq_len, tuple(cfg.grid), cfg.num_classes, cfg.text_dim) == (
        CODEBOOK, 64, GRID, 4, None,
    )  # fmt: skip
    assert loaded.extra["num_frames"] == FRAMES and loaded.extra["class_names"] == CLASSES
    assert loaded.extra["commit"]["tokenizer_stride"] == [4, 8, 8]
    bundled = load_checkpoint(out / "tokenizer")
    assert bundled.kind == "magvit_vq" and bundled.digest == (tokenizer / "digest.txt").read_text().strip()


def test_text_conditioning_trains_and_generates(tmp_path, cache, tokenizer, clips) -> None:
    """`transformer.text: true`: caption embeddings from the cache condition COMMIT by cross-attention. The
    trainer's data path (loader, task draw, condition selection, training step) run in process for a few
    steps, exported, and generated from with prompts."""
    from jobs.training.commit import job_from_config, sample_tasks, task_probs
    from jobs.training.export import copy_tokenizer
    from modeling.checkpoint import save_checkpoint
    from modeling.commit_generation import CommitGenerator
    from modeling.commit_model import CommitTransformer, commit_training_step
    from pipelines.commit_data import CommitBatches, select_condition, task_token_masks

    config = preset()
    config["transformer"]["text"] = True
    job = job_from_config(config, str(cache[0]), str(tokenizer))
    assert job.model.text_dim == 384 and job.clip_shape == (FRAMES, SIZE, SIZE)  # width of the cache's text
    commit = job.commit
    assert (commit.codebook_size, commit.num_classes, commit.tokenizer_stride) == (CODEBOOK, 4, (4, 8, 8))
    with pytest.raises(ValueError, match="re-tokenize"):  # the condition geometry is the cache's
        job_from_config({**config, "commit": {"fp_cond_frames": 5}}, str(cache[0]), str(tokenizer))
    torch.manual_seed(0)
    model = CommitTransformer(job.model)
    loader = CommitBatches(job.data, job.train.loader_config())
    masks = task_token_masks(job.clip_shape, job.commit.tokenizer_stride, job.commit)
    assert masks.shape == (10, 64) and not masks[TASKS.index("cg")].any()  # cg: no condition tokens
    assert masks[TASKS.index("fp")].sum() == 16  # fp: frame 0 lies in the first latent frame (4x4 tokens)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        batch = loader.next_batch()
        tasks = sample_tasks(task_probs(None), batch["tokens"].shape[0], "row", gen)
        z_cond, cond_mask = select_condition(batch["cond_tokens"], tasks, masks)
        loss, _ = commit_training_step(
            model, batch["tokens"], z_cond, cond_mask, tasks, batch["class_ids"], cfg=job.commit, generator=gen,
            text=batch["text"], text_mask=batch["text_mask"],
        )  # fmt: skip
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert math.isfinite(float(loss))
    save_checkpoint(tmp_path / "text", model, job.model, job.record.to_extra())
    copy_tokenizer(str(tokenizer), str(tmp_path / "text" / "tokenizer"))
    generator = CommitGenerator.from_checkpoint(tmp_path / "text")
    frames, captions = clips
    result = generator.generate("fp", frames[:2], prompts=captions[:2])
    assert result.frames.shape == (2, FRAMES, SIZE, SIZE, 3)
    assert generator.generate("cg", None, prompts=["a red ball moving left"]).tokens.shape == (1, *GRID)


# --------------------------------------------------------------------------------------------- generation
# What Algorithm 1 guarantees: nothing about the values at condition positions. Every position starts
# unfixed (z~ where ~ispad, [MASK] elsewhere) and condition tokens are resampled like the rest ("refined",
# not frozen), fixed only once confident. So the checks are relations, on this few-step model (tokenizer 40
# steps; COMMIT 200 steps), over EVAL_CLIPS training clips and averaged over the generation seeds GEN_SEEDS.
# Its absolute quality moves with the training seeds and with the CPU's kernels (AVX-512 vs AVX2 paths train
# a different model), so the thresholds below come from 6 trainings (training seeds 0, 1, 2, each with the
# default kernels and with ATEN_CPU_CAPABILITY=avx2), per task averaged over generation seeds 0-2 [min..max]:
# - tokens: "kept", the share of condition positions whose output equals z~ (0.12-0.79 per task; mean over
#   tasks 0.57-0.61), against the same share for the unconditional (cg) output of the same
#   classes and seeds ("kept_uncond", 0.01-0.23). Per task kept - kept_uncond >= 0.11, kept/kept_uncond >= 2.0.
# - pixels vs the input, over the given pixels ("psnr", 14.7-19.8 dB): within -0.40..+2.2 dB of the
#   tokenizer's own rendering of V~ ("psnr_ceiling"; above it where V~'s padding smears into the given region
#   and the transformer repairs it). Against the unconditional output the per-task gap is -1.04..+0.89 dB: on
#   the ip*/opd tasks the given region is mostly static background that a class-conditional sample renders
#   as well as the tokenizer does, or better (ipd on one model: ceiling 17.0 dB, unconditional 18.5 dB, so
#   the output, bound to the ceiling, is 1 dB below it: the failure this replaces). That relation is the
#   tokenizer's, not the transformer's, so it is asserted only on average over tasks (+0.12..+0.59 dB).
# - pixels vs the tokenizer's rendering of V~ ("psnr_recon", the target the transformer can reach; the
#   tokenizer's error cancels): conditioned 20.6-37.2 dB, unconditional 20.0-35.6 dB; mean over tasks of the
#   difference +1.4..+4.3 dB (3 unconditional samples against 2 others: 0, std 0.2 dB, at most 0.5 dB).
# Broken implementations: conditioning ignored behaves like the cg numbers above; uniformly random tokens
# render the given region 0.8-1.5 dB below the ceiling on every task but opd (measured on two of the models);
# a frozen condition (z~ copied, never refined) keeps 1.0 of it.
GEN_SEEDS = (0, 1, 2)


def _psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB, 8-bit) of uint8 frames over the True pixels of `mask` (broadcast over channels)."""
    mask = np.broadcast_to(mask, a.shape)
    mse = np.mean((a.astype(np.float64)[mask] - b.astype(np.float64)[mask]) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def task_numbers(generator, task: str, frames: np.ndarray, classes: list[int], unconds: list) -> dict:
    """One task on a batch of clips, one generation per seed of GEN_SEEDS (`unconds`: the cg outputs of the
    same seeds) -> the numbers the assertions use, averaged over the seeds (printed with -s)."""
    from modeling.pixels import video_to_frames

    results = [
        generator.generate(task, None if task == "cg" else frames, class_ids=classes, seed=seed)
        for seed in GEN_SEEDS
    ]
    numbers = {"task": task, "seconds": round(float(np.mean([r.seconds for r in results])), 3)}
    numbers["shape"] = results[0].frames.shape
    numbers["tokens_valid"] = all(bool(((r.tokens >= 0) & (r.tokens < CODEBOOK)).all()) for r in results)
    if task == "cg":
        return numbers
    cond, z_cond = results[0].cond_mask, results[0].cond_tokens  # the same for every seed
    with torch.no_grad():
        recon = video_to_frames(generator.tokenizer.decode(z_cond))  # the tokenizer's rendering of V~
    given = results[0].pixel_mask.permute(0, 2, 3, 4, 1).numpy()  # (B, T, H, W, 1)
    per_seed = [
        dict(
            kept=result.kept_fraction(),
            kept_uncond=float(((uncond.tokens == z_cond) & cond).sum() / cond.sum()),
            kept_outside=float(((result.tokens == z_cond) & ~cond).sum() / max(int((~cond).sum()), 1)),
            psnr=_psnr(result.frames, frames, given),
            psnr_ceiling=_psnr(recon, frames, given),
            psnr_uncond=_psnr(uncond.frames, frames, given),
            psnr_recon=_psnr(result.frames, recon, given),
            psnr_uncond_recon=_psnr(uncond.frames, recon, given),
            psnr_missing=_psnr(result.frames, frames, ~given) if (~given).any() else float("nan"),
        )
        for result, uncond in zip(results, unconds, strict=True)
    ]
    numbers.update({k: round(float(np.mean([n[k] for n in per_seed])), 3) for k in per_seed[0]})
    return numbers


@pytest.fixture(scope="module")
def per_task(generator, clips) -> dict[str, dict]:
    from pipelines.commit_data import class_id_of

    frames, captions = clips
    classes = [class_id_of(c, generator.class_names) for c in captions]
    assert sorted(set(classes)) == [0, 1, 2, 3]  # every motion class among the clips
    unconds = [generator.generate("cg", None, class_ids=classes, seed=seed) for seed in GEN_SEEDS]
    out = {t: task_numbers(generator, t, frames, classes, unconds) for t in generator.cfg.tasks}
    print("\nper-task numbers:\n" + "\n".join(json.dumps(v, default=str) for v in out.values()))
    return out


def test_every_task_generates_valid_videos(per_task) -> None:
    assert tuple(per_task) == TASKS
    for task, n in per_task.items():
        assert n["shape"] == (EVAL_CLIPS, FRAMES, SIZE, SIZE, 3), task
        assert n["tokens_valid"], task


def test_every_task_reproduces_its_condition_region(per_task) -> None:
    """Each check, with the measured margin (comment block above `_psnr`) and the broken model that fails it."""
    conditioned = {t: n for t, n in per_task.items() if t != "cg"}
    for task, n in conditioned.items():
        # z~ survives, per task: the condition is used. Ignoring it makes kept a second unconditional sample's
        # share (kept ~ kept_uncond: difference ~0, ratio ~1); measured >= +0.11 and >= 2.0x.
        assert n["kept"] >= n["kept_uncond"] + 0.05 and n["kept"] >= 1.5 * n["kept_uncond"], (task, n)
        # The given region comes back about as well as the tokenizer itself renders it (measured >= -0.40 dB).
        # Fails for garbage there: random tokens are 0.8-1.5 dB below the ceiling (8 of the 9 tasks).
        assert n["psnr"] >= n["psnr_ceiling"] - 0.75, (task, n)
    # On average the condition is used a lot (measured 0.57-0.61; unconditional 0.08-0.13)...
    assert np.mean([n["kept"] for n in conditioned.values()]) >= 0.4
    # ...and the conditioned output beats the unconditional one at reproducing the given region: against the
    # tokenizer's rendering of V~ by >= 0.75 dB (measured +1.4..+4.3 dB; a model that ignores the condition:
    # 0 +- 0.5 dB), and against the input pixels themselves (measured +0.12..+0.59 dB; the margin is small
    # because the 40-step tokenizer's ceiling is close to a class-conditional sample there, but a model
    # that ignores the condition sits at 0 on average and one that damages the given region below it).
    assert np.mean([n["psnr_recon"] - n["psnr_uncond_recon"] for n in conditioned.values()]) >= 0.75
    assert np.mean([n["psnr"] - n["psnr_uncond"] for n in conditioned.values()]) > 0.0
    # Refined, not frozen (Algorithm 1): copying z~ verbatim keeps every condition token (1.0); measured <= 0.79.
    assert all(n["kept"] < 1.0 for n in conditioned.values())


def test_cli_generates_a_task_from_an_input_video(tmp_path, commit_ckpt, clips) -> None:
    from jobs.cli import main
    from pipelines.media import encode_mp4_file

    def generate(*args: str) -> int:
        return main(["generate", "--checkpoint", str(commit_ckpt[0]), *args])

    frames, _ = clips
    src = encode_mp4_file(
        frames[0][:9], tmp_path / "input.mp4", fps=8.0
    )  # shorter input: holds its last frame
    assert generate("--task", "fp", "--input", str(src), "--out", str(tmp_path / "fp.mp4")) == 0
    assert decode_video(str(tmp_path / "fp.mp4")).frames.shape == (FRAMES, SIZE, SIZE, 3)
    assert generate("--task", "cg", "--class", "left", "--out", str(tmp_path / "cg.gif")) == 0
    assert (tmp_path / "cg.gif").exists()
    with pytest.raises(SystemExit, match="--class"):
        generate("--task", "cfp", "--input", str(src), "--out", str(tmp_path / "cfp.mp4"))
