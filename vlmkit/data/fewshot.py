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

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vlmkit.data.records import RecordDataset
from vlmkit.data.validate import ImageRef
from vlmkit.errors import ConfigError, DataError, missing_file
from vlmkit.io import file_sha256, stable_seed


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


def save_features(path: str | Path, ids: Sequence[str], features: torch.Tensor,
                  meta: Mapping[str, Any] | None = None, images: Sequence[str] | None = None) -> None:
    """Store image features of a split for RICES: ``{"ids": [...], "features": (N, D)}``, written atomically.

    ``meta`` (what ``vlmkit prepare-data rices-features`` records: the vision key, the data key, dataset and split) and
    ``images`` (each item's image key) make the file a checked cache (:func:`check_features`)."""
    from vlmkit.io import atomic_path

    data: dict[str, Any] = {"ids": list(ids), "features": features.detach().cpu().float()}
    if images is not None:
        data["images"] = list(images)
    if meta is not None:
        data["meta"] = dict(meta)
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def read_features(path: str | Path) -> dict[str, Any]:
    """The whole feature file (``ids``, ``features`` and, for a cache, ``images`` and ``meta``)."""
    path = Path(path)
    if not path.is_file():
        raise missing_file(path, "RICES feature file", "compute it with `vlmkit prepare-data rices-features --cfg-path "
                                                        f"<yaml> --split {path.stem}`, or set fewshot.rices: false")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file
        raise DataError(f"cannot read RICES feature file {path}: {' '.join(str(e).split())[:200]}; recompute it with "
                        f"`vlmkit prepare-data rices-features --cfg-path <yaml> --split {path.stem} --force`") from e
    if not isinstance(data, dict) or "ids" not in data or "features" not in data:
        raise DataError(f"{path} is not a RICES feature file (no ids/features); recompute it with "
                        f"`vlmkit prepare-data rices-features --cfg-path <yaml> --split {path.stem} --force`")
    return data


def load_features(path: str | Path) -> tuple[list[str], torch.Tensor]:
    data = read_features(path)
    return list(data["ids"]), data["features"]


# --------------------------------------------------------------------------------------------- the RICES cache
#: What a cached feature is: CLIP's pooled, projected image embedding (``visual(images)``), as the reference's RICES.
FEATURE_KIND = "clip_image_embedding"


def ids_sha256(ids: Iterable[str]) -> str:
    """A hash of a list of sample ids, in order (protocol.json, the RICES cache's data key)."""
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()




def data_key(dataset: RecordDataset) -> str:
    """The data a split's features were computed from: a hash of every item's (id, image key), in dataset order."""
    return hashlib.sha256("\n".join(f"{r['id']}\t{r['image']}" for r in dataset.records).encode()).hexdigest()


def vision_key(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What the RICES features depend on in ``model``: the vision weights (sha256 of ``model.vision.weights``, or the
    ``tiny`` tower config + ``model.init_seed`` of a random one) and the image preprocessing; ``sha256`` over all."""
    vision = model_cfg.get("vision")
    if not isinstance(vision, Mapping):
        raise ConfigError(f"RICES features need a CLIP vision tower (model.vision), which model "
                          f"'{model_cfg.get('arch')}' does not have")
    desc: dict[str, Any] = {"kind": FEATURE_KIND, "model_name": str(vision.get("model_name")),
                            "image_mean": [float(v) for v in vision["image_mean"]],
                            "image_std": [float(v) for v in vision["image_std"]]}
    weights = vision.get("weights")
    if weights:
        if not Path(weights).is_file():
            from vlmkit.models.flamingo.build import CLIP_HOW_TO_OBTAIN

            raise missing_file(weights, "CLIP vision weights", CLIP_HOW_TO_OBTAIN)
        desc["weights"] = str(weights)
        desc["weights_sha256"] = file_sha256(weights)
    elif vision.get("tiny") is not None:
        desc["tiny"] = {str(k): v for k, v in dict(vision["tiny"]).items()}
        desc["init_seed"] = int(model_cfg.get("init_seed", 0))
    else:
        raise ConfigError("RICES features: model.vision has neither weights nor a tiny config")
    hashed = {k: v for k, v in desc.items() if k != "weights"}  # the file's bytes count, not where it lies
    desc["sha256"] = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()
    return desc


def describe_vision(key: Mapping[str, Any]) -> str:
    if key.get("weights_sha256"):
        return f"weights {key.get('weights')} sha256 {str(key['weights_sha256'])[:12]}"
    return f"random tiny tower {key.get('tiny')} init_seed {key.get('init_seed')}"


def build_rices_encoder(model_cfg: Mapping[str, Any], device: torch.device | str = "cpu"
                        ) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[Any], torch.Tensor]]:
    """(encode, image transform) of the model's CLIP vision tower alone (no LM): encode maps a batch of transformed
    images to their pooled, projected embeddings. A tiny tower is initialised from ``model.init_seed``."""
    from vlmkit.models.clip import build_clip_vision
    from vlmkit.models.flamingo.build import CLIP_HOW_TO_OBTAIN
    from vlmkit.processors.image import center_crop_transform

    vision = model_cfg["vision"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(model_cfg.get("init_seed", 0)))
        visual = build_clip_vision(str(vision["model_name"]), vision.get("weights"), vision.get("tiny"),
                                   CLIP_HOW_TO_OBTAIN)
    visual = visual.to(device).eval()
    size = visual.image_size
    transform = center_crop_transform(int(size[0] if isinstance(size, (tuple, list)) else size), vision["image_mean"],
                                      vision["image_std"])

    def encode(images: torch.Tensor) -> torch.Tensor:
        out = visual(images.to(device))
        return out[0] if isinstance(out, tuple) else out  # open_clip versions that also return the tokens

    return encode, transform


def cache_meta(dataset: RecordDataset, vision: Mapping[str, Any]) -> dict[str, Any]:
    """The ``meta`` of a cached split: dataset, split, item count, data key and vision key."""
    return {"format": 1, "dataset": dataset.name, "split": dataset.split, "num_items": len(dataset),
            "data_sha256": data_key(dataset), "vision": dict(vision)}


def recompute_hint(split: str) -> str:
    return f"recompute it with `vlmkit prepare-data rices-features --cfg-path <yaml> --split {split} --force`"


def check_vision(path: str | Path, data: Mapping[str, Any], vision: Mapping[str, Any]) -> None:
    """Refuse a feature file that is not a cache or that other vision weights (or preprocessing) made."""
    meta = data.get("meta")
    split = Path(path).stem
    if not isinstance(meta, Mapping) or not isinstance(meta.get("vision"), Mapping):
        raise DataError(f"RICES feature file {path} records no vision weights (it was not written by `vlmkit "
                        f"prepare-data rices-features`), so it cannot be checked against this model; {recompute_hint(split)}")
    theirs = meta["vision"]
    if theirs.get("sha256") != vision["sha256"]:
        raise DataError(f"RICES feature file {path} was made with other vision weights ({describe_vision(theirs)}) "
                        f"than this config's model.vision ({describe_vision(vision)}); {recompute_hint(split)}")


def check_data(path: str | Path, data: Mapping[str, Any], dataset: RecordDataset, whole: bool) -> None:
    """Refuse a cache made from other data: for the demo pool (``whole``) exactly this split (ids and images), for the
    query split every evaluated item with the same image. A file without ``meta`` (hand-made) is checked by ids only."""
    meta = data.get("meta")
    if not isinstance(meta, Mapping):
        return
    split = Path(path).stem
    what = f"RICES feature file {path} was made from other data than {dataset.name} split '{dataset.split}'"
    if (meta.get("dataset"), meta.get("split")) != (dataset.name, dataset.split):
        raise DataError(f"{what} (it holds {meta.get('dataset')} split '{meta.get('split')}'); {recompute_hint(split)}")
    if whole:
        if meta.get("data_sha256") != data_key(dataset):
            raise DataError(f"{what} ({meta.get('num_items')} items cached, {len(dataset)} in the split, or other ids "
                            f"or images); {recompute_hint(split)}")
        return
    cached = dict(zip(data["ids"], data.get("images") or [None] * len(data["ids"])))
    for record in dataset.records:
        if record["id"] in cached and cached[record["id"]] not in (None, record["image"]):
            raise DataError(f"{what} (sample {record['id']} has image {record['image']}, the cache "
                            f"{cached[record['id']]}); {recompute_hint(split)}")


@torch.no_grad()
def compute_image_features(dataset: RecordDataset, encode: Callable[[torch.Tensor], torch.Tensor],
                           batch_size: int = 64, progress: bool = False) -> tuple[list[str], torch.Tensor]:
    """Features of every item of ``dataset`` (ids, (N, D)) from ``encode`` applied to stacked transformed images; an
    image several items share (VQAv2's questions) is encoded once. ``progress``: a tqdm bar over the images."""
    from tqdm import tqdm

    keys = [r["image"] for r in dataset.records]
    first = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    unique = list(first)
    feats = []
    with tqdm(total=len(unique), desc=f"RICES features {dataset.name} {dataset.split}", unit="img",
              disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(unique), batch_size):
            chunk = unique[start:start + batch_size]
            feats.append(encode(torch.stack([dataset.image(first[k]) for k in chunk])).float().cpu())
            bar.update(len(chunk))
    by_image = torch.cat(feats)
    position = {key: j for j, key in enumerate(unique)}
    return [dataset.sample_id(i) for i in range(len(dataset))], by_image[[position[k] for k in keys]]


def check_rices_cache(cfg: Any, splits: Sequence[str]) -> None:
    """Before a run: every dataset with ``fewshot.rices`` has feature files of its demo split and of ``splits`` made
    with this config's vision weights (the data is checked when the datasets are built, :meth:`FewShotDataset._plan_rices`)."""
    vision = None
    for name, dcfg in cfg.datasets.items():
        fewshot = dcfg.get("fewshot")
        if fewshot is None or fewshot.get("shots") is None or not fewshot.get("rices"):
            continue
        if not fewshot.get("rices_features_dir"):
            raise ConfigError(f"datasets.{name}.fewshot.rices is true but fewshot.rices_features_dir is not set")
        vision = vision or vision_key(cfg.model)
        for split in dict.fromkeys([str(fewshot["demo_split"]), *map(str, splits)]):
            path = Path(fewshot["rices_features_dir"]) / f"{split}.pt"
            check_vision(path, read_features(path), vision)


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
        pool_path = Path(features_dir) / f"{self.demo_dataset.split}.pt"
        query_path = Path(features_dir) / f"{self.query_dataset.split}.pt"
        pool, query = read_features(pool_path), read_features(query_path)
        check_data(pool_path, pool, self.demo_dataset, whole=True)
        check_data(query_path, query, self.query_dataset, whole=False)
        pool_ids, pool_feats = list(pool["ids"]), pool["features"]
        query_ids, query_feats = list(query["ids"]), query["features"]
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

    def sample_id(self, index: int) -> str:
        return self.query_dataset.sample_id(index)

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

    def _context(self, sample_id: str) -> tuple[list[int], str]:
        demos = self.demo_indices(sample_id)
        context = "".join(self.demo_dataset.demo_prompt(d) + self.separator for d in demos)
        return demos, context.replace(self.image_token, "") if self.shots == 0 else context

    def prompt_text(self, index: int) -> str:
        """The whole prompt (demos + query) without loading an image (for grouping batches by length)."""
        return self._context(self.sample_id(index))[1] + self.query_dataset.prompt_text(index)

    def image_by_key(self, key: str) -> Any | None:
        """The transformed image with this vision-cache key (a query's or a demo's), None if neither has it."""
        image = self.query_dataset.image_by_key(key)
        return image if image is not None else self.demo_dataset.image_by_key(key)

    def defer_images(self, defer: bool) -> None:
        """Leave images undecoded (a vision cache supplies their visual tokens), or load them again."""
        self.query_dataset.defer_images(defer)
        self.demo_dataset.defer_images(defer)

    def __getitem__(self, index: int) -> dict[str, Any]:
        query = self.query_dataset[index]
        demos, context = self._context(query["id"])
        shown = demos if self.shots > 0 else []  # zero shots: the demos are text only
        images = [self.demo_dataset.image_or_deferred(d) for d in shown]
        keys = [self.demo_dataset.image_key(d) for d in shown]
        demo_ids = [self.demo_dataset.sample_id(d) for d in demos]
        return {**query, "prompt": context + query["prompt"], "images": images + query["images"],
                "image_keys": keys + query["image_keys"], "target": "", "demo_ids": demo_ids}


def wrap_fewshot(query_dataset: RecordDataset, demo_dataset: RecordDataset, cfg: Mapping[str, Any]) -> FewShotDataset:
    """Build a :class:`FewShotDataset` from a dataset config's ``fewshot`` section."""
    return FewShotDataset(query_dataset, demo_dataset, shots=int(cfg["shots"]), seed=int(cfg["seed"]),
                          trial=int(cfg["trial"]), query_set_size=int(cfg["query_set_size"]),
                          separator=str(cfg["demo_separator"]), zero_shot_demos=int(cfg["zero_shot_demos"]),
                          rices=bool(cfg["rices"]), rices_features_dir=cfg.get("rices_features_dir"))
