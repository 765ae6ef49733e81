"""The whole config tree typed at once, on the command line, before any Ray cluster starts.

A config file is sections of plain values (`jobs.config`); each job builds the sections it runs from them.
A job that runs late in a pipeline (the transformer, after minutes of tokenizer training) would otherwise
find a typo or an out-of-range value only when it starts. `check_config` builds every section the config
holds into its dataclass (whose `__post_init__` checks ranges and choices), refuses unknown sections, and
checks that the tokenizer can take the clips `prepare` cuts, naming the section and the key at fault.
"""

from __future__ import annotations

import importlib
from typing import Any

# section -> "module:class" of the dataclass it builds into (`tokenizer`, `transformer*`, `commit` and
# `tokenize` are built by their family or job, below)
PLAIN_SECTIONS: dict[str, str] = {
    "demo": "jobs.demo:DemoConfig",
    "text_encoder": "modeling.text_encoder:TextEncoderConfig",
    "prepare": "pipelines.prepare:PrepareConfig",
    "tokenizer_train": "jobs.training.tokenizer:TokenizerTrainConfig",
    "tokenizer_loss": "modeling.losses:TokenizerLossConfig",
    "discriminator": "modeling.discriminator:DiscriminatorConfig",
    "sampling": "modeling.generation:SamplingConfig",
}
FAMILY_SECTIONS = (
    "transformer",
    "transformer_train",
    "commit",
)  # the transformer family's (`config_sections`)
SECTIONS = (*PLAIN_SECTIONS, "tokenizer", *FAMILY_SECTIONS, "tokenize")


def check_config(config: dict) -> dict[str, Any]:
    """Every section of `config` as its typed value (section -> dataclass); `demo` and `tokenize` always,
    with their defaults. Raises ValueError naming the section for an unknown section or a bad value."""
    from jobs.tokenize import tokenize_config_from
    from jobs.training.families import TRANSFORMER_FAMILIES, transformer_family
    from modeling.tokenizers import tokenizer_config_from
    from modeling.typed_config import build_dataclass

    unknown = sorted(set(config) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; the sections are {list(SECTIONS)}")
    typed: dict[str, Any] = {}
    for section, target in PLAIN_SECTIONS.items():
        module, name = target.split(":")
        typed[section] = _in_section(
            section, build_dataclass, getattr(importlib.import_module(module), name), config.get(section)
        )
    if "tokenizer" in config:
        typed["tokenizer"] = _in_section(
            "tokenizer", lambda s: tokenizer_config_from(s)[1], config["tokenizer"]
        )
        frames = typed["tokenizer_train"].num_frames or (config.get("prepare") or {}).get("num_frames")
        if frames is not None:  # the clips prepare cuts (or the crop training takes) fit the tokenizer
            _in_section("tokenizer", typed["tokenizer"].token_grid, int(frames))
    if any(section in config for section in FAMILY_SECTIONS):
        family = _in_section("transformer", transformer_family, config)
        module = importlib.import_module(TRANSFORMER_FAMILIES[family])
        for section, build in module.section_builders(config).items():
            typed[section] = _in_section(section, build)
    typed["tokenize"] = _in_section("tokenize", tokenize_config_from, config)
    return typed


def _in_section(section: str, build, *args) -> Any:
    """`build(*args)`, with a failure's message prefixed by the section it is about."""
    try:
        return build(*args)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config section {section!r}: {e}") from e
