"""Which training task a config asks for: the one place a transformer family is chosen by name.

`transformer.family` names a module whose `job_from_config(config, data, tokenizer)` builds that family's
`jobs.training.loop.TrainTask` (tokenizer families are chosen by `modeling.tokenizers`, by `tokenizer.family`).
"""

from __future__ import annotations

import importlib

TRANSFORMER_FAMILIES = {"maskgit": "jobs.training.transformer", "commit": "jobs.training.commit"}


def transformer_family(config: dict) -> str:
    """A config's `transformer.family` (default maskgit), checked against TRANSFORMER_FAMILIES."""
    family = (config.get("transformer") or {}).get("family", "maskgit")
    if family not in TRANSFORMER_FAMILIES:
        raise ValueError(
            f"unknown transformer.family {family!r}; expected one of {sorted(TRANSFORMER_FAMILIES)}"
        )
    return family


def transformer_job(config: dict, data: str | list[str], tokenizer: str):
    """The training task of the config's transformer family, sized from the tokenizer and the token cache(s);
    a bad config, cache or tokenizer fails here, on the driver, before any worker starts."""
    module = importlib.import_module(TRANSFORMER_FAMILIES[transformer_family(config)])
    return module.job_from_config(config, data, tokenizer)
