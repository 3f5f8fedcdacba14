"""Samples → OpenFlamingo batches.

Training input is ``prompt + target + <|endofchunk|>`` with labels on the target and ``<|endofchunk|>`` only, right
padded. Evaluation input is the prompt alone, LEFT padded (generation appends at the right). Images are stacked to
(B, T_img, 1, 3, H, W) — one frame each — zero-padded to the sample with most images, with ``image_mask``
(B, T_img).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vlmkit.data.records import DeferredImage
from vlmkit.errors import DataError
from vlmkit.models.flamingo.build import END_OF_CHUNK_TOKEN, MEDIA_TOKEN

IGNORE_INDEX = -100  # label of tokens without loss (cross_entropy's ignore_index)


@dataclass
class FlamingoCollator:
    """A picklable ``samples → batch`` callable.

    Batch keys: input_ids, attention_mask, labels (training only), images, image_mask, ids; for evaluation also
    prompts and demo_ids (the text the model was given, for the per-sample records).
    """

    tokenizer: Any
    train: bool
    image_size: int

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        media_id = self.tokenizer.convert_tokens_to_ids(MEDIA_TOKEN)
        rows, label_rows = [], []
        for sample in samples:
            prompt_ids, target_ids = self._tokenize(sample, media_id)
            rows.append(prompt_ids + target_ids)
            label_rows.append([IGNORE_INDEX] * len(prompt_ids) + target_ids)
        batch = self._pad(rows, label_rows)
        batch["images"], batch["image_mask"] = self._stack_images(samples)
        if any(isinstance(image, DeferredImage) for s in samples for image in s.get("images") or []):
            batch["images_deferred"] = True  # their slots hold zeros: the vision cache supplies the visual tokens
        if all("image_keys" in s for s in samples):
            batch["image_keys"] = [list(s["image_keys"]) for s in samples]
        batch["ids"] = [str(s["id"]) for s in samples]
        if not self.train:  # what the per-sample records show (vlmkit/tasks/samples.py)
            batch["prompts"] = [s["prompt"] for s in samples]
            batch["demo_ids"] = [s.get("demo_ids") for s in samples]
        return batch

    def _tokenize(self, sample: dict[str, Any], media_id: int) -> tuple[list[int], list[int]]:
        sid, prompt, target = sample["id"], sample["prompt"], sample.get("target") or ""
        n_tags, n_images = prompt.count(MEDIA_TOKEN), len(sample.get("images") or [])
        if self.train and n_tags == 0:
            raise DataError(f"training sample {sid} has no {MEDIA_TOKEN} token: the model would never see its image "
                            f"(put '{MEDIA_TOKEN}' in the prompt where the image belongs, e.g. "
                            f"'{MEDIA_TOKEN}Output: ...'; OpenFlamingo attends to an image only after its tag)")
        if n_tags != n_images:
            raise DataError(f"sample {sid} has {n_tags} {MEDIA_TOKEN} tags in its prompt but {n_images} images: "
                            "each image needs exactly one tag, in order")
        if MEDIA_TOKEN in target:
            raise DataError(f"sample {sid} has {MEDIA_TOKEN} in its target; images belong in the prompt")
        prompt_ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if prompt_ids.count(media_id) != n_tags:
            raise DataError(f"the tokenizer does not map {MEDIA_TOKEN} of sample {sid} to its special token; "
                            "build the collator with the model's own tokenizer (model.collator)")
        if not self.train:
            return prompt_ids, []
        target_ids = self.tokenizer(target + END_OF_CHUNK_TOKEN, add_special_tokens=False)["input_ids"]
        return prompt_ids, target_ids

    def _pad(self, rows: list[list[int]], label_rows: list[list[int]]) -> dict[str, Any]:
        length = max(len(r) for r in rows)
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for i, (row, label_row) in enumerate(zip(rows, label_rows)):
            # Training pads on the right; evaluation on the left so that every prompt ends where generation starts.
            span = slice(0, len(row)) if self.train else slice(length - len(row), length)
            input_ids[i, span] = torch.tensor(row)
            attention_mask[i, span] = 1
            labels[i, span] = torch.tensor(label_row)
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.train:
            batch["labels"] = labels
        return batch

    def _stack_images(self, samples: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        n_max = max(len(s.get("images") or []) for s in samples)
        size = self.image_size
        images = torch.zeros(len(samples), n_max, 1, 3, size, size)
        mask = torch.zeros(len(samples), n_max, dtype=torch.bool)
        for i, sample in enumerate(samples):
            for j, image in enumerate(sample.get("images") or []):
                mask[i, j] = True
                if isinstance(image, DeferredImage):
                    continue
                if tuple(image.shape) != (3, size, size):
                    raise DataError(f"image {j} of sample {sample['id']} has shape {tuple(image.shape)}, expected "
                                    f"(3, {size}, {size}); apply model.image_transform to every image")
                images[i, j, 0] = image
        return images, mask
