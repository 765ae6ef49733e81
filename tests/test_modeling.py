"""Contract tests every model passes, plus the Phenaki invariants (DESIGN.md: 'Invariants worth a test')."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from jobs.config import apply_overrides, load_config
from modeling.checkpoint import load_checkpoint, save_checkpoint
from modeling.cvivit import CViViT, CViViTConfig
from modeling.discriminator import DiscriminatorConfig, StyleGANDiscriminator
from modeling.maskgit import MaskGIT, MaskGITConfig
from modeling.masking import cosine_schedule, mvtm_loss, random_training_mask
from modeling.quantizer import FactorizedQuantizer
from modeling.sampling import guided_logits, maskgit_sample, num_masked_after_step
from modeling.typed_config import build_dataclass

TINY_CVIVIT = CViViTConfig(
    image_size=32,
    patch_size=8,
    temporal_patch_size=2,
    dim=32,
    spatial_depth=1,
    temporal_depth=2,
    heads=4,
    mlp_dim=64,
    code_dim=8,
    codebook_size=32,
)
TINY_MASKGIT = MaskGITConfig(
    codebook_size=32, seq_len=80, tokens_per_frame=16, dim=32, depth=2, heads=4, mlp_dim=64, text_dim=24
)


def video(b: int = 2, t: int = 9, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, 32, 32, generator=g) * 2 - 1


def text(b: int = 2, length: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 3:] = False
    return torch.randn(b, length, 24, generator=g), mask


TINY_FSQ = dict(quantizer="fsq", fsq_levels=[4, 4, 2], codebook_size=32, first_frame="repeat",
                encoder_spatial_depth=0, encoder_positions=False)  # fmt: skip
CVIVIT_VARIANTS = {"paper": {}, "repeat": {"first_frame": "repeat"}, "fsq-local": TINY_FSQ}


@pytest.fixture(params=list(CVIVIT_VARIANTS))
def cvivit(request) -> CViViT:
    """The paper's layout; the first frame as a static tubelet; and the demo's local FSQ codes."""
    torch.manual_seed(0)
    return CViViT(dataclasses.replace(TINY_CVIVIT, **CVIVIT_VARIANTS[request.param])).eval()


@pytest.fixture
def maskgit() -> MaskGIT:
    torch.manual_seed(0)
    return MaskGIT(TINY_MASKGIT).eval()


# ---- C-ViViT ------------------------------------------------------------------------------------------------


def test_cvivit_shapes_and_token_grid(cvivit):
    out = cvivit(video())
    assert out.recon.shape == (2, 3, 9, 32, 32)
    assert out.indices.shape == (2, 5, 4, 4) == (2, *cvivit.token_grid(9))
    assert cvivit.decode(out.indices).shape == (2, 3, 9, 32, 32)
    with pytest.raises(ValueError, match="1 \\+ k\\*2"):
        cvivit.encode(video(t=8))


@pytest.mark.parametrize("t", [1, 2, 3, 4])
def test_cvivit_is_causal_in_time(cvivit, t):
    """Perturbing frames belonging to latent frames >= t leaves every token of latent frames < t unchanged."""
    x = video(t=9)
    first_changed_frame = 1 + (t - 1) * TINY_CVIVIT.temporal_patch_size
    y = x.clone()
    y[:, :, first_changed_frame:] = torch.rand_like(y[:, :, first_changed_frame:]) * 2 - 1
    before = cvivit.encode_latents(x)
    after = cvivit.encode_latents(y)
    assert torch.equal(before[:, :t], after[:, :t])
    assert not torch.allclose(before[:, t:], after[:, t:])


def test_cvivit_decoder_is_causal_in_time(cvivit):
    idx = cvivit.encode(video())
    changed = idx.clone()
    changed[:, 3:] = (changed[:, 3:] + 1) % TINY_CVIVIT.codebook_size
    a, b = cvivit.decode(idx), cvivit.decode(changed)
    frames_before = 1 + 2 * TINY_CVIVIT.temporal_patch_size
    assert torch.equal(a[:, :, :frames_before], b[:, :, :frames_before])


def test_image_is_one_frame_video(cvivit):
    x = video(t=9)
    image_tokens = cvivit.encode(x[:, :, :1])
    assert image_tokens.shape == (2, 1, 4, 4)
    assert torch.equal(image_tokens[:, 0], cvivit.encode(x)[:, 0])  # first frame encoded alone
    assert cvivit.decode(image_tokens).shape == (2, 3, 1, 32, 32)


def test_repeated_first_frame_shares_the_tubelet_projection():
    """`first_frame: repeat`: a still is the static tubelet [x0, x0] in both directions, so images and video
    frames share one code language; the paper's separate image projections are not built at all."""
    torch.manual_seed(0)
    model = CViViT(dataclasses.replace(TINY_CVIVIT, first_frame="repeat", encoder_spatial_depth=0)).eval()
    paper = CViViT(TINY_CVIVIT)
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith(("first_frame_in", "first_frame_out")) for n in names)
    assert not any(n.startswith("enc_spatial.") for n in names)  # encoder_spatial_depth=0: local codes
    assert any(n.startswith("dec_spatial.") for n in names)  # the decoder keeps its spatial layers
    image = video(t=1)
    static = image.expand(-1, -1, 2, -1, -1)
    assert torch.equal(model._patchify(image), model.tubelet_in(
        static.reshape(2, 3, 1, 2, 4, 8, 4, 8).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(2, 1, 4, 4, -1)
    ))  # fmt: skip
    assert sum(p.numel() for p in paper.parameters()) > sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="first_frame"):
        CViViTConfig(first_frame="tile")


@pytest.mark.parametrize("variant", list(CVIVIT_VARIANTS))
def test_cvivit_gradients_reach_every_trainable_parameter(variant):
    torch.manual_seed(0)
    model = CViViT(dataclasses.replace(TINY_CVIVIT, **CVIVIT_VARIANTS[variant])).train()
    x = video()
    out = model(x)
    (torch.nn.functional.mse_loss(out.recon, x) + out.vq_loss).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    # Temporal positions beyond the clip length are legitimately unused.
    assert missing == [], missing


# ---- quantizer ----------------------------------------------------------------------------------------------


def test_quantizer_picks_nearest_normalized_code_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    q = FactorizedQuantizer(16, 4, 8, codebook_update="loss").eval()
    x = torch.randn(10, 16, requires_grad=True)
    out = q(x)
    z = torch.nn.functional.normalize(q.project_in(x), dim=-1)
    expected = ((z[:, None] - q.normalized_codebook()[None]) ** 2).sum(-1).argmin(-1)
    assert torch.equal(out.indices, expected)
    out.quantized.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_dead_code_restart_reseeds_unused_codes_from_encoder_outputs():
    torch.manual_seed(0)
    q = FactorizedQuantizer(16, 4, 8)
    q.usage.zero_()
    q.usage[:2] = 1.0
    x = torch.randn(50, 16)
    restarted = q.restart_dead_codes(x, threshold=0.5, generator=torch.Generator().manual_seed(0))
    assert restarted == 6
    assert torch.all(q.usage >= 0.5)  # restarted codes get a grace period above the threshold
    assert torch.allclose(q.codebook.norm(dim=-1), torch.ones(8), atol=1e-5)


def test_dead_code_restart_prefers_vectors_the_live_codes_do_not_cover():
    """k-means++-style seeding: with 95% of inputs on one live code (a plain background), restarted codes
    come from the rare far-away inputs (the objects), not from near-copies of the background."""
    torch.manual_seed(0)
    q = FactorizedQuantizer(4, 4, 8)
    with torch.no_grad():
        q.project_in.weight.copy_(torch.eye(4))
        q.project_in.bias.zero_()
    background = torch.nn.functional.normalize(torch.tensor([1.0, 0.0, 0.0, 0.0]), dim=0)
    q.codebook[0] = background
    q.usage.zero_()
    q.usage[0] = 10.0
    objects = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]).repeat(5, 1)
    x = torch.cat([background.repeat(190, 1), objects])
    q.restart_dead_codes(x, threshold=0.5, generator=torch.Generator().manual_seed(0))
    similarity_to_background = q.codebook[1:] @ background
    assert torch.all(similarity_to_background < 0.5)


def test_fsq_rounds_each_dim_to_its_levels_and_ids_are_mixed_radix_digits():
    from modeling.quantizer import FiniteScalarQuantizer

    torch.manual_seed(0)
    q = FiniteScalarQuantizer(16, [8, 5, 3])
    assert q.codebook_size == 120 and not q.restartable and q.restart_dead_codes(torch.randn(4, 16)) == 0
    ids = torch.arange(120)
    digits = q.digits(ids)
    assert torch.equal((digits * torch.tensor([1, 8, 40])).sum(-1), ids)  # dim 0 least significant
    assert digits.max(0).values.tolist() == [7, 4, 2] and digits.min() == 0
    x = torch.randn(500, 16, requires_grad=True)
    out = q(x)
    assert out.indices.shape == (500,) and int(out.indices.min()) >= 0 and int(out.indices.max()) < 120
    assert float(out.vq_loss) == 0.0  # no codebook to learn, no commitment term
    # the decoder's view of an id equals what the forward pass hands the decoder
    torch.testing.assert_close(q.codes_to_embeddings(out.indices), out.quantized)
    bounded = q.bound(q.project_in(x))  # every dim within its level range, so rounding gives exactly L values
    assert (bounded.abs() <= (torch.tensor([8.0, 5.0, 3.0]) - 1) / 2 + 0.5 + 1e-4).all()
    out.quantized.sum().backward()  # straight-through: the encoder side gets a gradient
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="levels"):
        FiniteScalarQuantizer(16, [8, 1])
    with pytest.raises(ValueError, match="product is codebook_size"):
        CViViTConfig(quantizer="fsq", fsq_levels=[8, 8], codebook_size=32)


def test_local_codes_ignore_where_a_patch_is():
    """encoder_positions off and no encoder spatial layers: a code depends on its patch (and the patch's own
    past), not on where the patch sits, so plain background is one code everywhere."""
    torch.manual_seed(0)
    model = CViViT(dataclasses.replace(TINY_CVIVIT, **TINY_FSQ)).eval()
    assert not any(n.startswith("enc_space_pos") for n, _ in model.named_parameters())
    frame = torch.full((1, 3, 1, 32, 32), 0.9)
    frame[..., 2:7, 3:8] = -0.5  # one object in the top-left patch
    codes = model.encode(frame)[0, 0]
    background = codes.flatten()[1:]
    assert (background == background[0]).all() and codes[0, 0] != background[0]


def test_ema_codebook_moves_towards_assigned_inputs():
    torch.manual_seed(0)
    q = FactorizedQuantizer(8, 4, 4, ema_decay=0.5).train()
    x = torch.randn(64, 8)
    before = q.codebook.clone()
    q(x)
    assert not torch.allclose(before, q.codebook)


# ---- masking and loss ---------------------------------------------------------------------------------------


def test_cosine_schedule_endpoints_and_monotone():
    r = torch.linspace(0, 1, 11)
    g = cosine_schedule(r)
    assert g[0] == 1.0 and abs(float(g[-1])) < 1e-6
    assert torch.all(g[1:] <= g[:-1])


def test_training_mask_counts_follow_schedule_and_respect_image_rows():
    num_scored = torch.tensor([80, 16, 80, 16])
    mask = random_training_mask(num_scored, 80, torch.Generator().manual_seed(0))
    assert mask.shape == (4, 80)
    assert not mask[1, 16:].any() and not mask[3, 16:].any()  # images: only the first frame's tokens
    assert torch.all(mask.sum(1) >= 1)
    # Reproduce the count from the same random stream.
    g = torch.Generator().manual_seed(0)
    r = torch.rand(4, generator=g)
    expected = torch.minimum(torch.ceil(cosine_schedule(r) * num_scored).long().clamp(min=1), num_scored)
    assert torch.equal(mask.sum(1), expected)


def test_mvtm_loss_scores_only_masked_tokens(maskgit):
    tokens = torch.randint(0, 32, (2, 80))
    tokens[1, 16:] = -1  # image row, padded
    emb, m = text()
    loss, metrics = mvtm_loss(
        maskgit.train(), tokens, emb, m, torch.tensor([80, 16]), torch.Generator().manual_seed(0)
    )
    assert torch.isfinite(loss) and loss > 0
    assert 0 < metrics["mask_fraction"] <= 1
    loss.backward()
    assert maskgit.head.weight.grad is not None


def test_mvtm_loss_normalisation_weighs_samples_or_tokens(maskgit):
    """'sample' gives an image row the weight of a video row; 'token' weighs rows by their masked tokens.
    Recomputed from the per-token cross-entropy of the same masks and logits."""
    import torch.nn.functional as F

    from modeling.masking import random_training_mask

    tokens = torch.randint(0, 32, (2, 80))
    tokens[1, 16:] = -1
    emb, m = text()
    num_scored = torch.tensor([80, 16])
    maskgit.eval()
    losses = {
        norm: mvtm_loss(maskgit, tokens, emb, m, num_scored, torch.Generator().manual_seed(3), 0.0, normalization=norm)[0]
        for norm in ("sample", "token")
    }  # fmt: skip
    mask = random_training_mask(num_scored, 80, torch.Generator().manual_seed(3))
    inputs = tokens.masked_fill(mask | (torch.arange(80)[None] >= num_scored[:, None]), maskgit.mask_token_id)
    with torch.no_grad():
        logits = maskgit(inputs, emb, m, torch.zeros(2, dtype=torch.bool))
    ce = F.cross_entropy(logits.transpose(1, 2), tokens.clamp(min=0), reduction="none") * mask  # (2, 80)
    per_row = ce.sum(1) / mask.sum(1)
    assert float(losses["sample"]) == pytest.approx(float(per_row.mean()), rel=1e-5)
    assert float(losses["token"]) == pytest.approx(float(ce.sum() / mask.sum()), rel=1e-5)
    with pytest.raises(ValueError, match="normalization"):
        mvtm_loss(maskgit, tokens, emb, m, num_scored, normalization="batch")


def test_axial_positions_share_frame_row_and_column_parts():
    """position_embedding axial: position (t, i, j) = t_emb[t] + h_emb[i] + w_emb[j]; images use frame 0's."""
    torch.manual_seed(0)
    model = MaskGIT(dataclasses.replace(TINY_MASKGIT, position_embedding="axial")).eval()
    assert model.cfg.grid == (5, 4, 4) and not hasattr(model, "pos_emb")
    table = model.positions(80).view(5, 4, 4, -1)
    # moving one step along any axis changes the embedding by the same vector wherever you are
    torch.testing.assert_close(table[2, 1, 3] - table[1, 1, 3], table[2, 0, 0] - table[1, 0, 0])
    torch.testing.assert_close(table[0, 3, 1] - table[0, 2, 1], table[4, 3, 2] - table[4, 2, 2])
    torch.testing.assert_close(model.positions(16), table[0].reshape(16, -1))
    emb, m = text()
    assert model(torch.randint(0, 33, (2, 80)), emb, m).shape == (2, 80, 32)
    with pytest.raises(ValueError, match="square frames"):
        MaskGITConfig(seq_len=80, tokens_per_frame=8, position_embedding="axial")
    with pytest.raises(ValueError, match="position_embedding"):
        MaskGITConfig(position_embedding="rotary")


def test_factorized_codes_embed_and_predict_digits():
    """code_levels: an id is embedded as the sum of its digits' rows and p(id) = prod of per-digit softmaxes,
    a proper distribution over all K ids; the loss, accuracy and sampler use it without a K-wide tensor."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(
        TINY_MASKGIT, codebook_size=32, code_levels=[4, 4, 2], position_embedding="axial"
    )
    model = MaskGIT(cfg).eval()
    assert (
        model.head.out_features == 10 and model.token_emb.num_embeddings == 11
    )  # 4 + 4 + 2 digit rows, [MASK]
    ids = torch.arange(32)
    assert torch.equal(model.digits.join(model.digits.split(ids)), ids)
    rows = model.digits.split(ids) + torch.tensor([0, 4, 8])
    torch.testing.assert_close(model.embed(ids[None]), model.token_emb(rows).sum(-2)[None])
    torch.testing.assert_close(model.embed(torch.tensor([[32]]))[0, 0], model.token_emb.weight[-1])
    emb, m = text()
    logits = model(torch.full((2, 80), 32), emb, m)
    assert logits.shape == (2, 80, 10)
    joint = torch.stack([model.log_likelihood(logits, torch.full((2, 80), k)) for k in range(32)], dim=-1)
    torch.testing.assert_close(joint.exp().sum(-1), torch.ones(2, 80))
    assert torch.equal(model.most_likely(logits), joint.argmax(-1))
    tokens = torch.randint(0, 32, (2, 80))
    loss, metrics = mvtm_loss(
        model.train(), tokens, emb, m, torch.tensor([80, 16]), torch.Generator().manual_seed(0)
    )
    assert torch.isfinite(loss) and 0 <= metrics["mask_accuracy"] <= 1
    loss.backward()
    assert model.token_emb.weight.grad is not None and model.head.weight.grad is not None
    model.eval()
    fixed = torch.full((2, 80), -1)
    fixed[:, :16] = tokens[:, :16]
    kwargs = dict(steps=4, guidance_scale=2.0, fixed_tokens=fixed)
    a = maskgit_sample(model, emb, m, 80, generator=torch.Generator().manual_seed(1), **kwargs)
    b = maskgit_sample(model, emb, m, 80, generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.equal(a, b) and torch.equal(a[:, :16], tokens[:, :16]) and int(a.max()) < 32
    with pytest.raises(ValueError, match="code_levels"):
        MaskGITConfig(codebook_size=64, code_levels=[4, 4])


# ---- guidance and sampling ----------------------------------------------------------------------------------


def test_guidance_scale_zero_equals_conditional_model(maskgit):
    emb, m = text()
    tokens = torch.randint(0, 33, (2, 80))
    both = maskgit(
        tokens.repeat(2, 1), emb.repeat(2, 1, 1), m.repeat(2, 1), torch.tensor([False, False, True, True])
    )
    assert torch.allclose(guided_logits(both, 0.0), maskgit(tokens, emb, m), atol=1e-5)


def test_batched_guidance_forward_equals_two_separate_passes(maskgit):
    emb, m = text()
    tokens = torch.randint(0, 33, (2, 80))
    both = maskgit(
        tokens.repeat(2, 1), emb.repeat(2, 1, 1), m.repeat(2, 1), torch.tensor([False, False, True, True])
    )
    cond = maskgit(tokens, emb, m, torch.tensor([False, False]))
    uncond = maskgit(tokens, emb, m, torch.tensor([True, True]))
    assert torch.allclose(both[:2], cond, atol=1e-5) and torch.allclose(both[2:], uncond, atol=1e-5)
    assert torch.allclose(guided_logits(both, 3.0), cond + 3.0 * (cond - uncond), atol=1e-4)


def test_dropped_text_ignores_the_prompt(maskgit):
    emb, m = text()
    tokens = torch.randint(0, 33, (2, 80))
    a = maskgit(tokens, emb, m, torch.tensor([True, True]))
    b = maskgit(tokens, torch.randn_like(emb), m, torch.tensor([True, True]))
    assert torch.allclose(a, b)


def test_sampler_schedule_reveals_every_token():
    n0 = torch.tensor([80, 64])
    counts = [num_masked_after_step(i, 12, n0) for i in range(12)]
    assert torch.equal(counts[-1], torch.zeros(2, dtype=torch.long))
    assert all(torch.all(a >= b) for a, b in zip(counts, counts[1:], strict=False))
    assert counts[0][0] == math.floor(math.cos(math.pi / 2 / 12) * 80)


def test_sampler_is_deterministic_under_seed_and_keeps_fixed_tokens(maskgit):
    emb, m = text()
    fixed = torch.full((2, 80), -1)
    fixed[:, :16] = torch.randint(0, 32, (2, 16))
    run = lambda seed: maskgit_sample(  # noqa: E731
        maskgit,
        emb,
        m,
        80,
        steps=6,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(seed),
        fixed_tokens=fixed,
    )
    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, :16], fixed[:, :16])
    assert a.min() >= 0 and a.max() < 32


# ---- discriminator, checkpoints, presets --------------------------------------------------------------------


@pytest.mark.parametrize("dims", [2, 3])
def test_discriminator_judges_frames_or_clips(dims):
    d = StyleGANDiscriminator(DiscriminatorConfig(image_size=32, base_channels=8, max_channels=16, dims=dims))
    out = d(video(b=2, t=5))
    assert out.shape == ((10,) if dims == 2 else (2,))


@pytest.mark.parametrize("kind", ["cvivit", "maskgit"])
def test_checkpoint_round_trip(tmp_path, cvivit, maskgit, kind):
    model, cfg = (cvivit, cvivit.cfg) if kind == "cvivit" else (maskgit, TINY_MASKGIT)
    digest = save_checkpoint(tmp_path / "ckpt", model, cfg, {"note": "x"})
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.kind == kind and loaded.digest == digest and loaded.extra == {"note": "x"}
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    assert not list(tmp_path.glob(".ckpt.tmp-*"))
    weights = tmp_path / "ckpt" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one flipped bit in the last weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.safetensors does not match the digest"):
        load_checkpoint(tmp_path / "ckpt")


def test_presets_overrides_and_typo_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tokenizer:\n  dim: 32\n")
    cfg = load_config(path, ["tokenizer.dim=64", "sampling.guidance_scale=6"])
    assert cfg == {"tokenizer": {"dim": 64}, "sampling": {"guidance_scale": 6}}
    assert build_dataclass(CViViTConfig, cfg["tokenizer"]).dim == 64
    with pytest.raises(ValueError, match="unknown CViViTConfig field"):
        build_dataclass(CViViTConfig, {"dimm": 3})
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides({}, ["nokey"])


def test_parallel_decode_is_the_one_loop():
    """The loop under maskgit_sample, commit_decode and latent_masking_decode: fixed positions come back as
    given, every other position gets a code, unfixed positions are shown `hidden_input`, and it never calls
    the model more than `steps` times (fewer once nothing is unfixed)."""
    from modeling.sampling import draw_from_model, parallel_decode

    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 16, (2, 10), generator=gen)
    unfixed = torch.zeros(2, 10, dtype=torch.bool)
    unfixed[:, 4:] = True
    seen = []

    def logits_fn(x):
        seen.append(x.clone())
        return torch.randn(2, 10, 16, generator=gen)

    out = parallel_decode(
        logits_fn, tokens, unfixed, torch.full_like(tokens, 16), steps=3,
        num_unfixed_after=lambda step: [4, 2, 0][step],
        draw=lambda logits: draw_from_model(logits, 1.0, gen), temperature=1.0, generator=gen,
    )  # fmt: skip
    assert torch.equal(out[:, :4], tokens[:, :4]) and int(out.max()) < 16
    assert len(seen) == 3 and (seen[0][:, 4:] == 16).all() and torch.equal(seen[0][:, :4], tokens[:, :4])
    assert [int((x == 16).sum()) for x in seen] == [12, 8, 4]  # 6 unfixed per row, then 4, then 2
    assert torch.equal(
        parallel_decode(logits_fn, tokens, torch.zeros_like(unfixed), tokens, steps=3, num_unfixed_after=lambda s: 0,
                        draw=lambda logits: draw_from_model(logits, 1.0, gen), temperature=1.0, generator=gen),
        tokens,
    )  # fmt: skip
    assert len(seen) == 3  # nothing unfixed: no model call
