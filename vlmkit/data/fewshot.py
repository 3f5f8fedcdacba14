"""Few-shot (in-context) evaluation samples: demos + query, images in the order of their tags.

Protocol (OpenFlamingo's evaluation, with one fix): demos come from a *query set* of ``query_set_size`` items of the
demo split, chosen once per (seed, trial). Each test item draws its ``shots`` demos with a generator seeded by
(seed, trial, sample id) through a stable hash — the reference seeds with seed + rank, so its demos change with the
number of GPUs; here they depend on the sample alone. With ``rices: true`` the demos are instead the ``shots`` items
of the demo split whose precomputed image features are most similar (cosine) to the query's, most similar last.
``shots: 0`` means the reference's zero-shot prompt: ``zero_shot_demos`` demos as text only (image tags removed,
no images), then the query with its image.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vlmkit.data.records import RecordDataset
from vlmkit.data.validate import ImageRef
from vlmkit.errors import ConfigError, DataError, missing_file
from vlmkit.io import stable_seed


def choose_query_set(pool_size: int, query_set_size: int, seed: int, trial: int) -> list[int]:
    """Indices (sorted) of the demo candidates: a fixed random subset of the demo split."""
    rng = random.Random(stable_seed("query_set", seed, trial))
    return sorted(rng.sample(range(pool_size), min(query_set_size, pool_size)))


def random_demos(sample_id: str, candidates: Sequence[int], candidate_ids: Sequence[str], k: int, seed: int,
                 trial: int) -> list[int]:
    """``k`` candidates for ``sample_id``, drawn by a generator seeded with (seed, trial, sample_id)."""
    rng = random.Random(stable_seed("demos", seed, trial, sample_id))
    # one draw more than needed, so that a draw equal to the query item itself (same split) can be dropped
    order = rng.sample(range(len(candidates)), min(k + 1, len(candidates)))
    picked = [candidates[j] for j in order if candidate_ids[j] != sample_id][:k]
    if len(picked) < k:
        raise DataError(f"the demo pool has {len(picked)} usable items but {k} demos are needed per sample; "
                        "lower the shots or use a larger demo split")
    return picked


def rices_select(query_features: torch.Tensor, pool_features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (Q, k) of the ``k`` pool items most cosine-similar to each query, ordered so the most similar is LAST.

    The reference places the closest demo right before the query, where it influences the answer most.
    """
    q = torch.nn.functional.normalize(query_features.float(), dim=-1)
    p = torch.nn.functional.normalize(pool_features.float(), dim=-1)
    top = (q @ p.T).topk(min(k, p.shape[0]), dim=-1).indices  # most similar first
    return top.flip(-1)


def save_features(path: str | Path, ids: Sequence[str], features: torch.Tensor) -> None:
    """Store image features of a split for RICES: ``{"ids": [...], "features": (N, D)}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"ids": list(ids), "features": features.detach().cpu().float()}, path)


def load_features(path: str | Path) -> tuple[list[str], torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise missing_file(path, "RICES feature file", "compute it with vlmkit.data.fewshot.compute_image_features "
                                                        "and save_features, or set fewshot.rices: false")
    data = torch.load(path, map_location="cpu", weights_only=True)
    return list(data["ids"]), data["features"]


@torch.no_grad()
def compute_image_features(dataset: RecordDataset, encode: Callable[[torch.Tensor], torch.Tensor],
                           batch_size: int = 64) -> tuple[list[str], torch.Tensor]:
    """Features of every image of ``dataset`` (ids, (N, D)) from ``encode`` applied to stacked transformed images."""
    ids, feats = [], []
    for start in range(0, len(dataset), batch_size):
        idx = range(start, min(start + batch_size, len(dataset)))
        feats.append(encode(torch.stack([dataset.image(i) for i in idx])).float().cpu())
        ids.extend(dataset.sample_id(i) for i in idx)
    return ids, torch.cat(feats)


class FewShotDataset(Dataset):
    """Eval samples whose prompt = demos + query and images = demo images + query image.

    ``query_dataset`` is the split being evaluated, ``demo_dataset`` the split demos come from (both record datasets
    of the same task). Every other key of the query sample (question_id, image_id, ...) is kept.
    """

    def __init__(self, query_dataset: RecordDataset, demo_dataset: RecordDataset, shots: int, *, seed: int,
                 trial: int, query_set_size: int, separator: str, zero_shot_demos: int, rices: bool,
                 rices_features_dir: str | Path | None) -> None:
        # No defaults here: the values come from datasets.<name>.fewshot (vlmkit/configs/datasets/*.yaml).
        if shots < 0:
            raise ConfigError(f"fewshot.shots must be >= 0, got {shots}")
        self.query_dataset = query_dataset
        self.demo_dataset = demo_dataset
        self.shots = shots
        self.num_demos = shots if shots > 0 else zero_shot_demos
        self.seed, self.trial = seed, trial
        self.separator = separator
        self.image_token = query_dataset.template.image_token
        self.rices = rices
        if rices:
            self._rices_demos = self._plan_rices(rices_features_dir)
        else:
            self.candidates = choose_query_set(len(demo_dataset), query_set_size, seed, trial)
            self.candidate_ids = [demo_dataset.sample_id(i) for i in self.candidates]

    def _plan_rices(self, features_dir: str | Path | None) -> dict[str, list[int]]:
        if features_dir is None:
            raise ConfigError("fewshot.rices is true but fewshot.rices_features_dir is not set")
        pool_ids, pool_feats = load_features(Path(features_dir) / f"{self.demo_dataset.split}.pt")
        query_ids, query_feats = load_features(Path(features_dir) / f"{self.query_dataset.split}.pt")
        wanted = {self.query_dataset.sample_id(i) for i in range(len(self.query_dataset))}
        missing = wanted - set(query_ids)
        if missing:
            raise DataError(f"RICES features of split {self.query_dataset.split} lack {len(missing)} samples "
                            f"(e.g. {sorted(missing)[0]}); recompute {features_dir}/{self.query_dataset.split}.pt")
        pool_index = [self.demo_dataset.index_of(i) for i in pool_ids]
        # one extra neighbour, so that the query item itself (same split for pool and query) can be dropped
        order = rices_select(query_feats, pool_feats, self.num_demos + 1)
        plan = {}
        for qid, row in zip(query_ids, order.tolist()):
            if qid in wanted:
                picked = [pool_index[j] for j in row if pool_ids[j] != qid]
                plan[qid] = picked[len(picked) - self.num_demos:]  # keep the most similar, still last
        return plan

    def demo_indices(self, sample_id: str) -> list[int]:
        """Indices into ``demo_dataset`` of the demos of one sample (a pure function of the sample id)."""
        if self.rices:
            return self._rices_demos[sample_id]
        return random_demos(sample_id, self.candidates, self.candidate_ids, self.num_demos, self.seed, self.trial)

    def __len__(self) -> int:
        return len(self.query_dataset)

    def image_refs(self) -> list[ImageRef]:
        """The query images and those of every demo candidate (none at zero shots: demos are text there)."""
        refs = self.query_dataset.image_refs()
        if self.shots > 0:
            pool = self.demo_dataset.image_refs()
            if not self.rices:
                keys = {self.demo_dataset.records[i]["image"] for i in self.candidates}
                pool = [ref for ref, key in zip(pool, dict.fromkeys(r["image"] for r in self.demo_dataset.records))
                        if key in keys]
            refs += pool
        return refs

    def __getitem__(self, index: int) -> dict[str, Any]:
        query = self.query_dataset[index]
        demos = self.demo_indices(query["id"])
        context = "".join(self.demo_dataset.demo_prompt(d) + self.separator for d in demos)
        if self.shots == 0:
            context = context.replace(self.image_token, "")
            images = []
        else:
            images = [self.demo_dataset.image(d) for d in demos]
        demo_ids = [self.demo_dataset.sample_id(d) for d in demos]
        return {**query, "prompt": context + query["prompt"], "images": images + query["images"], "target": "",
                "demo_ids": demo_ids}


def wrap_fewshot(query_dataset: RecordDataset, demo_dataset: RecordDataset, cfg: Mapping[str, Any]) -> FewShotDataset:
    """Build a :class:`FewShotDataset` from a dataset config's ``fewshot`` section."""
    return FewShotDataset(query_dataset, demo_dataset, shots=int(cfg["shots"]), seed=int(cfg["seed"]),
                          trial=int(cfg["trial"]), query_set_size=int(cfg["query_set_size"]),
                          separator=str(cfg["demo_separator"]), zero_shot_demos=int(cfg["zero_shot_demos"]),
                          rices=bool(cfg["rices"]), rices_features_dir=cfg.get("rices_features_dir"))
