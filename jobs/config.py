"""YAML presets and dotted command-line overrides: how a job's config dict is made (typed construction of
each section is `modeling.typed_config.build_dataclass`).

A config file has top-level sections (prepare, tokenizer, tokenizer_train, transformer, transformer_train,
sampling, text_encoder); `section.key=value` overrides any leaf, with the value parsed as YAML
(`tokenizer_train.steps=10`, `transformer.dim=256`, `sampling.guidance_scale=6.0`).

A preset may start from others with `inherit: NAME` (or a list of names, applied in order): their sections
are deep-merged under its own, so `phenaki-1.8b` takes its tokenizer from `cvivit-paper` instead of
copying it.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1) plus YAML 1.2's exponent floats: 1.1 wants a dot, so `peak_lr: 5e-4`
    or the override `peak_lr=5e-4` would load as the *string* '5e-4' and fail on the workers."""


ConfigLoader.add_implicit_resolver(  # copies the resolver table: yaml.SafeLoader itself is unchanged
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str):
    """Config YAML (files and override values) through `ConfigLoader`."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 (a SafeLoader subclass)


def resolve_config_path(path_or_name: str | Path) -> Path:
    """A file path, or a preset name from configs/ ("demo", "phenaki-1.8b", ...)."""
    path = Path(path_or_name)
    if path.exists():
        return path
    named = CONFIG_DIR / f"{path_or_name}.yaml"
    if named.exists():
        return named
    available = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise FileNotFoundError(
        f"config {str(path_or_name)!r} is neither a file nor a preset (presets: {available})"
    )


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        node = config
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {key!r} is not a section")
        node[leaf] = load_yaml(raw)
    return config


def deep_merge(base: dict, top: dict) -> dict:
    """`top` over `base`, recursing into sections that are dicts in both (neither input is modified)."""
    merged = dict(base)
    for key, value in top.items():
        merged[key] = (
            deep_merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


def _load_with_parents(path_or_name: str | Path, chain: tuple[str, ...]) -> dict:
    path = resolve_config_path(path_or_name)
    if str(path.resolve()) in chain:
        raise ValueError(f"config {path} inherits from itself: {' -> '.join(chain)} -> {path}")
    config = load_yaml(path.read_text()) or {}
    parents = config.pop("inherit", None) or []
    merged: dict = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        merged = deep_merge(merged, _load_with_parents(parent, (*chain, str(path.resolve()))))
    return deep_merge(merged, config)


def load_config(path_or_name: str | Path | None, overrides: list[str] | None = None) -> dict:
    """A preset or file (None: no file, the overrides alone) with `section.key=value` overrides applied, and
    checked whole (`jobs.config_tree.check_config`): an unknown section or key, or a value out of range, fails
    here, on the command line, naming the section, before any cluster starts or any stage runs."""
    from jobs.config_tree import check_config

    base = {} if path_or_name is None else _load_with_parents(path_or_name, ())
    config = apply_overrides(base, list(overrides or []))
    check_config(config)
    return config
