"""The one place a transformer checkpoint's `kind` picks its generator: every inference entry (`phenaki
generate`, `phenaki serve`, `phenaki eval`) loads through here, and dispatches on the kind it returns by table,
never by comparing names.

Both families honour one loading contract (`Generator`): `from_checkpoint(path, device)` loads the transformer
and the tokenizer it carries, `num_frames` and `fps` describe the clips it makes, `meta` names the checkpoint
and digests; what they take differs (prompts and stories for Phenaki, a task and a condition video for COMMIT).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, ClassVar, Protocol

from modeling.checkpoint import read_checkpoint_meta

# kind (config.yaml's `kind`, as `phenaki train-transformer` writes it) -> "module:class"
GENERATORS: dict[str, str] = {
    "maskgit": "modeling.generation:VideoGenerator",
    "commit": "modeling.commit_generation:CommitGenerator",
}


class Generator(Protocol):
    kind: ClassVar[str]  # a key of GENERATORS
    title: ClassVar[str]  # what a person calls the family: "Phenaki", "MAGVIT COMMIT"
    num_frames: int
    fps: float
    meta: dict[str, Any]  # checkpoint path and digests

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> Generator: ...


def generator_kind(checkpoint: str | Path) -> str:
    """The checkpoint's generator kind, or a ValueError naming what it holds and what generation takes."""
    path = Path(checkpoint)
    kind = read_checkpoint_meta(path).get("kind")  # no config.yaml: a FileNotFoundError naming the directory
    if kind not in GENERATORS:
        raise ValueError(
            f"{path} holds a {kind!r} checkpoint: generation takes a transformer checkpoint, Phenaki (maskgit) "
            "or MAGVIT COMMIT (commit), as `phenaki train-transformer --out` writes it"
        )
    return kind


def generator_class(kind: str) -> type[Generator]:
    if kind not in GENERATORS:
        raise ValueError(f"unknown generator kind {kind!r}; expected one of {sorted(GENERATORS)}")
    module, name = GENERATORS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def load_generator(checkpoint: str | Path, device: str = "cpu") -> Generator:
    """The generator of a transformer checkpoint, whichever family wrote it."""
    return generator_class(generator_kind(checkpoint)).from_checkpoint(checkpoint, device=device)
