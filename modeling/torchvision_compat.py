"""Let `import torchvision` succeed next to a CPU torch, as a library we never call but others import.

The bench extra's phenaki-pytorch pulls in torchvision, and PyPI's torchvision wheel is a CUDA build: its C++ op
library does not load against the CPU torch, and torchvision's import then fails registering fake kernels for two
ops that never got defined ("operator torchvision::nms does not exist"). transformers imports torchvision whenever
it is installed, so without this the text encoder, CLIP and every model class of transformers fail to import.
`declare_torchvision_ops` defines those two schemas (nms, qnms) first, only when the library cannot load; no code
of ours or of the peer calls a torchvision op. `modeling/__init__.py` runs it, so every process that imports our
code (Ray workers included) gets it before transformers does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

import torch

TORCHVISION_FAKE_OPS = ("nms", "qnms")  # what torchvision's _meta_registrations registers unconditionally
NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def declare_torchvision_ops() -> list[str]:
    """Define torchvision::nms and ::qnms when torchvision's own op library cannot load. Returns the ops defined
    here ([] when the library loaded, or torchvision is already imported or not installed)."""
    if "torchvision" in sys.modules:
        return []
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return []
    library = next(Path(spec.submodule_search_locations[0]).glob("_C*.so"), None)
    if library is not None:
        # torchvision loads the same file itself (a second load is a no-op); a CUDA build fails here
        with contextlib.suppress(OSError, RuntimeError):
            torch.ops.load_library(str(library))
    defined = []
    for op in TORCHVISION_FAKE_OPS:
        if not _has_schema(op):
            torch.library.define(f"torchvision::{op}", NMS_SCHEMA)
            defined.append(op)
    return defined


def _has_schema(op: str) -> bool:
    try:
        torch._C._get_schema(f"torchvision::{op}", "")
    except RuntimeError:
        return False
    return True
