"""A toy model, dataset and task for engine tests: an MLP that classifies small random vectors ("images").

Registered as model ``toy_mlp``, dataset ``toy_points`` and task ``toy_cls``; import with ``run.imports: [toy_components]``
and ``tests/`` on PYTHONPATH. The label of a vector is the argmax of a fixed random projection of it, so an MLP can learn
it quickly and accuracy is a meaningful signal.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from vlmkit.errors import DataError
from vlmkit.models.base import VLModel
from vlmkit.data.builder import DatasetBuilder
from vlmkit.engine.trainer import HookBase
from vlmkit.registry import DATASETS, HOOKS, MODELS, TASKS
from vlmkit.tasks.base import Evaluator, Task

LABEL_SEED = 1234  # the fixed projection that defines labels (shared by all splits)
SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}  # different points per split, same labelling rule


class ToyPoints(Dataset):
    def __init__(self, n: int, dim: int, num_classes: int, seed: int, nan_ids: tuple[int, ...] = ()) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        proj = torch.randn(dim, num_classes, generator=torch.Generator().manual_seed(LABEL_SEED))
        self.y = (self.x @ proj).argmax(dim=1)
        for i in nan_ids:
            self.x[i] = float("nan")  # a corrupt sample: its loss is NaN

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"id": f"p{i}", "images": [self.x[i]], "prompt": "", "target": str(int(self.y[i])), "label": int(self.y[i])}


@DATASETS.register("toy_points")
class ToyPointsBuilder(DatasetBuilder):
    """``datasets.toy_points``: ``sizes`` {split: n}, ``dim``, ``num_classes``, ``seed``, ``nan_ids`` (train indices)."""

    def build(self, split: str, image_transform: Any = None, train: bool = False) -> ToyPoints:
        cfg = self.cfg
        sizes = dict(cfg.get("sizes") or {"train": 64, "val": 32, "test": 32})
        if split not in sizes:
            raise DataError(f"toy_points has no split '{split}' (it has: {', '.join(sizes)})")
        nan_ids = tuple(cfg.get("nan_ids") or ()) if split == "train" else ()
        seed = int(cfg.get("seed", 0)) * len(SPLIT_OFFSETS) + SPLIT_OFFSETS.get(split, len(SPLIT_OFFSETS))
        return ToyPoints(int(sizes[split]), int(cfg.get("dim", 8)), int(cfg.get("num_classes", 4)), seed, nan_ids)


class ToyCollator:
    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return {"ids": [s["id"] for s in samples], "images": torch.stack([s["images"][0] for s in samples]),
                "labels": torch.tensor([s["label"] for s in samples])}


@MODELS.register("toy_mlp")
class ToyMLP(VLModel):
    default_config = {"arch": "toy_mlp", "dim": 8, "hidden": 32, "num_classes": 4, "dropout": 0.1, "step_sleep": 0.0}

    def __init__(self, dim: int, hidden: int, num_classes: int, dropout: float, step_sleep: float) -> None:
        super().__init__()
        self.frozen_embed = nn.Linear(dim, dim)  # stands in for a frozen backbone
        self.frozen_embed.requires_grad_(False)
        self.fc1 = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.step_sleep = step_sleep  # slows training steps so a test can interrupt a run mid-epoch

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], device: torch.device | None = None) -> "ToyMLP":
        model = cls(int(cfg["dim"]), int(cfg["hidden"]), int(cfg["num_classes"]), float(cfg["dropout"]),
                    float(cfg["step_sleep"]))
        return model.to(device) if device is not None else model

    def collator(self, train: bool) -> ToyCollator:
        return ToyCollator()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.frozen_embed(x) + x
        return self.fc2(self.drop(F.gelu(self.norm(self.fc1(h)))))

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self.step_sleep:
            time.sleep(self.step_sleep)
        return {"loss": F.cross_entropy(self.logits(batch["images"]), batch["labels"])}

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], **gen_kwargs: Any) -> list[str]:
        return [str(int(c)) for c in self.logits(batch["images"]).argmax(dim=1)]


class ToyAccuracy(Evaluator):
    def __init__(self, dataset: ToyPoints) -> None:
        self.labels = {f"p{i}": str(int(y)) for i, y in enumerate(dataset.y)}
        self.reset()

    def process(self, ids: list[str], outputs: list[str]) -> None:
        for i, out in zip(ids, outputs):
            self._predictions[i] = out

    def evaluate(self, predictions: Mapping[str, Any]) -> dict[str, Any]:
        correct = sum(predictions[i] == self.labels[i] for i in predictions)
        return {"accuracy": 100.0 * correct / len(predictions), "n": len(predictions)}


@TASKS.register("toy_cls")
class ToyClassification(Task):
    main_metric = "accuracy"

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)

    def build_datasets(self, model: Any, splits: Sequence[str] | None = None,
                       train: Sequence[str] | None = None) -> dict[str, dict[str, Dataset]]:
        splits, _ = self.run_splits(splits, train)
        return {name: {split: DATASETS.build_named(name, dcfg).build(split) for split in splits}
                for name, dcfg in self.cfg.datasets.items()}

    def build_evaluator(self, dataset_name: str, split: str, dataset: Dataset) -> Evaluator:
        return ToyAccuracy(dataset)  # type: ignore[arg-type]


@HOOKS.register("toy_fail")
class ToyFail(HookBase):
    """Fails on one rank after one optimizer step: a config error, a data error or a plugin's own exception."""

    default_config = {"rank": 1, "step": 2, "kind": "plugin"}

    def __init__(self, rank: int, step: int, kind: str) -> None:
        self.rank, self.step, self.kind = int(rank), int(step), str(kind)

    def after_step(self) -> None:
        from vlmkit import dist
        from vlmkit.errors import ConfigError

        if dist.rank() != self.rank or self.trainer.step != self.step:
            return
        if self.kind == "config":
            raise ConfigError(f"toy_fail: a config error raised on rank {self.rank} only")
        if self.kind == "data":
            raise DataError(f"toy_fail: a data error raised on rank {self.rank} only")
        raise ValueError(f"toy_fail plugin broke on rank {self.rank}")
