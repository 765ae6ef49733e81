"""COMMIT data (MAGVIT sec. 3.2): condition tokens in the token cache, per-task token masks, the batch reader.

Tokenize side (`phenaki tokenize` with `tokenize.commit: true`, a MAGVIT-VQ tokenizer): the ten tasks'
regions are fixed for a clip shape (the reference samples only the task; `sample_task_params` draws nothing
by default), so each video's condition tokens z~ = f_T(V~) are computed once, for the nine tasks that have
condition pixels (`COND_TASKS`: `TASKS` without cg), and stored as `cond_tokens.npy` (9, t, h, w) in that
order. fp and cfp share their V~, so it is encoded once. The manifest's `commit` entry records the task list
and the parameters (`commit_record`).

Training side: `task_token_masks` gives Eq. 2's cond_mask = ~ispad for every task at the cache's clip shape
and the tokenizer's stride (10, N) in `TASKS` order (cg: all False), computed once per job from
`condition_pixel_mask`. `CommitBatches` reads the caches like `pipelines.token_batches.TokenBatches` does
(videos only), adding z~ and a class id per sample. Class ids come from the captions: class i is the first
of `class_keywords` that starts a word of the caption (-1 = no class, the null class token). Draws are a pure
function of (seed, rank, step), so a resumed run gets the batches of an uninterrupted one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from modeling.commit import TASKS, CommitConfig, condition_pixel_mask, condition_video, ispad
from pipelines.loaders import EpochStream, rank_split
from pipelines.shards import load_npy
from pipelines.token_batches import load_caches, split_cache_dirs

COND_TASKS: tuple[str, ...] = tuple(t for t in TASKS if t != "cg")  # the rows of cond_tokens.npy
COND_INDEX: dict[str, int] = {t: i for i, t in enumerate(COND_TASKS)}
_STREAM_SALT = 0xC0117


# --------------------------------------------------------------------------------------------- geometry
def commit_record(fp_cond_frames: int = 1, fi_cond_frames: int = 1, pad_value: float = -1.0) -> dict:
    """The manifest's `commit` entry: which rows cond_tokens.npy holds and the regions' parameters."""
    return {
        "tasks": list(COND_TASKS),
        "fp_cond_frames": int(fp_cond_frames),
        "fi_cond_frames": int(fi_cond_frames),
        "pad_value": float(pad_value),
        "offsets": "paper",  # opd/ipd: o_t = round(linspace(0, W//2, T)) (`paper_offsets`)
    }


def commit_config_from_record(record: dict, **values) -> CommitConfig:
    """A CommitConfig whose condition geometry is the cache's (other fields from `values`)."""
    if list(record.get("tasks") or []) != list(COND_TASKS):
        raise ValueError(f"cache condition tasks {record.get('tasks')} are not {list(COND_TASKS)}")
    return CommitConfig(
        **{
            **values,
            "fp_cond_frames": int(record["fp_cond_frames"]),
            "fi_cond_frames": int(record["fi_cond_frames"]),
            "pad_value": float(record["pad_value"]),
        }
    )


@torch.no_grad()
def encode_condition_tokens(
    encode: Callable[[torch.Tensor], torch.Tensor], video: torch.Tensor, cfg: CommitConfig, batch_size: int
) -> torch.Tensor:
    """video (B, C, T, H, W) in [-1, 1] -> z~ (B, 9, t, h, w) in `COND_TASKS` order (cfp reuses fp's V~)."""
    per_task: dict[str, torch.Tensor] = {}
    for task in COND_TASKS:
        if task == "cfp":
            per_task[task] = per_task["fp"]
            continue
        cond, _ = condition_video(task, video, cfg.task_params(task, video.shape), pad_value=cfg.pad_value)
        per_task[task] = torch.cat([encode(c) for c in cond.split(batch_size)])
    return torch.stack([per_task[t] for t in COND_TASKS], dim=1)


def task_token_masks(
    clip_shape: Sequence[int], stride: Sequence[int], cfg: CommitConfig, tasks: Sequence[str] = TASKS
) -> torch.Tensor:
    """Eq. 2's cond_mask = ~ispad per task: clip (T, H, W), tokenizer stride (s_t, s_h, s_w) -> (len(tasks), N)
    bool (N = t*h*w, raster order), cg all False."""
    t, h, w = clip_shape
    shape = (1, 3, t, h, w)
    rows = [
        ~ispad(condition_pixel_mask(task, shape, cfg.task_params(task, shape)), stride).reshape(-1)
        for task in tasks
    ]
    return torch.stack(rows)


# --------------------------------------------------------------------------------------------- classes
def class_id_of(caption: str, keywords: Sequence[str] | None) -> int:
    """Index of the first keyword that starts a word of `caption` (case-insensitive), else -1."""
    for i, word in enumerate(keywords or ()):
        if re.search(rf"\b{re.escape(word.lower())}", caption.lower()):
            return i
    return -1


# --------------------------------------------------------------------------------------------- batches
@dataclass(frozen=True)
class CommitLoaderConfig:
    batch_size: int = 8
    seed: int = 0
    class_keywords: tuple[str, ...] | None = None
    strict: bool = False  # a damaged token shard raises (naming it and the fix) instead of a `bad_shard` skip


class CommitBatches:
    """Video batches with condition tokens from one or several COMMIT token caches.

    Batches: `tokens (B, N) long` z, `cond_tokens (B, 9, N) long` z~ (`COND_TASKS` rows), `class_ids (B,) long`
    (-1 = none), `text (B, L, D) float32` (zero padded), `text_mask (B, L) bool`. Image samples are ignored.
    `skipped` / `repaired` / `skip_records`: the caches' damaged shards, as `TokenBatches` has them.
    """

    def __init__(
        self, cache_dir: str | Sequence[str], cfg: CommitLoaderConfig, *, rank: int = 0, world_size: int = 1
    ):
        if cfg.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {cfg.batch_size}")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.cache_dirs = split_cache_dirs(cache_dir)
        samples, _, manifests, _, faults = load_caches(self.cache_dirs, strict=cfg.strict)
        self.skipped, self.repaired, self.skip_records = faults.skips, faults.repaired, faults.skipped
        records = {d: m.get("commit") for d, m in manifests.items()}
        missing = sorted(d for d, r in records.items() if not r)
        if missing:
            raise ValueError(
                f"token cache(s) {missing} hold no condition tokens: re-run `phenaki tokenize` with "
                "tokenize.commit=true (and a MAGVIT tokenizer)"
            )
        if len({json.dumps(r, sort_keys=True) for r in records.values()}) > 1:
            raise ValueError(f"token caches record different COMMIT condition parameters: {records}")
        self.record = next(iter(records.values()))
        tokens = [load_npy(s["tokens.npy"]) for s in samples]
        videos = [i for i, t in enumerate(tokens) if t.shape[0] > 1]
        if not videos:
            raise FileNotFoundError(f"no video samples in token cache(s) {self.cache_dirs}")
        grids = {tokens[i].shape for i in videos}
        if len(grids) > 1:
            raise ValueError(f"videos have different token grids {sorted(grids)}: one clip length per job")
        self.grid = tuple(int(x) for x in tokens[videos[0]].shape)
        n = int(np.prod(self.grid))
        lacking = [samples[i]["__key__"] for i in videos if "cond_tokens.npy" not in samples[i]]
        if lacking:
            raise ValueError(f"{len(lacking)} samples (e.g. {lacking[0]}) have no cond_tokens.npy")
        texts = [load_npy(samples[i]["text.npy"]) for i in videos]
        text_len = max(t.shape[0] for t in texts)
        self.text_dim = int(texts[0].shape[-1])
        self.num_videos = len(videos)
        mine = np.asarray(videos)[rank_split(len(videos), seed=cfg.seed, rank=rank, world_size=world_size)]
        if not len(mine):
            raise ValueError(f"worker {rank}: no videos in {self.cache_dirs} for {world_size} workers")
        rows = len(mine)
        self.tokens = np.stack([tokens[i].reshape(n) for i in mine]).astype(np.int64)
        self.cond = np.stack([load_npy(samples[i]["cond_tokens.npy"]).reshape(-1, n) for i in mine])
        self.cond = self.cond.astype(np.int64)
        if self.cond.shape[1] != len(COND_TASKS):
            raise ValueError(f"cond_tokens.npy has {self.cond.shape[1]} rows, expected {len(COND_TASKS)}")
        self.text = np.zeros((rows, text_len, self.text_dim), dtype=np.float16)
        self.text_mask = np.zeros((rows, text_len), dtype=bool)
        self.captions: list[str] = []
        where = {v: j for j, v in enumerate(videos)}
        for row, i in enumerate(mine):
            emb = texts[where[i]]
            self.text[row, : emb.shape[0]] = emb
            mask = load_npy(samples[i]["text_mask.npy"]) if "text_mask.npy" in samples[i] else None
            self.text_mask[row, : emb.shape[0]] = True if mask is None else mask.astype(bool)
            self.captions.append(samples[i].get("txt", b"").decode("utf-8"))
        self.class_ids = np.array([class_id_of(c, cfg.class_keywords) for c in self.captions], dtype=np.int64)
        self._stream = EpochStream(rows, (cfg.seed, rank, _STREAM_SALT))
        self.position = 0

    @property
    def num_samples(self) -> int:
        return len(self.tokens)

    def next_batch(self) -> dict[str, torch.Tensor]:
        b = self.cfg.batch_size
        idx = self._stream.take(self.position * b, b)
        self.position += 1
        return {
            "tokens": torch.from_numpy(self.tokens[idx]),
            "cond_tokens": torch.from_numpy(self.cond[idx]),
            "class_ids": torch.from_numpy(self.class_ids[idx]),
            "text": torch.from_numpy(self.text[idx].astype(np.float32)),
            "text_mask": torch.from_numpy(self.text_mask[idx]),
        }

    def state(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state(self, state: dict) -> None:
        """Continue from a saved `state()` (draws are indexed by position: nothing to replay)."""
        self.position = int(state["position"])


def select_condition(
    cond_tokens: torch.Tensor, task_ids: torch.Tensor, masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: cond_tokens (B, 9, N), task_ids (B,) in `TASKS` ids, masks (10, N) from `task_token_masks`
    -> (z_cond (B, N), cond_mask (B, N)). cg rows get zeros (never read: their mask is all False)."""
    index = torch.tensor([COND_INDEX.get(t, -1) for t in TASKS], device=task_ids.device)[task_ids]
    rows = torch.arange(cond_tokens.shape[0], device=cond_tokens.device)
    z_cond = cond_tokens[rows, index.clamp(min=0)]
    z_cond = torch.where((index >= 0)[:, None], z_cond, torch.zeros_like(z_cond))
    return z_cond, masks.to(task_ids.device)[task_ids]
