"""ScienceQA in its official layout (lupantech/ScienceQA)::

    <root>/problems.json        {qid: problem}
    <root>/pid_splits.json      {"train": [qid, ...], "val": [...], "test": [...], "minitrain": ..., ...}
    <root>/captions.json        {"captions": {qid: str}}        (only needed with use_caption)
    <root>/images/<split>/<qid>/image.png

Config (``datasets.scienceqa``, defaults in vlmkit/configs/datasets/scienceqa.yaml): root, prompt_format, use_caption,
caption_file.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vlmkit.data.builder import DatasetBuilder
from vlmkit.data.validate import ImageRef
from vlmkit.errors import DataError, missing_file
from vlmkit.io import decode_image, read_json
from vlmkit.processors.image import ImageTransform
from vlmkit.processors.prompts import OPTION_LETTERS, PromptFormat, build_scienceqa_prompt
from vlmkit.registry import DATASETS

PROBLEMS_FILE = "problems.json"
SPLITS_FILE = "pid_splits.json"
CAPTIONS_FILE = "captions.json"
IMAGE_FILE = "image.png"
OBTAIN = ("download ScienceQA from its official repository (see docs/scienceqa.md) or run "
          "`vlmkit prepare-data synthetic-scienceqa --out DIR`")
REQUIRED_FIELDS = ("question", "choices", "answer")



def to_tensor(image: Image.Image) -> torch.Tensor:
    """Fallback transform when no model transform is given: (3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _check_problem(qid: str, problem: Any, path: Path) -> None:
    if not isinstance(problem, Mapping) or any(k not in problem for k in REQUIRED_FIELDS):
        raise DataError(f"problem '{qid}' in {path} lacks one of the fields {', '.join(REQUIRED_FIELDS)} (re-download it)")
    n = len(problem["choices"])
    if not 1 <= n <= len(OPTION_LETTERS) or not 0 <= int(problem["answer"]) < n:
        raise DataError(f"problem '{qid}' in {path} has {n} choices and answer {problem['answer']}: expected 1-"
                        f"{len(OPTION_LETTERS)} choices and an answer index among them (re-download it)")


class ScienceQADataset(Dataset):
    """One split of ScienceQA as vlmkit samples (see vlmkit/models/base.py).

    ``train=True`` fills ``target`` with the formatted output (the text to learn); otherwise it is "". Images load
    lazily in ``__getitem__``; they are looked up under the problem's own ``split`` field, so composite splits
    (trainval, minitest, ...) find them too.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        prompt_format: str = "QCM-ALE",
        image_transform: ImageTransform | None = None,
        use_caption: bool = False,
        caption_file: str | Path | None = None,
        train: bool = False,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.format = PromptFormat.parse(prompt_format)
        self.image_transform = image_transform or to_tensor
        self.train = train
        problems_path = self.root / PROBLEMS_FILE
        splits_path = self.root / SPLITS_FILE
        all_problems = read_json(problems_path, "ScienceQA problems.json", OBTAIN)
        splits = read_json(splits_path, "ScienceQA pid_splits.json", OBTAIN)
        if not isinstance(all_problems, Mapping) or not isinstance(splits, Mapping):
            raise DataError(f"{problems_path} and {splits_path} must each hold a JSON object (re-download them)")
        if split not in splits:
            raise DataError(f"split '{split}' is not in {splits_path} (it has: {', '.join(map(str, splits))})")
        self.qids = [str(q) for q in splits[split]]
        if not self.qids:
            raise DataError(f"split '{split}' of {splits_path} is empty: choose another split or regenerate the data")
        absent = [q for q in self.qids if q not in all_problems]
        if absent:
            raise DataError(f"{len(absent)} ids of split '{split}' in {splits_path} are not in {problems_path} "
                            f"(e.g. '{absent[0]}'): the two files come from different releases; re-download both")
        self.problems: dict[str, dict[str, Any]] = {q: all_problems[q] for q in self.qids}
        for qid, problem in self.problems.items():
            _check_problem(qid, problem, problems_path)

        self.captions: dict[str, str] = {}
        if use_caption:
            path = Path(caption_file) if caption_file else self.root / CAPTIONS_FILE
            captions = read_json(path, "ScienceQA captions.json", OBTAIN)
            if not isinstance(captions, Mapping) or not isinstance(captions.get("captions"), Mapping):
                raise DataError(f"{path} must hold {{\"captions\": {{qid: caption}}}} (re-download it)")
            self.captions = {str(k): str(v) for k, v in captions["captions"].items()}

        # Checked now (one stat per image) so a run does not stop hours in; every image is decoded once before the
        # run writes anything (image_refs, vlmkit/data/validate.py).
        missing = [q for q in self.qids if self.has_image(q) and not self.image_path(q).is_file()]
        if missing:
            path = self.image_path(missing[0])
            raise missing_file(path, f"{len(missing)} images of split '{split}' are missing, e.g. the image",
                               f"re-download or re-extract {path.relative_to(self.root)}")

    def image_refs(self) -> list[ImageRef]:
        return [ImageRef(f"{path} of ScienceQA problem '{qid}'", path,
                         how=f"re-download or re-extract {path.relative_to(self.root)}")
                for qid in self.qids if self.has_image(qid) for path in [self.image_path(qid)]]

    def image_path(self, qid: str) -> Path:
        problem = self.problems[qid]
        name = problem["image"] if isinstance(problem.get("image"), str) else IMAGE_FILE
        return self.root / "images" / (problem.get("split") or self.split) / qid / name

    def has_image(self, qid: str) -> bool:
        return bool(self.problems[qid].get("image"))

    def load_image(self, qid: str) -> Image.Image:
        path = self.image_path(qid)
        return decode_image(path, f"{path} of ScienceQA problem '{qid}'",
                            f"re-download or re-extract {path.relative_to(self.root)}")

    def __len__(self) -> int:
        return len(self.qids)

    def sample_id(self, index: int) -> str:
        return self.qids[index]

    def prompt_text(self, index: int) -> str:
        """The prompt without loading the image (for grouping evaluation batches by length)."""
        qid = self.qids[index]
        return build_scienceqa_prompt(self.problems[qid], self.format, self.captions.get(qid, ""))[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        qid = self.qids[index]
        problem = self.problems[qid]
        prompt, target = build_scienceqa_prompt(problem, self.format, self.captions.get(qid, ""))
        images = [self.image_transform(self.load_image(qid))] if self.has_image(qid) else []
        return {"id": qid, "images": images, "prompt": prompt, "target": target if self.train else "",
                "answer": int(problem["answer"]), "n_choices": len(problem["choices"])}


@DATASETS.register("scienceqa")
class ScienceQABuilder(DatasetBuilder):
    """``datasets.scienceqa`` → one :class:`ScienceQADataset` per split."""

    default_config = "datasets/scienceqa.yaml"

    def build(self, split: str, image_transform: ImageTransform | None = None, train: bool = False) -> ScienceQADataset:
        cfg = self.cfg
        return ScienceQADataset(
            root=cfg["root"], split=split, prompt_format=cfg["prompt_format"], image_transform=image_transform,
            use_caption=bool(cfg["use_caption"]), caption_file=cfg["caption_file"], train=train,
        )
