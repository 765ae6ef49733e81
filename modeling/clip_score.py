"""CLIP score (Hessel et al. 2021; as torchmetrics reports it): 100 * max(cos(image embedding, text embedding), 0).

The CLIP model is a local transformers directory (`CLIPModel.save_pretrained` output with its tokenizer, e.g.
openai/clip-vit-base-patch32 or -large-patch14 saved once on a machine with network access); nothing is fetched.
Images are brought to CLIP's input as its image processor does: the shorter side resized to the model's
`image_size` (bicubic, antialiased), a centre crop, then CLIP's mean / std (from the directory's
`preprocessor_config.json` when it has one).

Shapes: images (B, 3, H, W) in [0, 1] and B texts -> (B,) scores in [0, 100].
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from modeling.weights import WeightsFileMissing

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SOURCE = (
    "Pass a local CLIP model directory: on a machine with network access run "
    "`CLIPModel.from_pretrained('openai/clip-vit-base-patch32').save_pretrained(DIR)` and the same for its "
    "`CLIPProcessor`, then copy DIR here."
)


def clip_pixels(images: torch.Tensor, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """images (B, 3, H, W) in [0, 1] -> (B, 3, size, size): shorter side to `size`, centre crop, normalised."""
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(
        images.float(), size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
    )
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[..., top : top + size, left : left + size].clamp(0, 1)
    return (x - x.new_tensor(mean).view(1, 3, 1, 1)) / x.new_tensor(std).view(1, 3, 1, 1)


class CLIPScorer(nn.Module):
    def __init__(self, model: nn.Module, tokenizer, mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__()
        self.model, self.tokenizer = model.eval().requires_grad_(False), tokenizer
        self.mean, self.std = tuple(mean), tuple(std)
        self.image_size = int(model.config.vision_config.image_size)
        self.max_length = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def from_dir(cls, path: str | Path) -> CLIPScorer:
        from transformers import AutoTokenizer, CLIPModel

        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise WeightsFileMissing(
                f"no CLIP model directory at {path} (it has no config.json). {CLIP_SOURCE}"
            )
        model = CLIPModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        processor = path / "preprocessor_config.json"
        mean, std = CLIP_MEAN, CLIP_STD
        if processor.is_file():
            settings = json.loads(processor.read_text())
            mean, std = settings.get("image_mean", mean), settings.get("image_std", std)
        return cls(model, tokenizer, mean, std)

    @torch.no_grad()
    def score(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1], B texts -> (B,) CLIP scores."""
        if images.shape[0] != len(texts):
            raise ValueError(f"{images.shape[0]} images but {len(texts)} texts")
        pixels = clip_pixels(images, self.image_size, self.mean, self.std)
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        image = self.model.get_image_features(pixel_values=pixels)
        text = self.model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )
        image, text = _embedding(image), _embedding(text)
        return (100 * F.cosine_similarity(image, text, dim=-1)).clamp(min=0)


def _embedding(out) -> torch.Tensor:
    # transformers 5 returns a model output from get_*_features where 4.x returned the tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output
