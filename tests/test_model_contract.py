"""The contract every model family passes (as diffusers tests every model with one suite).

One entry per checkpoint kind (`modeling.checkpoint.checkpoint_kinds`): a new family must add one here, or
`test_every_checkpoint_kind_has_a_contract` fails. Each family, built from its tiny debug config:
- runs forward on an example input, with finite outputs of the documented shape;
- round-trips through a serving checkpoint (safetensors + config.yaml): same kind, config, weights, outputs;
- has the parameter count `phenaki describe` reports (counted on the meta device, `modeling.flops`);
- is causal in time where it claims to be (C-ViViT: the tokens of the first frames do not depend on later
  frames, so a video can be extended and a story continued).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from modeling.checkpoint import checkpoint_kinds, kind_of, load_checkpoint, save_checkpoint
from modeling.commit_model import commit_transformer_debug
from modeling.cvivit import cvivit_debug
from modeling.discriminator import DiscriminatorConfig
from modeling.flops import count_parameters
from modeling.magvit_vq import magvit_vq_debug
from modeling.maskgit import maskgit_debug


def clip(frames: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(1, 3, frames, size, size) in [-1, 1]."""
    return torch.rand(1, 3, frames, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def text(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(seed)), torch.ones(
        1, 5, dtype=torch.bool
    )


@dataclass(frozen=True)
class Contract:
    config: Callable[[], object]  # the family's tiny config
    inputs: Callable[[], tuple]  # forward's arguments
    output: Callable[[object], torch.Tensor]  # the tensor forward's result is judged by
    shape: tuple[int, ...]  # that tensor's shape
    causal_in_time: bool = False


CONTRACTS: dict[str, Contract] = {
    # 9 frames = the first frame + 4 tubelets of 2 -> 5 x 4 x 4 tokens; reconstruction as the input
    "cvivit": Contract(cvivit_debug, lambda: (clip(9),), lambda out: out.recon, (1, 3, 9, 32, 32), True),
    # 16 frames -> 4 x 4 x 4 tokens (temporal stride 4, spatial 8)
    "magvit_vq": Contract(magvit_vq_debug, lambda: (clip(16),), lambda out: out.recon, (1, 3, 16, 32, 32)),
    "magvit_vq_2d": Contract(magvit_vq_debug, lambda: (clip(3),), lambda out: out.recon, (1, 3, 3, 32, 32)),
    # text by cross-attention; factorized codes (FSQ levels 4, 4, 4): one softmax per digit, 4 + 4 + 4 logits
    "maskgit": Contract(
        lambda: maskgit_debug(text_dim=8),
        lambda: (torch.randint(0, 64, (1, 80), generator=torch.Generator().manual_seed(0)), *text()),
        lambda logits: logits,
        (1, 80, 12),
    ),
    # the paper's layout: one softmax over the 64-code book
    "maskgit-flat": Contract(
        lambda: maskgit_debug(text_dim=8, code_levels=None, position_embedding="learned"),
        lambda: (torch.randint(0, 64, (1, 80), generator=torch.Generator().manual_seed(0)), *text()),
        lambda logits: logits,
        (1, 80, 64),
    ),
    "commit": Contract(
        commit_transformer_debug,
        lambda: (torch.randint(0, 64, (1, 64), generator=torch.Generator().manual_seed(0)), "fp"),
        lambda logits: logits,
        (1, 64, 64),
    ),
    # one realness logit per clip (3D) for the tokenizer's GAN
    "discriminator": Contract(
        lambda: DiscriminatorConfig(image_size=32, base_channels=8, max_channels=16, dims=3),
        lambda: (clip(9),),
        lambda logits: logits,
        (1,),
    ),
}


def kind_of_contract(name: str) -> str:
    """A contract's checkpoint kind: its name up to a variant suffix ("maskgit-flat" -> "maskgit")."""
    return name.split("-")[0]


def build(name: str) -> tuple[torch.nn.Module, object]:
    model_cls, _ = checkpoint_kinds()[kind_of_contract(name)]
    cfg = CONTRACTS[name].config()
    torch.manual_seed(0)
    return model_cls(cfg).eval(), cfg


def test_every_checkpoint_kind_has_a_contract() -> None:
    assert {kind_of_contract(name) for name in CONTRACTS} == set(checkpoint_kinds())


@pytest.mark.parametrize("kind", sorted(CONTRACTS))
def test_forward_is_finite_and_shaped(kind: str) -> None:
    model, _ = build(kind)
    contract = CONTRACTS[kind]
    with torch.no_grad():
        out = contract.output(model(*contract.inputs()))
    assert out.shape == contract.shape
    assert torch.isfinite(out).all()
    assert kind_of(model) == kind_of_contract(kind)


@pytest.mark.parametrize("kind", sorted(CONTRACTS))
def test_serving_checkpoint_round_trip(tmp_path, kind: str) -> None:
    model, cfg = build(kind)
    contract = CONTRACTS[kind]
    digest = save_checkpoint(tmp_path / "ckpt", model, cfg, {"family": kind})
    assert (tmp_path / "ckpt" / "model.safetensors").exists()
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert (loaded.kind, loaded.config, loaded.digest) == (kind_of_contract(kind), cfg, digest)
    assert loaded.extra == {"family": kind}
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    inputs = contract.inputs()
    with torch.no_grad():
        assert torch.equal(contract.output(model(*inputs)), contract.output(loaded.model.eval()(*inputs)))


@pytest.mark.parametrize("kind", sorted(CONTRACTS))
def test_describe_counts_the_parameters_the_model_has(kind: str) -> None:
    model, cfg = build(kind)
    model_cls, _ = checkpoint_kinds()[kind_of_contract(kind)]
    assert count_parameters(model_cls, cfg) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind", sorted(k for k, c in CONTRACTS.items() if c.causal_in_time))
def test_causal_in_time_where_claimed(kind: str) -> None:
    """Changing frames after the first k latent frames' worth leaves those latent frames' tokens unchanged."""
    model, _ = build(kind)
    a, b = clip(9, seed=0), clip(9, seed=1)
    mixed = torch.cat([a[:, :, :5], b[:, :, 5:]], dim=2)  # frames 0-4: the first frame + 2 tubelets of 2
    with torch.no_grad():
        tokens_a, tokens_mixed = model.encode(a), model.encode(mixed)
    assert torch.equal(tokens_a[:, :3], tokens_mixed[:, :3])  # latent frames 0, 1, 2 see frames 0-4 only
    assert not torch.equal(tokens_a[:, 3:], tokens_mixed[:, 3:])


# ----------------------------------------------------------------------------------- generators
def _debug_generator_checkpoint(kind: str, directory):
    from modeling.commit_generation import write_debug_commit_checkpoint
    from modeling.generation import write_debug_checkpoint

    return {"maskgit": write_debug_checkpoint, "commit": write_debug_commit_checkpoint}[kind](directory)


GENERATOR_CHECKPOINTS = ("maskgit", "commit")


def test_every_generator_kind_is_a_transformer_checkpoint_kind() -> None:
    from modeling.checkpoint import checkpoint_kinds
    from modeling.generators import GENERATORS

    assert set(GENERATORS) == set(GENERATOR_CHECKPOINTS) and set(GENERATORS) <= set(checkpoint_kinds())


@pytest.mark.parametrize("kind", sorted(GENERATOR_CHECKPOINTS))
def test_load_generator_picks_the_family_by_the_checkpoints_kind(tmp_path, kind: str) -> None:
    """One loading contract for both families: kind, title, clip length and rate, and the checkpoint's
    digests in `meta`, whichever family wrote the checkpoint."""
    from modeling.checkpoint import read_checkpoint_meta
    from modeling.generators import generator_class, generator_kind, load_generator

    ckpt = _debug_generator_checkpoint(kind, tmp_path / kind)
    assert generator_kind(ckpt) == kind
    gen = load_generator(ckpt)
    assert type(gen) is generator_class(kind) and gen.kind == kind and gen.title
    assert gen.num_frames >= 1 and gen.fps > 0
    assert gen.meta["digest"] == read_checkpoint_meta(ckpt)["digest"] and gen.meta["tokenizer_digest"]


def test_generator_kind_refuses_what_is_not_a_transformer_checkpoint(tmp_path) -> None:
    from modeling.generators import generator_kind

    ckpt = _debug_generator_checkpoint("maskgit", tmp_path / "t")
    with pytest.raises(ValueError, match=r"holds a 'cvivit' checkpoint: generation takes a transformer"):
        generator_kind(ckpt / "tokenizer")
    with pytest.raises(FileNotFoundError, match="not a phenaki checkpoint"):
        generator_kind(tmp_path)
