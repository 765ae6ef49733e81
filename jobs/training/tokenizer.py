"""The tokenizer family's training task (`phenaki train-tokenizer`, `jobs.train_tokenizer`).

The family comes from `tokenizer.family`: `cvivit` (Phenaki's C-ViViT, default) or `magvit_vq` (MAGVIT's
3D-VQ; it takes clips of a multiple of 4 frames, so set `tokenizer_train.num_frames`, and trains on videos
only: MAGVIT learns images through 2D->3D inflation instead, `modeling.magvit_vq.inflate_2d_to_3d`).

Loss (Phenaki sec. 2.1): L_VQ + 0.1 L_adv + 1.0 L_2 (+ perceptual terms when their weights are supplied, see
`modeling.losses`). Every step takes one video batch and, when the data has stills, one image batch (a
one-frame video), so the first-frame encoder also learns from images. The StyleGAN discriminator is a second
DeepSpeed engine, trained from `tokenizer_loss.disc_start` on. The step loop, resume and checkpoints are
`jobs.training.loop`'s.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from jobs.training.common import TrainConfig, Worker, build_engine, engine_dtype, worker_print
from jobs.training.export import export_serving
from jobs.training.metrics import Throughput
from modeling.checkpoint import TokenizerRecord
from modeling.discriminator import DiscriminatorConfig, StyleGANDiscriminator
from modeling.losses import (
    LeCamEMA,
    TokenizerLossConfig,
    discriminator_loss,
    generator_loss,
    perceptual_status,
    psnr,
)
from modeling.tokenizers import TokenizerFamily, tokenizer_config_from
from modeling.typed_config import build_dataclass

RUN_NAME = "tokenizer"


@dataclass
class TokenizerTrainConfig(TrainConfig):
    image_batch_size: int = 4  # stills per worker per step (0: videos only)
    num_frames: int | None = None  # crop clips to 1 + k*t_p frames; None: the clips' own length
    eval_clips: int = 8  # videos held out for the final reconstruction PSNR
    fidelity_repeats: int = (
        1  # object fidelity on 72 x this fresh clips (every colour x shape x motion); 0: off
    )
    restart_every: int = 50  # dead-code restart interval in steps (0: off)
    restart_threshold: float = 0.03  # a code is dead when its averaged usage falls below this
    hue_rotation: float = 0.0  # share of training clips with randomly rotated hues (colour apart from motion)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.hue_rotation <= 1.0:
            raise ValueError(
                f"tokenizer_train.hue_rotation is the share of clips rotated, in [0, 1]; got {self.hue_rotation}"
            )


@dataclass
class TokenizerJob:
    """A tokenizer training run (a `jobs.training.loop.TrainTask`)."""

    data: str
    model: object  # the family's config dataclass (CViViTConfig | MagvitVQConfig)
    train: TokenizerTrainConfig
    loss: TokenizerLossConfig
    disc: DiscriminatorConfig
    family: TokenizerFamily
    run_name = RUN_NAME
    # worker side, made by `setup`
    _loader: Any = field(default=None, init=False, repr=False)
    _worker: Any = field(default=None, init=False, repr=False)
    _frozen: tuple = field(default=(None, None), init=False, repr=False)  # (VGG, I3D) for perceptual terms
    _lecam: list | None = field(default=None, init=False, repr=False)

    def build(self) -> torch.nn.Module:
        return self.family.model_cls(self.model)

    def run_config(self) -> dict:
        return {
            "data": self.data,
            "tokenizer": {"family": self.family.name, **dataclasses.asdict(self.model)},
            "tokenizer_train": dataclasses.asdict(self.train),
            "tokenizer_loss": dataclasses.asdict(self.loss),
            "discriminator": dataclasses.asdict(self.disc),
        }

    def setup(self, worker: Worker, out_dir: str) -> dict[str, Any]:
        from pipelines.loaders import ClipBatches, ClipLoaderConfig

        cfg = self.train
        self._worker = worker
        self._loader = ClipBatches(
            self.data,
            ClipLoaderConfig(
                video_batch_size=cfg.batch_size,
                image_batch_size=cfg.image_batch_size,
                num_frames=cfg.num_frames,
                seed=cfg.seed,
                holdout=cfg.eval_clips,
                hue_rotation=cfg.hue_rotation,
                strict=cfg.strict_data,
            ),
            rank=worker.rank,
            world_size=worker.world_size,
        )
        engines = {
            "tokenizer": build_engine(
                self.build, cfg, worker.world_size, backwards_per_step=self._batches_per_step
            )
        }
        if self.loss.adv_weight > 0:
            # ZeRO-3 would partition D's weights, which G's adversarial pass uses outside D's engine
            engines["discriminator"] = build_engine(
                lambda: StyleGANDiscriminator(self.disc),
                cfg,
                worker.world_size,
                zero_stage=min(cfg.zero_stage, 2),
            )
        # The frozen perceptual networks load here: a missing or mismatched file fails before the first step.
        dtype, loss = engine_dtype(engines["tokenizer"]), self.loss
        vgg = i3d = None
        if loss.image_perceptual_weights and loss.image_perceptual_weight > 0:
            from modeling.losses import VGGFeatures

            vgg = VGGFeatures.from_file(loss.image_perceptual_weights).to(worker.device, dtype)
        if loss.video_perceptual_weights and loss.video_perceptual_weight > 0:
            from modeling.i3d import InceptionI3d

            i3d = InceptionI3d.from_file(loss.video_perceptual_weights).to(worker.device, dtype)
        self._frozen = (vgg, i3d)
        return engines

    @property
    def _batches_per_step(self) -> int:
        return 2 if self._loader.has_images else 1

    def resume(self, state: dict | None) -> int:
        state = state or {"step": 0}
        self._lecam = _lecam_anchors(self, self._batches_per_step, state)
        return int(state["step"])

    def banner(self, step: int) -> str:
        return (f"frames {self._loader.frame_shape}, images {self._loader.has_images}, start step {step}, "
                f"perceptual: {perceptual_status(self.loss)}")  # fmt: skip

    def throughput(self, worker: Worker) -> Throughput:
        """Per-worker samples, latent tokens and forward FLOPs of one optimizer step (`jobs.training.metrics`).

        FLOPs: the tokenizer's encoder + decoder per clip and per image, and with the GAN on, three
        discriminator forwards per sample (real and fake for D's loss, fake again for G's). The frozen
        perceptual networks are not trained and are left out."""
        from modeling.flops import module_forward_flops, tokenizer_forward_flops

        cfg, loader = self.train, self._loader
        t, h, w = loader.frame_shape
        shapes = [((3, t, h, w), cfg.batch_size)]
        if loader.has_images:
            shapes.append(((3, 1, h, w), cfg.image_batch_size))
        samples = tokens = flops = 0
        for shape, count in shapes:
            grid = self.model.token_grid(shape[1])
            samples += count
            tokens += count * grid[0] * grid[1] * grid[2]
            flops += count * tokenizer_forward_flops(self.build, shape)
            if self.loss.adv_weight > 0:
                flops += (
                    3 * count * module_forward_flops(lambda: StyleGANDiscriminator(self.disc), (1, *shape))
                )
        return Throughput.for_worker(worker, cfg, RUN_NAME, samples=samples * cfg.grad_accum,
                                     tokens=tokens * cfg.grad_accum, flops=flops * cfg.grad_accum)  # fmt: skip

    def step(self, step: int, engines: dict[str, Any]) -> dict[str, float]:
        cfg = self.train
        for micro in range(cfg.grad_accum):
            metrics, latents = _train_step(
                self, engines, self._loader.step_batches(step * cfg.grad_accum + micro), step, self._worker,
                *self._frozen, self._lecam,
            )  # fmt: skip
        if cfg.restart_every and (step + 1) % cfg.restart_every == 0:
            metrics["restarted_codes"] = float(
                _restart_dead_codes(engines["tokenizer"].module, latents, self, step + 1)
            )
        return metrics

    def state(self, step: int) -> dict:
        return _client_state(step, self._lecam)

    def export(self, engines: dict[str, Any], step: int, out_dir: str, worker: Worker) -> None:
        """The serving checkpoint, then (rank 0) the held-out and object-fidelity evaluation of it."""
        cfg, loader = self.train, self._loader
        t, _, _ = loader.frame_shape
        record = TokenizerRecord(
            num_frames=t,
            fps=loader.fps,
            token_grid=tuple(self.model.token_grid(t)),
            step=step,
            data=self.data,
            perceptual=perceptual_status(self.loss),
        )
        export_serving(
            engines["tokenizer"], self.build, self.model, out_dir, worker, cfg.zero_stage, record.to_extra()
        )
        if worker.is_main:
            evaluate(
                out_dir, loader.holdout_videos(), step, t if cfg.fidelity_repeats else 0, cfg.fidelity_repeats
            )

    def result(self, out: Path) -> dict:
        return json.loads((out / "eval.json").read_text())


def job_from_config(config: dict, data: str) -> TokenizerJob:
    from pipelines.shards import absolute_uri

    family, model = tokenizer_config_from(config.get("tokenizer"))
    disc = build_dataclass(
        DiscriminatorConfig,
        {**(config.get("discriminator") or {}), "image_size": model.image_size, "channels": model.channels},
    )
    train = build_dataclass(TokenizerTrainConfig, config.get("tokenizer_train"))
    if not family.takes_stills:  # MAGVIT-VQ: cropped videos only
        if train.image_batch_size:
            train = dataclasses.replace(train, image_batch_size=0)
        if train.num_frames is None or model.usable_frames(train.num_frames) != train.num_frames:
            raise ValueError(
                f"the {family.name} tokenizer takes clips of a multiple of {model.temporal_compression} frames: "
                f"set tokenizer_train.num_frames (e.g. 8 to crop 9-frame clips), got {train.num_frames}"
            )
    return TokenizerJob(
        data=absolute_uri(data),  # workers run in another directory than this driver
        model=model,
        train=train,
        loss=build_dataclass(TokenizerLossConfig, config.get("tokenizer_loss")),
        disc=disc,
        family=family,
    )


def check_clips(job: TokenizerJob) -> None:
    """Fail once, before any worker starts, when the clip shards cannot feed this tokenizer (Ray Train would
    retry a run whose every step fails the same way): missing shards, or clips shorter than it trains on."""
    from pipelines.shards import read_manifest

    manifest = read_manifest(job.data)  # names the missing dataset and the job that writes it
    have = (manifest.get("config") or {}).get("num_frames")
    want = job.train.num_frames
    if want is not None and have is not None and int(have) < want:
        raise ValueError(
            f"clips in {job.data} have {have} frames, but the {job.family.name} tokenizer trains on "
            f"tokenizer_train.num_frames={want}: prepare clips of at least {want} frames "
            f"(`phenaki prepare ... prepare.num_frames={want}`, or the preset that matches this tokenizer)"
        )


# --------------------------------------------------------------------------------------------- worker
def _restart_dead_codes(model: torch.nn.Module, latents: torch.Tensor, job: TokenizerJob, step: int) -> int:
    """Re-seed dead codes; all ranks call it with the same generator (rank 0's picks are broadcast)."""
    quantizer = model.quantizer
    if not getattr(quantizer, "restartable", False):
        # FSQ has no codes to die; a parameter codebook lives in ZeRO's master copy, which would undo the write
        return 0
    gen = torch.Generator().manual_seed(job.train.seed * 1_000_003 + step)
    if job.train.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(quantizer.project_in.parameters()), modifier_rank=None):
            return quantizer.restart_dead_codes(latents, job.train.restart_threshold, gen)
    return quantizer.restart_dead_codes(latents, job.train.restart_threshold, gen)


def _train_step(job, engines, batches, step, worker, vgg, i3d, lecam):
    """One micro step: each batch is its own generator forward/backward, then the discriminator's turn.

    Each batch is one DeepSpeed micro step (ZeRO-3 cannot run two forwards before a backward); its loss is
    scaled by the number of batches so the step's gradient is that of the summed loss. `lecam` holds one
    LeCam EMA per batch (videos, stills: D's outputs on the two differ) when the regulariser is on.
    """
    tok = engines["tokenizer"]
    disc = engines.get("discriminator")
    use_adv = disc is not None and step >= job.loss.disc_start
    dtype = engine_dtype(tok)
    videos = [b["video"].to(worker.device, dtype) for b in batches]
    if disc is not None:
        disc.module.requires_grad_(False)  # G's adversarial gradient must not reach D's ZeRO hooks
    metrics: dict[str, float] = {"loss": 0.0}
    fakes, latents = [], None
    for i, video in enumerate(videos):
        out = tok(video)
        loss, m = generator_loss(out, video, disc.module if use_adv else None, job.loss, step, vgg, i3d)
        tok.backward(loss * len(videos))
        tok.step()
        metrics["loss"] += float(loss.detach())
        metrics.update({("" if i == 0 else "img_") + k: v for k, v in m.items()})
        fakes.append(out.recon.detach())
        latents = out.latents.detach() if latents is None else latents
    if use_adv:
        disc.module.requires_grad_(True)
        d_loss = None
        for i, (video, fake) in enumerate(zip(videos, fakes, strict=True)):
            part, m = discriminator_loss(disc, video, fake, job.loss, lecam[i] if lecam else None)
            d_loss = part if d_loss is None else d_loss + part
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + v / len(videos)
        disc.backward(d_loss)
        disc.step()
    return metrics, latents


def _lecam_anchors(job: TokenizerJob, batches_per_step: int, state: dict) -> list[LeCamEMA] | None:
    """One LeCam EMA per batch of a step when the GAN and the regulariser are on, restored on resume."""
    if not (job.loss.adv_weight > 0 and job.loss.lecam_weight > 0):
        return None
    anchors = [LeCamEMA(job.loss.lecam_decay) for _ in range(batches_per_step)]
    for anchor, values in zip(anchors, state.get("lecam") or [], strict=False):
        anchor.load_state(values)
    return anchors


def _client_state(step: int, lecam: list[LeCamEMA] | None) -> dict:
    """What a checkpoint carries beside the engines: the step and the LeCam anchors."""
    return {"step": step} | ({"lecam": [a.state() for a in lecam]} if lecam else {})


def evaluate(
    out_dir: str, videos: torch.Tensor | None, step: int, fidelity_frames: int = 0, repeats: int = 1
) -> dict:
    """Held-out reconstruction PSNR of the exported checkpoint (so it also proves the export loads) and,
    with `fidelity_frames`, object fidelity: the detector on reconstructions of fresh clips of every colour x
    shape x motion (`pipelines.fidelity`), with input | reconstruction strips in `<out>/fidelity/`."""
    from modeling.checkpoint import load_checkpoint

    result: dict = {"step": step, "clips": 0, "psnr_db": None}
    model = load_checkpoint(out_dir).model
    if videos is not None:
        with torch.no_grad():
            out = model(videos)
        result.update(
            clips=int(videos.shape[0]),
            psnr_db=float(psnr(out.recon, videos)),
            perplexity=float(out.perplexity),
            used_codes=int(out.used_codes),
        )
    if fidelity_frames:
        from pipelines.fidelity import fidelity_clips, summary_line, tokenizer_fidelity, write_examples

        clips = fidelity_clips(model.cfg.image_size, fidelity_frames, repeats)
        report, recon = tokenizer_fidelity(model, clips)
        report["examples"] = write_examples(Path(out_dir) / "fidelity", clips, recon, report)
        result["fidelity"] = report
        worker_print(f"[{RUN_NAME}] object fidelity on {report['clips']} fresh clips: {summary_line(report)}")
    Path(out_dir, "eval.json").write_text(json.dumps(result, indent=2))
    worker_print(
        f"[{RUN_NAME}] held-out reconstruction: {result['clips']} clips, PSNR "
        + (f"{result['psnr_db']:.2f} dB" if result["psnr_db"] is not None else "n/a")
    )
    return result
