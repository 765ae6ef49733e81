"""VideoGenerator on a tiny random checkpoint: determinism, story mode (sec. 3.3), animate, batching."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from modeling.generation import (
    GeneratedVideo,
    SamplingConfig,
    VideoGenerator,
    write_debug_checkpoint,
)
from modeling.pixels import frames_to_video, resize_center_crop

NUM_FRAMES = 9  # 5 latent frames of 4x4 tokens at 32x32, patch 8, t_p 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_debug_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "transformer", num_frames=NUM_FRAMES, sampling={"steps": 6}
    )


@pytest.fixture(scope="module")
def gen(checkpoint) -> VideoGenerator:
    return VideoGenerator.from_checkpoint(checkpoint)


def fake_text(n: int, seed: int = 0, length: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[::2, 4:] = False
    return torch.randn(n, length, 384, generator=g), mask


def test_checkpoint_layout_and_info(checkpoint, gen):
    assert (checkpoint / "model.safetensors").exists() and (checkpoint / "tokenizer" / "config.yaml").exists()
    info = gen.info()
    assert info["num_frames"] == 9 and info["fps"] == 8.0 and info["token_grid"] == [5, 4, 4]
    assert info["seq_len"] == 80 and info["text_encoder"] == "minilm"
    assert gen.defaults.steps == 6  # from extra.sampling
    assert info["defaults"]["guidance_scale"] == 6.0


def test_generate_is_deterministic_under_a_seed(gen):
    cfg = SamplingConfig(steps=6, seed=3)
    a = gen.generate(["a red circle"], cfg, text=fake_text(1))
    b = gen.generate(["a red circle"], cfg, text=fake_text(1))
    c = gen.generate(["a red circle"], cfg.replace(seed=4), text=fake_text(1))
    assert isinstance(a, GeneratedVideo)
    assert a.frames.shape == (9, 32, 32, 3) and a.frames.dtype == np.uint8
    assert a.segments == [("a red circle", 0, 9)] and a.fps == 8.0
    assert a.tokens[0].shape == (5, 4, 4) and a.fixed_tokens == [None]
    assert np.array_equal(a.frames, b.frames) and torch.equal(a.tokens[0], b.tokens[0])
    assert not torch.equal(a.tokens[0], c.tokens[0])
    # the sampled tokens are what was decoded
    assert np.array_equal(gen.decode_tokens(a.tokens[0][None])[0], a.frames)


@pytest.mark.parametrize("k", [5, 3, 1])
def test_story_primes_each_segment_with_reencoded_context(gen, k):
    prompts = [f"segment {i}" for i in range(11)]
    cfg = SamplingConfig(steps=4, seed=1, context_frames=k)
    video = gen.generate(prompts, cfg, text=fake_text(len(prompts)))
    new_per_segment = NUM_FRAMES - k
    expected = NUM_FRAMES + 10 * new_per_segment
    assert video.frames.shape == (expected, 32, 32, 3) == (gen.num_output_frames(11, k), 32, 32, 3)
    k_lat = 1 + (k - 1) // 2
    # segments tile the output
    assert video.segments[0] == ("segment 0", 0, NUM_FRAMES)
    for i in range(1, 11):
        prompt, s, e = video.segments[i]
        assert prompt == f"segment {i}" and s == video.segments[i - 1][2] and e - s == new_per_segment
        # the primed tokens are the C-ViViT tokens of the last K output frames so far, bit-exact ...
        context = video.frames[s - k : s]
        reencoded = gen.tokenizer.encode(frames_to_video(context))[0]
        assert torch.equal(video.fixed_tokens[i], reencoded)
        # ... and the sampler returned them unchanged in the first k_lat latent frames
        assert video.tokens[i].shape == (5, 4, 4)
        assert torch.equal(video.tokens[i][:k_lat], video.fixed_tokens[i])
        # the appended frames are the decoded window after its K context frames
        window = gen.decode_tokens(video.tokens[i][None])[0]
        assert np.array_equal(window[k:], video.frames[s:e])
    assert video.segments[-1][2] == expected


def test_story_is_deterministic_and_first_segment_matches_single_clip(gen):
    cfg = SamplingConfig(steps=4, seed=7)
    text = fake_text(3)
    a = gen.generate(["x", "y", "z"], cfg, text=text)
    b = gen.generate(["x", "y", "z"], cfg, text=text)
    assert np.array_equal(a.frames, b.frames)
    single = gen.generate(["x"], cfg, text=(text[0][:1], text[1][:1]))
    assert torch.equal(a.tokens[0], single.tokens[0])


def test_context_frames_validated(gen):
    text = fake_text(2)
    for bad in (4, 9, 0):
        with pytest.raises(ValueError, match="context_frames"):
            if bad < 1:
                SamplingConfig(context_frames=bad)
            else:
                gen.generate(["a", "b"], SamplingConfig(context_frames=bad, steps=2), text=text)
    with pytest.raises(ValueError, match="at least one prompt"):
        gen.generate([], SamplingConfig(steps=2))
    with pytest.raises(ValueError, match="384"):
        gen.generate(
            ["a"], SamplingConfig(steps=2), text=(torch.zeros(1, 3, 16), torch.ones(1, 3, dtype=torch.bool))
        )
    with pytest.raises(ValueError, match="B = 2"):
        gen.generate(["a", "b"], SamplingConfig(steps=2), text=fake_text(1))


def test_animate_keeps_first_frame_tokens(gen):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)  # not square, not the tokenizer size
    cfg = SamplingConfig(steps=4, seed=2)
    video = gen.animate(image, "it moves", cfg, text=fake_text(1))
    expected = gen.tokenizer.encode(frames_to_video(resize_center_crop(image, 32)[None]))[0]  # (1, 4, 4)
    assert video.frames.shape == (9, 32, 32, 3)
    assert torch.equal(video.fixed_tokens[0], expected)
    assert torch.equal(video.tokens[0][:1], expected)
    # a story from an image: the image primes segment 0, context primes the rest
    story = gen.animate(image, ["it moves", "it stops"], cfg, text=fake_text(2))
    assert story.frames.shape == (13, 32, 32, 3)
    assert torch.equal(story.tokens[0][:1], expected)
    assert torch.equal(story.tokens[1][:3], story.fixed_tokens[1])


def test_image_animation_resizes_as_prepare_does():
    """A user's image reaches the tokenizer through the one resize `prepare` uses (modeling.pixels)."""
    img = np.zeros((40, 80, 3), dtype=np.uint8)
    img[:, 20:60] = 255  # the centre half is white
    out = resize_center_crop(img, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out[:, 8:24].min() >= 250  # centre crop of the resized image is white
    assert np.array_equal(resize_center_crop(out, 32), out)
    with pytest.raises(ValueError):
        resize_center_crop(np.zeros((4, 4), dtype=np.uint8), 32)


def test_generate_clips(gen):
    cfg = SamplingConfig(steps=4, seed=5)
    text = fake_text(3)
    videos = gen.generate_clips(["a", "b", "c"], cfg, text=text)
    again = gen.generate_clips(["a", "b", "c"], cfg, text=text)
    assert len(videos) == 3
    for v, w, p in zip(videos, again, "abc", strict=True):
        assert v.frames.shape == (9, 32, 32, 3) and v.segments == [(p, 0, 9)]
        assert np.array_equal(v.frames, w.frames)
    assert not np.array_equal(videos[0].frames, videos[1].frames)
    # a batch of one is exactly generate()
    one = gen.generate_clips(["a"], cfg, text=(text[0][:1], text[1][:1]))[0]
    assert torch.equal(one.tokens[0], gen.generate(["a"], cfg, text=(text[0][:1], text[1][:1])).tokens[0])
    assert gen.generate_clips([], cfg) == []


def test_generate_clips_rows_keep_their_own_request(gen):
    """What a server's batching relies on: rows with different seeds, guidance, temperatures and first images
    share one sampler call, and each row's tokens are the ones that request gets alone."""
    text = fake_text(3)
    cfgs = [
        SamplingConfig(steps=4, seed=1, guidance_scale=0.0, temperature=4.5),
        SamplingConfig(steps=4, seed=2, guidance_scale=3.0, temperature=1.0, sample_temperature=0.7),
        SamplingConfig(steps=4, seed=3, guidance_scale=6.0, temperature=0.0),
    ]
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    images = [None, image, None]
    steps_seen = []
    batch = gen.generate_clips(
        ["a", "b", "c"], cfgs, images=images, text=text, on_step=lambda d, n: steps_seen.append((d, n))
    )
    assert steps_seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    for b, video in enumerate(batch):
        row_text = (text[0][b : b + 1], text[1][b : b + 1])
        alone = gen.generate(["abc"[b]], cfgs[b], text=row_text, image=images[b])
        assert torch.equal(video.tokens[0], alone.tokens[0]), f"row {b}"
    assert torch.equal(batch[1].tokens[0][0], batch[1].fixed_tokens[0][0])  # the image's tokens kept
    with pytest.raises(ValueError, match="share steps"):
        gen.generate_clips(["a", "b"], [cfgs[0], cfgs[1].replace(steps=5)], text=fake_text(2))


def test_generate_reports_progress_over_all_segments(gen):
    seen = []
    gen.generate(
        ["a", "b"], SamplingConfig(steps=3), text=fake_text(2), on_step=lambda d, n: seen.append((d, n))
    )
    assert seen == [(d, 6) for d in range(1, 7)]


def test_real_text_encoder_matches_precomputed_embeddings(gen):
    """The checkpoint's text encoder (MiniLM) runs when no embeddings are given."""
    cfg = SamplingConfig(steps=3, seed=0)
    prompts = ["a red circle moves left", "a blue square spins"]
    a = gen.generate(prompts, cfg)
    b = gen.generate(prompts, cfg, text=gen.encode_text(prompts))
    assert np.array_equal(a.frames, b.frames)
    batch = gen.generate_clips(prompts, cfg)
    assert len(batch) == 2 and batch[0].frames.shape == (9, 32, 32, 3)


def test_sampling_config_from_dict_ignores_unknown_keys():
    cfg = SamplingConfig.from_dict({"steps": 8, "guidance_scale": 3, "commit_steps": 4})
    assert cfg.steps == 8 and cfg.guidance_scale == 3.0 and isinstance(cfg.guidance_scale, float)
    assert cfg.replace(steps=None, seed=9) == SamplingConfig(steps=8, guidance_scale=3.0, seed=9)


def test_from_checkpoint_errors(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError):
        VideoGenerator.from_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="transformer"):
        VideoGenerator.from_checkpoint(checkpoint / "tokenizer")


def test_generation_record_reads_a_checkpoints_extra_in_one_place():
    """The typed record of a transformer checkpoint's `extra`: defaults once, unknown keys ignored, and a
    checkpoint without the clip's frames and rate refused with the reason."""
    from modeling.checkpoint import GenerationRecord

    record = GenerationRecord.from_extra(
        {"num_frames": 9, "fps": "8", "step": 3, "data": "/x", "token_grid": [5, 4, 4]}
    )
    assert (record.num_frames, record.fps, record.step, record.token_grid) == (9, 8.0, 3, (5, 4, 4))
    assert (record.text_encoder, record.max_text_length, record.sampling, record.class_names) == (
        "minilm",
        32,
        {},
        (),
    )
    with pytest.raises(ValueError, match=r"lacks \['fps'\]"):
        GenerationRecord.from_extra({"num_frames": 9}, "ckpt")


def test_checkpoint_records_round_trip_through_extra():
    """What a trainer writes (`to_extra`: YAML-plain, no Nones) reads back as the same record, for both the
    transformer's generation record and the tokenizer's training record."""
    import yaml

    from modeling.checkpoint import GenerationRecord, TokenizerRecord

    generation = GenerationRecord(
        9, 8.0, sampling={"steps": 12}, commit={"steps": 8, "tasks": ("fp", "cg")}, class_names=("left",),
        step=7, tokenizer_digest="ab", token_grid=(5, 4, 4), data=("/a", "/b"),
    )  # fmt: skip
    extra = yaml.safe_load(yaml.safe_dump(generation.to_extra()))  # as config.yaml stores it
    assert extra["token_grid"] == [5, 4, 4] and extra["data"] == ["/a", "/b"] and "fps" in extra
    back = GenerationRecord.from_extra(extra)
    assert back == dataclasses.replace(generation, commit={"steps": 8, "tasks": ["fp", "cg"]})
    tokenizer = TokenizerRecord(
        9, 8.0, token_grid=(5, 4, 4), step=3, data="/clips", perceptual={"image": "off"}
    )
    assert TokenizerRecord.from_extra(yaml.safe_load(yaml.safe_dump(tokenizer.to_extra()))) == tokenizer
    assert "fps" not in TokenizerRecord(1).to_extra()  # no Nones written
    with pytest.raises(ValueError, match="lacks num_frames: not a tokenizer checkpoint"):
        TokenizerRecord.from_extra({"fps": 8}, "ckpt")


def test_each_transformer_family_names_the_tokenizer_it_needs():
    from modeling.tokenizers import check_tokenizer_for

    assert check_tokenizer_for("maskgit", "cvivit", "ckpt").name == "cvivit"
    assert check_tokenizer_for("commit", "magvit_vq", "ckpt").name == "magvit_vq"
    with pytest.raises(
        ValueError, match=r"ckpt holds a C-ViViT tokenizer .*commit transformer needs a MAGVIT-VQ"
    ):
        check_tokenizer_for("commit", "cvivit", "ckpt")
    with pytest.raises(ValueError, match=r"MAGVIT-VQ tokenizer .*maskgit transformer needs a C-ViViT"):
        check_tokenizer_for("maskgit", "magvit_vq", "ckpt")
    with pytest.raises(ValueError, match="not a tokenizer"):
        check_tokenizer_for("maskgit", "maskgit", "ckpt")
