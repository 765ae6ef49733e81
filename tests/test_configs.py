"""Every preset in configs/ builds into its typed dataclasses (a typo in a preset fails here, not mid-run)."""

from __future__ import annotations

import pytest

from jobs.config import CONFIG_DIR, load_config
from jobs.config_tree import check_config
from jobs.tokenize import tokenize_config_from
from jobs.training.commit import CommitTrainConfig
from jobs.training.transformer import TransformerTrainConfig
from modeling.commit import CommitConfig
from modeling.commit_model import CommitTransformerConfig
from modeling.cvivit import CViViT, CViViTConfig
from modeling.magvit_vq import MagvitVQConfig
from modeling.maskgit import MaskGITConfig
from modeling.text_encoder import TextEncoderConfig
from modeling.tokenizers import tokenizer_config_from
from modeling.typed_config import build_dataclass
from pipelines.tokenize import TokenizeConfig


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_preset_sections_build(preset):
    """`load_config` types every section (`jobs.config_tree.check_config`), the transformer's by its family."""
    config = load_config(preset)
    typed = check_config(config)
    assert set(typed) >= set(config) and isinstance(typed["tokenize"], TokenizeConfig)
    if "tokenizer" in config:  # C-ViViT or MAGVIT-VQ, by tokenizer.family
        assert isinstance(typed["tokenizer"], CViViTConfig | MagvitVQConfig)
    family = (config.get("transformer") or {}).get("family", "maskgit")
    if "transformer" in config:
        assert isinstance(
            typed["transformer"], {"maskgit": MaskGITConfig, "commit": CommitTransformerConfig}[family]
        )
    if "transformer_train" in config:
        assert (
            type(typed["transformer_train"])
            is {"maskgit": TransformerTrainConfig, "commit": CommitTrainConfig}[family]
        )
    if family == "commit":
        assert isinstance(typed["commit"], CommitConfig)


@pytest.mark.parametrize(
    "override, message",
    [
        ("tokenzier.dim=64", r"unknown config section\(s\) \['tokenzier'\]"),
        (
            "tokenizer_train.stepz=3",
            r"section 'tokenizer_train': unknown TokenizerTrainConfig field\(s\) \['stepz'\]",
        ),
        (
            "transformer_train.video_fraction=2",
            r"section 'transformer_train': video_fraction must be in \[0, 1\]",
        ),
        ("transformer.family=comit", r"section 'transformer': unknown transformer.family 'comit'"),
        ("prepare.num_frames=10", r"section 'tokenizer': C-ViViT takes 1 \+ k\*2 frames"),
        ("demo.videos=0", r"section 'demo': demo needs videos >= 1"),
        ("sampling.steps=0", r"section 'sampling'"),
    ],
)
def test_a_bad_config_fails_when_loaded_naming_the_section(override, message):
    """A value the transformer would reject minutes into a demo (after the tokenizer trained) fails at load."""
    with pytest.raises(ValueError, match=message):
        load_config("demo", [override])


@pytest.mark.parametrize("preset", ["demo", "debug", "quality"])
def test_demo_presets_are_consistent(preset):
    config = load_config(preset)
    tokenizer = CViViT(build_dataclass(CViViTConfig, config["tokenizer"]))
    assert config["prepare"]["size"] == config["tokenizer"]["image_size"]
    t, h, w = tokenizer.token_grid(config["prepare"]["num_frames"])
    assert (t, h, w) == (5, 4, 4)  # 80 tokens per clip (shared/calibration.md)
    # the transformer's codes: an FSQ tokenizer's digits, whose product is the codebook
    assert (
        config["tokenizer"]["quantizer"] == "fsq"
        and tokenizer.cfg.codebook_size == tokenizer.quantizer.codebook_size
    )


def test_debug_yaml_matches_the_named_debug_preset():
    from modeling.cvivit import cvivit_debug

    assert build_dataclass(CViViTConfig, load_config("debug")["tokenizer"]) == cvivit_debug()


def test_magvit_debug_yaml_matches_the_named_debug_preset():
    from modeling.magvit_vq import magvit_vq_debug

    family, cfg = tokenizer_config_from(load_config("magvit-debug")["tokenizer"])
    assert family.name == "magvit_vq" and cfg == magvit_vq_debug()


def test_cli_refuses_abbreviated_options(capsys) -> None:
    # argparse would take `--sourc` as `--source`: a typo must fail, not run with a guessed option
    from jobs.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--sourc", "x.csv", "--out", "y"])
    assert exit_info.value.code == 2
    assert "--sourc" in capsys.readouterr().err


def test_clips_too_short_for_the_tokenizer_fail_once_in_one_line_before_ray(tmp_path, capsys) -> None:
    import json

    from jobs.cli import main

    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "manifest.json").write_text(json.dumps({"config": {"num_frames": 9}, "shards": []}))
    code = main(
        ["train-tokenizer", "--config", "magvit-debug", "--data", str(clips), "--out", str(tmp_path / "tok")]
    )
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"clips in {clips} have 9 frames" in err and "tokenizer_train.num_frames=16" in err
    assert "prepare.num_frames=16" in err  # the fix
    assert not (tmp_path / "tok").exists()  # nothing started

    code = main(
        [
            "train-tokenizer",
            "--config",
            "debug",
            "--data",
            str(tmp_path / "nothing"),
            "--out",
            str(tmp_path / "t"),
        ]
    )
    assert code == 1 and "no manifest.json in" in capsys.readouterr().err


def test_text_encoder_section_is_typed() -> None:
    """One typed `text_encoder` section (name, max_length), checked before anything runs."""
    assert build_dataclass(TextEncoderConfig, None) == TextEncoderConfig("minilm", 32)
    assert tokenize_config_from({"text_encoder": {"max_length": 24}}).max_text_length == 24
    with pytest.raises(ValueError, match="max_lenght"):
        build_dataclass(TextEncoderConfig, {"max_lenght": 24})
    with pytest.raises(ValueError, match="text_encoder.max_length"):
        build_dataclass(TextEncoderConfig, {"max_length": 0})


@pytest.mark.parametrize(
    "values, named",
    [
        ({"video_fraction": 1.5}, "video_fraction"),
        ({"mix": "kinds"}, "mix"),
        ({"source_weights": {"a": 1.0}}, "mix='source'"),
        ({"text_drop_prob": -0.1}, "text_drop_prob"),
        ({"mask_schedule": "cosin"}, "mask_schedule"),
        ({"loss_normalization": "tokens"}, "loss_normalization"),
    ],
)
def test_transformer_train_section_fails_when_built(values, named) -> None:
    """A bad transformer_train value fails when the config is built on the driver, before any cluster
    starts (it used to surface on the workers); the loader's settings are derived from the section."""
    with pytest.raises(ValueError, match=named):
        build_dataclass(TransformerTrainConfig, values)
    loader = build_dataclass(
        TransformerTrainConfig, {"mix": "source", "source_weights": {"a": 2.0}}
    ).loader_config()
    assert (loader.mix, loader.weights) == ("source", {"a": 2.0})
