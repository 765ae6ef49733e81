"""Text-to-video generation: text encoder -> MaskGIT sampler -> C-ViViT decoder (Phenaki sec. 3.2-3.3).

One prompt gives one clip of `num_frames` frames. Several prompts tell a *story* (sec. 3.3): after the first
clip, the last K decoded frames are re-encoded by C-ViViT as a new clip (their first frame becomes the image
frame), their tokens are held fixed, the rest of the window is sampled under the next prompt, the whole
window is decoded and its frames after the K context frames are appended. `animate` primes the first latent
frame with the tokens of a still image instead.

Axes: T frames, H/W pixels, t latent frames, h/w token grid, N = t*h*w tokens, L text tokens, D text width.
All randomness comes from one `torch.Generator` seeded with `SamplingConfig.seed`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modeling.checkpoint import GenerationRecord, TokenizerRecord, load_checkpoint, save_checkpoint
from modeling.cvivit import CViViT, cvivit_debug
from modeling.maskgit import MaskGIT, maskgit_debug
from modeling.pixels import frames_to_video, resize_center_crop, video_to_frames
from modeling.sampling import maskgit_sample
from modeling.text_encoder import DEFAULT_TEXT_ENCODER, TextEncoder, load_text_encoder
from modeling.tokenizers import check_tokenizer_kind

log = logging.getLogger(__name__)

TextInput = tuple[torch.Tensor, torch.Tensor]  # (emb (B, L, D) float, mask (B, L) bool)


@dataclass
class SamplingConfig:
    steps: int = 12
    guidance_scale: float = 6.0  # lambda in cond + lambda * (cond - uncond); 0 = conditional model only
    temperature: float = 4.5  # choice (Gumbel) temperature on confidences, annealed linearly to 0
    sample_temperature: float = 1.0  # softmax temperature of the token distribution
    context_frames: int = 5  # K frames carried into the next story segment; 1 + j * t_p
    seed: int = 0
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.temperature < 0 or self.sample_temperature <= 0:
            raise ValueError("temperature must be >= 0 and sample_temperature > 0")
        if self.context_frames < 1:
            raise ValueError(f"context_frames must be >= 1, got {self.context_frames}")

    def replace(self, **changes) -> SamplingConfig:
        """A copy with the non-None `changes` applied (handy for optional CLI/HTTP fields)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_dict(cls, values: dict | None) -> SamplingConfig:
        """Known keys only; unknown ones (other samplers' settings in a shared `sampling` section) are logged."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(values) - known):
            log.warning("ignoring unknown sampling setting(s) %s", unknown)
        types = {"steps": int, "seed": int, "context_frames": int, "schedule": str}
        return cls(**{k: types.get(k, float)(v) for k, v in values.items() if k in known})


@dataclass
class GeneratedVideo:
    frames: np.ndarray  # (T, H, W, 3) uint8
    fps: float
    segments: list[tuple[str, int, int]]  # (prompt, start_frame, end_frame) per segment, end exclusive
    tokens: list[torch.Tensor]  # per segment: the sampled window (t, h, w) long
    # per segment: the tokens held fixed while sampling it (re-encoded context or image), (k, h, w); None if free
    fixed_tokens: list[torch.Tensor | None] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the call that produced it (a batch's total for generate_clips)

    @property
    def duration(self) -> float:
        return len(self.frames) / self.fps

    @property
    def prompts(self) -> list[str]:
        return [s[0] for s in self.segments]


# ---- the generator ----------------------------------------------------------------------------------------------
class VideoGenerator:
    """A loaded transformer + tokenizer (+ lazily loaded text encoder). Not thread-safe: serialise calls."""

    kind = "maskgit"  # `modeling.generators.GENERATORS`
    title = "Phenaki"

    def __init__(
        self,
        transformer: MaskGIT,
        tokenizer: nn.Module,  # a tokenizer family of modeling.tokenizers (C-ViViT or MAGVIT-VQ)
        *,
        num_frames: int,
        fps: float,
        text_encoder: str | TextEncoder = DEFAULT_TEXT_ENCODER,
        defaults: SamplingConfig | None = None,
        device: str | torch.device = "cpu",
        meta: dict | None = None,
        max_text_length: int = 32,
    ):
        self.device = torch.device(device)
        self.transformer = transformer.to(self.device).eval()
        self.tokenizer = tokenizer.to(self.device).eval()
        self.num_frames = int(num_frames)
        self.fps = float(fps)
        self.defaults = defaults or SamplingConfig()
        self.meta = dict(meta or {})
        self.max_text_length = int(max_text_length)
        self._text_encoder = text_encoder if isinstance(text_encoder, TextEncoder) else None
        self.text_encoder_name = (
            text_encoder.name if isinstance(text_encoder, TextEncoder) else str(text_encoder)
        )
        if tokenizer.cfg.codebook_size != transformer.cfg.codebook_size:
            raise ValueError(
                f"tokenizer has {tokenizer.cfg.codebook_size} codes but the transformer predicts "
                f"{transformer.cfg.codebook_size}"
            )
        self.grid = tokenizer.token_grid(self.num_frames)  # (t, h, w); validates num_frames
        if self.seq_len > transformer.cfg.seq_len:
            raise ValueError(
                f"{self.num_frames} frames make {self.seq_len} tokens > the transformer's seq_len "
                f"{transformer.cfg.seq_len}"
            )
        self.check_context_frames(self.defaults.context_frames)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> VideoGenerator:
        """Load `<path>` (MaskGIT) and `<path>/tokenizer` (C-ViViT or MAGVIT-VQ).

        The transformer's `extra` must hold `num_frames` and `fps`; `text_encoder` (default "minilm"),
        `max_text_length` (default 32, as used when the token cache was built) and `sampling` (defaults for
        `SamplingConfig`) are optional.
        """
        path = Path(path)
        loaded = load_checkpoint(path, device)
        if loaded.kind != "maskgit":
            raise ValueError(
                f"{path} holds a {loaded.kind!r} checkpoint; generation needs a transformer (maskgit)"
            )
        tok_dir = path / "tokenizer"
        if not (tok_dir / "config.yaml").exists():
            raise FileNotFoundError(
                f"{path} has no tokenizer/ subdirectory: a transformer checkpoint must hold its tokenizer"
            )
        tok = load_checkpoint(tok_dir, device)
        check_tokenizer_kind(tok.kind, str(tok_dir))
        record = loaded.generation
        meta = {
            "checkpoint": str(path.resolve()),
            "digest": loaded.digest,
            "tokenizer_digest": tok.digest,
            "train_step": record.step,
        }
        return cls(
            loaded.model,
            tok.model,
            num_frames=record.num_frames,
            fps=record.fps,
            text_encoder=record.text_encoder,
            defaults=SamplingConfig.from_dict(record.sampling),
            device=device,
            meta=meta,
            max_text_length=record.max_text_length,
        )

    # ---- facts ----------------------------------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[1] * self.grid[2]

    @property
    def image_size(self) -> int:
        return self.tokenizer.cfg.image_size

    def check_context_frames(self, k: int) -> int:
        """K context frames -> their number of latent frames. K must be a clip length the tokenizer takes
        (C-ViViT: 1 + j*t_p; MAGVIT-VQ: a multiple of 4) and leave at least one latent frame to generate."""
        tok = self.tokenizer
        step = tok.num_frames(2) - tok.num_frames(1)  # frames per latent frame after the first
        first = tok.num_frames(1)
        if k < first or (k - first) % step or k > self.num_frames - step:
            raise ValueError(
                f"context_frames must be {first} + j*{step} and at most {self.num_frames - step} (segments are "
                f"{self.num_frames} frames), got {k}"
            )
        return tok.latent_frames(k)

    def num_output_frames(self, num_segments: int, context_frames: int | None = None) -> int:
        k = self.defaults.context_frames if context_frames is None else context_frames
        return self.num_frames + (num_segments - 1) * (self.num_frames - k)

    def info(self) -> dict:
        t, h, w = self.grid
        return {
            **self.meta,
            "text_encoder": self.text_encoder_name,
            "max_text_length": self.max_text_length,
            "num_frames": self.num_frames,
            "fps": self.fps,
            "clip_seconds": self.num_frames / self.fps,
            "image_size": self.image_size,
            "token_grid": [t, h, w],
            "seq_len": self.seq_len,
            "codebook_size": self.transformer.cfg.codebook_size,
            "temporal_patch_size": self.tokenizer.cfg.temporal_patch_size,
            "transformer_params": sum(p.numel() for p in self.transformer.parameters()),
            "tokenizer_params": sum(p.numel() for p in self.tokenizer.parameters()),
            "defaults": dataclasses.asdict(self.defaults),
            "device": str(self.device),
        }

    # ---- text ----------------------------------------------------------------------------------------------
    @property
    def text_encoder(self) -> TextEncoder:
        if self._text_encoder is None:
            self._text_encoder = load_text_encoder(self.text_encoder_name, self.max_text_length)
            self._text_encoder.to(self.device)
        return self._text_encoder

    def encode_text(self, prompts: list[str]) -> TextInput:
        emb, mask = self.text_encoder.encode(list(prompts))
        return emb.to(self.device), mask.to(self.device)

    def _text(self, prompts: list[str], text: TextInput | None) -> TextInput:
        if text is None:
            emb, mask = self.encode_text(prompts)
        else:
            emb, mask = (
                torch.as_tensor(text[0]).float().to(self.device),
                torch.as_tensor(text[1]).bool().to(self.device),
            )
            if emb.ndim != 3 or mask.shape != emb.shape[:2] or emb.shape[0] != len(prompts):
                raise ValueError(
                    f"text must be (emb (B, L, D), mask (B, L)) with B = {len(prompts)} prompts, got "
                    f"{tuple(emb.shape)} and {tuple(mask.shape)}"
                )
        if emb.shape[-1] != self.transformer.cfg.text_dim:
            raise ValueError(
                f"text embeddings are {emb.shape[-1]}-d, the transformer expects {self.transformer.cfg.text_dim}"
            )
        return emb, mask

    # ---- tokens <-> frames ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """(T, H, W, 3) uint8 at the tokenizer's size -> tokens (t, h, w) long (a one-frame video for T = 1)."""
        return self.tokenizer.encode(frames_to_video(frames).to(self.device))[0]

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        """(B, t, h, w) -> (B, T, H, W, 3) uint8."""
        return video_to_frames(self.tokenizer.decode(tokens.to(self.device)))

    def _sample(
        self,
        emb,
        mask,
        fixed: torch.Tensor | None,
        cfgs: list[SamplingConfig],
        gens: list[torch.Generator],
        on_step: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """One sampler call for B rows: row b uses cfgs[b]'s guidance and temperatures and draws from gens[b];
        every row shares cfgs[0]'s steps and schedule. -> (B, t, h, w) long."""
        first = cfgs[0]
        if any((c.steps, c.schedule) != (first.steps, first.schedule) for c in cfgs):
            raise ValueError("rows sampled together must share steps and schedule")

        def row_values(name: str) -> float | torch.Tensor:
            values = [float(getattr(c, name)) for c in cfgs]
            return values[0] if len(set(values)) == 1 else torch.tensor(values)

        tokens = maskgit_sample(
            self.transformer,
            emb,
            mask,
            self.seq_len,
            steps=first.steps,
            guidance_scale=row_values("guidance_scale"),
            temperature=row_values("temperature"),
            sample_temperature=row_values("sample_temperature"),
            generator=gens[0] if len(gens) == 1 else gens,
            fixed_tokens=fixed,
            schedule=first.schedule,
            on_step=on_step,
        )
        return tokens.view(-1, *self.grid)

    def _primed(self, primers: list[torch.Tensor | None]) -> torch.Tensor | None:
        """Per row, the tokens (k, h, w) of its first k latent frames or None -> fixed_tokens (B, N), -1 for the
        tokens to sample; None when no row has a primer."""
        if all(p is None for p in primers):
            return None
        fixed = torch.full((len(primers), self.seq_len), -1, dtype=torch.long, device=self.device)
        for row, primer in enumerate(primers):
            if primer is not None:
                flat = primer.reshape(-1).to(self.device)
                fixed[row, : flat.numel()] = flat
        return fixed

    def steps_run(self, steps: int, fixed_latent_frames: int) -> int:
        """Sampling steps a window really takes: each step fixes at least one token, so the loop ends after at
        most as many steps as tokens to generate (`modeling.sampling.parallel_decode`)."""
        return min(steps, self.seq_len - fixed_latent_frames * self.tokens_per_frame)

    def _image_tokens(self, image: np.ndarray) -> torch.Tensor:
        """A still of any size -> the tokens (1, h, w) of its centre crop at the tokenizer's size."""
        return self.encode_frames(resize_center_crop(np.asarray(image), self.image_size)[None])

    # ---- public API ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompts: list[str] | str,
        cfg: SamplingConfig | None = None,
        *,
        text: TextInput | None = None,
        image: np.ndarray | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> GeneratedVideo:
        """One prompt: one clip. Several: a story, one segment per prompt. `image` primes the first frame.
        `on_step(done, total)` after every sampling step (total = steps x segments): progress, or cancel by
        raising."""
        start = time.perf_counter()
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("generate needs at least one prompt")
        cfg = cfg or self.defaults
        k_lat = self.check_context_frames(cfg.context_frames) if len(prompts) > 1 else 0
        emb, mask = self._text(prompts, text)
        gen = torch.Generator().manual_seed(cfg.seed)

        # steps each segment really runs: the first fixes the image's latent frame (if any), later ones k_lat
        runs = [self.steps_run(cfg.steps, 1 if image is not None else 0)]
        runs += [self.steps_run(cfg.steps, k_lat)] * (len(prompts) - 1)

        def segment_steps(segment: int) -> Callable[[int], None] | None:
            if on_step is None:
                return None
            return lambda done: on_step(sum(runs[:segment]) + done, sum(runs))

        primer = None if image is None else self._image_tokens(image)  # (1, h, w)
        tokens = self._sample(emb[:1], mask[:1], self._primed([primer]), [cfg], [gen], segment_steps(0))
        window = self.decode_tokens(tokens)[0]
        pieces, all_tokens = [window], [tokens[0].cpu()]
        all_fixed = [None if primer is None else primer.cpu()]
        segments = [(prompts[0], 0, len(window))]
        total = len(window)

        k = cfg.context_frames
        for i in range(1, len(prompts)):
            # Sec. 3.3: re-encode the last K output frames as a fresh clip; their tokens are kept bit-exact.
            context = np.concatenate(pieces, axis=0)[-k:] if len(pieces[-1]) < k else pieces[-1][-k:]
            primer = self.encode_frames(context)  # (k_lat, h, w)
            assert primer.shape[0] == k_lat
            tokens = self._sample(
                emb[i : i + 1], mask[i : i + 1], self._primed([primer]), [cfg], [gen], segment_steps(i)
            )
            new = self.decode_tokens(tokens)[0][k:]
            pieces.append(new)
            all_tokens.append(tokens[0].cpu())
            all_fixed.append(primer.cpu())
            segments.append((prompts[i], total, total + len(new)))
            total += len(new)

        return GeneratedVideo(
            frames=np.concatenate(pieces, axis=0),
            fps=self.fps,
            segments=segments,
            tokens=all_tokens,
            fixed_tokens=all_fixed,
            seconds=time.perf_counter() - start,
        )

    @torch.no_grad()
    def generate_clips(
        self,
        prompts: list[str],
        cfgs: list[SamplingConfig] | SamplingConfig | None = None,
        *,
        images: list[np.ndarray | None] | None = None,
        text: TextInput | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> list[GeneratedVideo]:
        """Independent one-clip requests in one batched sampler call: the text is encoded once for all, each row
        keeps its own seed, guidance and temperatures (`cfgs`, one per prompt, sharing steps and schedule) and
        optional first image, so clip b equals `generate([prompts[b]], cfgs[b], image=images[b])` up to float
        rounding in batched kernels. `on_step(done, steps)` as in `generate`."""
        start = time.perf_counter()
        prompts = list(prompts)
        if not prompts:
            return []
        cfgs = [cfgs or self.defaults] * len(prompts) if not isinstance(cfgs, list) else cfgs
        images = images or [None] * len(prompts)
        if not len(cfgs) == len(images) == len(prompts):
            raise ValueError(f"{len(prompts)} prompts, {len(cfgs)} configs and {len(images)} images")
        emb, mask = self._text(prompts, text)
        gens = [torch.Generator().manual_seed(c.seed) for c in cfgs]
        primers = [None if im is None else self._image_tokens(im) for im in images]
        steps = self.steps_run(cfgs[0].steps, 1 if all(p is not None for p in primers) else 0)
        tokens = self._sample(
            emb, mask, self._primed(primers), cfgs, gens,
            None if on_step is None else (lambda done: on_step(done, steps)),
        )  # fmt: skip
        frames = self.decode_tokens(tokens)
        seconds = time.perf_counter() - start
        return [
            GeneratedVideo(
                frames=frames[b],
                fps=self.fps,
                segments=[(p, 0, frames.shape[1])],
                tokens=[tokens[b].cpu()],
                fixed_tokens=[None if primers[b] is None else primers[b].cpu()],
                seconds=seconds,
            )
            for b, p in enumerate(prompts)
        ]

    def animate(
        self,
        image: np.ndarray,
        prompt: str | list[str],
        cfg: SamplingConfig | None = None,
        *,
        text: TextInput | None = None,
    ) -> GeneratedVideo:
        """Animate a still: its tokens fix the first latent frame; several prompts continue it as a story."""
        return self.generate(prompt, cfg, text=text, image=image)


# ---- a random debug checkpoint ------------------------------------------------------------------------------
def write_debug_checkpoint(
    directory: str | Path,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    temporal_patch_size: int = 2,
    num_frames: int = 9,
    fps: float = 8.0,
    text_encoder: str = DEFAULT_TEXT_ENCODER,
    text_dim: int = 384,
    sampling: dict | None = None,
    seed: int = 0,
) -> Path:
    """An untrained, tiny transformer checkpoint with its tokenizer inside (tests, smoke runs of serve/generate)."""
    directory = Path(directory)
    torch.manual_seed(seed)
    tok_cfg = cvivit_debug(
        image_size=image_size, patch_size=patch_size, temporal_patch_size=temporal_patch_size
    )
    tok = CViViT(tok_cfg).eval()
    t, h, w = tok.token_grid(num_frames)
    mg_cfg = maskgit_debug(codebook_size=tok_cfg.codebook_size, seq_len=t * h * w, tokens_per_frame=h * w,
                           text_dim=text_dim, code_levels=tok_cfg.fsq_levels)  # fmt: skip
    mg = MaskGIT(mg_cfg).eval()
    record = GenerationRecord(num_frames, fps, text_encoder=text_encoder, sampling=dict(sampling or {}))
    save_checkpoint(directory, mg, mg_cfg, record.to_extra())
    save_checkpoint(directory / "tokenizer", tok, tok_cfg, TokenizerRecord(num_frames, fps).to_extra())
    return directory
