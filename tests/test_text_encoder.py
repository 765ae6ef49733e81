"""Text encoders: the bundled MiniLM, and a T5 encoder from a local directory (chosen by name, never downloaded)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from modeling.generation import SamplingConfig, VideoGenerator, write_debug_checkpoint
from modeling.text_encoder import TextEncoder, _minilm_path, resolve_text_encoder, text_encoder_identity

T5_WIDTH = 16


@pytest.fixture(scope="module")
def local_t5(tmp_path_factory):
    """A tiny random T5 encoder saved the way a user's local T5 directory looks (config.json + weights +
    tokenizer files). The tokenizer files are MiniLM's WordPiece ones: T5's own SentencePiece model is not
    available offline, and the encoder code path under test does not depend on which tokenizer feeds it."""
    from transformers import T5Config, T5EncoderModel

    directory = tmp_path_factory.mktemp("t5-tiny")
    torch.manual_seed(0)
    config = T5Config(vocab_size=30522, d_model=T5_WIDTH, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    T5EncoderModel(config).save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(_minilm_path() / name, directory / name)
    return directory


def test_minilm_is_the_offline_default():
    enc = TextEncoder("minilm", max_length=8)
    emb, mask = enc.encode(["a red circle moving left", "a square"])
    assert enc.dim == 384 and emb.shape[0] == 2 and emb.shape[-1] == 384 and emb.shape[1] <= 8
    assert mask.dtype == torch.bool and mask[0].all() and not mask[1].all()  # the shorter prompt is padded


def test_t5_from_a_local_directory_by_name(local_t5):
    name, path, family = resolve_text_encoder(f"t5:{local_t5}")
    assert family == "t5" and name.startswith("t5:") and path == local_t5
    # a directory whose config.json says model_type t5 is recognised without the prefix too
    assert resolve_text_encoder(str(local_t5))[2] == "t5"
    enc = TextEncoder(f"t5:{local_t5}", max_length=12)
    emb, mask = enc.encode(["a purple triangle moving up", "a ball"])
    assert enc.dim == T5_WIDTH and emb.shape == (2, mask.shape[1], T5_WIDTH) and mask.shape[1] <= 12
    assert torch.isfinite(emb).all()
    # the identity a token cache records: the canonical name plus a digest of the weight files
    assert text_encoder_identity(f"t5:{local_t5}") == (name, enc.digest)


def test_missing_local_encoder_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="never download"):
        resolve_text_encoder(f"t5:{tmp_path / 'no-such-model'}")


def test_generator_uses_a_t5_encoder_named_in_the_checkpoint(tmp_path, local_t5):
    """The sampler conditions on T5 embeddings end to end, and equals precomputed embeddings passed in."""
    ckpt = write_debug_checkpoint(tmp_path / "ckpt", text_encoder=f"t5:{local_t5}", text_dim=T5_WIDTH)
    gen = VideoGenerator.from_checkpoint(ckpt)
    cfg = SamplingConfig(steps=3, seed=2)
    video = gen.generate(["a green square moving down"], cfg)
    assert video.frames.shape == (9, 32, 32, 3)
    precomputed = gen.text_encoder.encode(["a green square moving down"])
    again = gen.generate(["a green square moving down"], cfg, text=precomputed)
    assert np.array_equal(video.frames, again.frames)
