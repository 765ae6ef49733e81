"""phenaki-pytorch (lucidrains, PyPI `phenaki-pytorch==0.5.0`, the `bench` extra) built at our configuration.

The one place that knows how to load the peer on a CPU-only machine with no network. Three things stand in the
way, each worked around here without changing what the peer computes:

1. Its `cvivit.py` imports torchvision, a CUDA build on PyPI that imports next to our CPU torch only once
   `modeling.torchvision_compat` has declared two op schemas (importing `modeling` does it). The peer uses no
   torchvision op at inference: torchvision is only its VGG16 perceptual loss, which we switch off.
2. `Phenaki.__init__` asks the Hugging Face hub for a T5 config to learn the text width, even when
   `text_embed_dim` is given (`default()` evaluates it eagerly). We enter our text width in its T5 config cache
   under a name of our own, so nothing is fetched (HF_HUB_OFFLINE=1 holds).
3. `CViViT(use_vgg_and_gan=True)` (its default) downloads VGG16 weights and builds a discriminator; both are
   training losses. We pass `use_vgg_and_gan=False`.

Its `encode_texts` (a T5 encoder from the hub) is replaced by a function returning the given text embeddings,
so both implementations sample from the same (1, L, Dt) text. Axes as in `modeling.maskgit`.
"""

from __future__ import annotations

from importlib import metadata
from types import ModuleType, SimpleNamespace

import torch
from torch import nn

from modeling.cvivit import CViViTConfig
from modeling.maskgit import MaskGITConfig
from modeling.torchvision_compat import declare_torchvision_ops

PEER_DIST = "phenaki-pytorch"
TEXT_ENCODER_NAME = "phenaki-ray-benchmark-text"  # our entry in the peer's T5 config cache (never fetched)


def peer_version() -> str | None:
    try:
        return metadata.version(PEER_DIST)
    except metadata.PackageNotFoundError:
        return None


def import_peer() -> ModuleType:
    """The `phenaki_pytorch` module, importable offline on a CPU torch; a clear error when it is not installed."""
    if peer_version() is None:
        raise ModuleNotFoundError(
            f"{PEER_DIST} is not installed: it is the project's `bench` extra. Run `bash scripts/install.sh` "
            "(or `pip install -c scripts/constraints.txt -e '.[bench]'`, which keeps the CPU torch)."
        )
    declare_torchvision_ops()  # already run by `import modeling`; a no-op then
    import phenaki_pytorch
    import phenaki_pytorch.t5  # noqa: F401  (build_peer fills its config cache)

    return phenaki_pytorch


def check_comparable(tok: CViViTConfig, mg: MaskGITConfig) -> None:
    """Refuse configurations the peer cannot express the same way (its MLPs are 4x wide, one spatial depth for
    encoder and decoder, a separate first-frame projection, positions in the encoder)."""
    problems = []
    if tok.mlp_dim != 4 * tok.dim:
        problems.append(
            f"tokenizer mlp_dim {tok.mlp_dim} != 4 * dim {tok.dim} (the peer's C-ViViT MLP is 4x)"
        )
    if tok.dim % tok.heads or mg.dim % mg.heads:
        problems.append("dim must divide by heads on both models")
    if tok.encoder_spatial_depth is not None or not tok.encoder_positions or tok.first_frame != "separate":
        problems.append(
            "tokenizer must use the paper's layout (encoder_spatial_depth None, positions, separate)"
        )
    if mg.code_levels is not None:
        problems.append("transformer must predict one softmax over the codebook (code_levels None)")
    if tok.codebook_size & (tok.codebook_size - 1):
        problems.append(f"codebook_size {tok.codebook_size} must be a power of 2 (the peer's default LFQ)")
    if problems:
        raise ValueError("configuration not comparable with phenaki-pytorch: " + "; ".join(problems))


def build_peer(
    tok: CViViTConfig, mg: MaskGITConfig, steps: int, text: torch.Tensor, text_mask: torch.Tensor
) -> nn.Module:
    """A `phenaki_pytorch.Phenaki` (eval mode, random weights) at our tokenizer and transformer configuration,
    sampling with `steps` MaskGIT steps from the text (1, L, Dt) whose padding (text_mask False) is zeroed, as
    the peer reads its mask from all-zero rows."""
    check_comparable(tok, mg)
    peer = import_peer()
    # What `Phenaki.__init__` looks up (get_encoded_dim) before it would ask the hub.
    peer.t5.T5_CONFIGS[TEXT_ENCODER_NAME] = {"config": SimpleNamespace(d_model=mg.text_dim)}
    cvivit = peer.CViViT(
        dim=tok.dim,
        codebook_size=tok.codebook_size,
        image_size=tok.image_size,
        patch_size=tok.patch_size,
        temporal_patch_size=tok.temporal_patch_size,
        spatial_depth=tok.spatial_depth,
        temporal_depth=tok.temporal_depth,
        dim_head=tok.dim // tok.heads,
        heads=tok.heads,
        channels=tok.channels,
        use_vgg_and_gan=False,
    )
    maskgit = peer.MaskGit(
        num_tokens=tok.codebook_size,
        max_seq_len=mg.seq_len,
        dim=mg.dim,
        dim_context=mg.text_dim,
        depth=mg.depth,
        heads=mg.heads,
        dim_head=mg.dim // mg.heads,
        ff_mult=mg.mlp_dim / mg.dim,
    )
    model = peer.Phenaki(
        cvivit=cvivit, maskgit=maskgit, steps=steps, t5_name=TEXT_ENCODER_NAME, text_embed_dim=mg.text_dim
    ).eval()
    embeddings = text * text_mask[..., None]

    def encode_texts(texts: list[str], output_device: torch.device | None = None) -> torch.Tensor:
        return embeddings.expand(len(texts), -1, -1).to(output_device)

    model.encode_texts = encode_texts
    return model
