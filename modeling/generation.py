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
    seconds: float = 0.0  # wall time of the call that produced it (a batch's total for generate_batch)

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
        self, emb, mask, fixed: torch.Tensor | None, cfg: SamplingConfig, gen: torch.Generator
    ) -> torch.Tensor:
        tokens = maskgit_sample(
            self.transformer,
            emb,
            mask,
            self.seq_len,
            steps=cfg.steps,
            guidance_scale=cfg.guidance_scale,
            temperature=cfg.temperature,
            sample_temperature=cfg.sample_temperature,
            generator=gen,
            fixed_tokens=fixed,
            schedule=cfg.schedule,
        )
        return tokens.view(-1, *self.grid)

    def _primed(self, primer: torch.Tensor) -> torch.Tensor:
        """Tokens (k, h, w) of the first k latent frames -> fixed_tokens (1, N) with -1 for the rest."""
        fixed = torch.full((1, self.seq_len), -1, dtype=torch.long, device=self.device)
        flat = primer.reshape(-1).to(self.device)
        fixed[0, : flat.numel()] = flat
        return fixed

    # ---- public API ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompts: list[str] | str,
        cfg: SamplingConfig | None = None,
        *,
        text: TextInput | None = None,
        image: np.ndarray | None = None,
    ) -> GeneratedVideo:
        """One prompt: one clip. Several: a story, one segment per prompt. `image` primes the first frame."""
        start = time.perf_counter()
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("generate needs at least one prompt")
        cfg = cfg or self.defaults
        k_lat = self.check_context_frames(cfg.context_frames) if len(prompts) > 1 else 0
        emb, mask = self._text(prompts, text)
        gen = torch.Generator().manual_seed(cfg.seed)

        primer = None
        if image is not None:
            primer = self.encode_frames(
                resize_center_crop(np.asarray(image), self.image_size)[None]
            )  # (1, h, w)
        tokens = self._sample(emb[:1], mask[:1], None if primer is None else self._primed(primer), cfg, gen)
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
            tokens = self._sample(emb[i : i + 1], mask[i : i + 1], self._primed(primer), cfg, gen)
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
    def generate_batch(
        self, prompts: list[str], cfg: SamplingConfig | None = None, *, text: TextInput | None = None
    ) -> list[GeneratedVideo]:
        """Independent one-clip prompts in one batched sampler call (text encoded once for all).

        The rows share one generator, so row b depends on the batch it came in; a batch of one equals
        `generate([prompt], cfg)`.
        """
        start = time.perf_counter()
        prompts = list(prompts)
        if not prompts:
            return []
        cfg = cfg or self.defaults
        emb, mask = self._text(prompts, text)
        gen = torch.Generator().manual_seed(cfg.seed)
        tokens = self._sample(emb, mask, None, cfg, gen)
        frames = self.decode_tokens(tokens)
        seconds = time.perf_counter() - start
        return [
            GeneratedVideo(
                frames=frames[b],
                fps=self.fps,
                segments=[(p, 0, frames.shape[1])],
                tokens=[tokens[b].cpu()],
                fixed_tokens=[None],
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
