"""LaVIN's collator: samples → the token layout of vlmkit/models/lavin.py's docstring (modality column, BOS, image slot,
prompt, target, EOS), padded on the right for training and on the left of the text for generation."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from vlmkit.errors import DataError
from vlmkit.models.llama import PAD_ID

# The reference's fixed prompt pieces that announce the image slot (or its absence).
IMAGE_PREFIX = "Image: "
NO_IMAGE_PREFIX = "Image: N/A"
IGNORE_INDEX = -100  # label of positions that are not scored
IMAGE_MARKER = "<image>"  # how the image tokens are shown in per-sample records


class LaVINCollator:
    """Samples → batch. Picklable: holds only the tokenizer and numbers.

    Batch: ``input_ids`` (B, L) long (pad id in the modality/image/pad columns), ``attention_mask`` (B, L) long,
    ``labels`` (B, L) long (train only; target tokens + EOS, else -100), ``images`` (B, 3, H, W) (zeros without an
    image), ``has_image`` (B,) bool, ``image_start`` (B,) long (first image column, -1 without), ``ids`` list[str].
    """

    def __init__(self, tokenizer: Any, n_image_tokens: int, image_size: int, max_seq_len: int,
                 train: bool) -> None:
        self.tokenizer = tokenizer
        self.n_image_tokens = n_image_tokens
        self.image_size = image_size
        self.max_seq_len = max_seq_len
        self.train = train
        self.image_prefix = tokenizer.encode(IMAGE_PREFIX, add_special_tokens=False)
        self.no_image_prefix = tokenizer.encode(NO_IMAGE_PREFIX, add_special_tokens=False)

    def _row(self, sample: Mapping[str, Any]) -> tuple[list[int], list[int], torch.Tensor | None, int]:
        images = list(sample.get("images") or [])
        if len(images) > 1:
            raise DataError(f"sample {sample.get('id')!r} has {len(images)} images; LaVIN takes at most one per sample")
        image = images[0] if images else None
        if image is not None and tuple(image.shape) != (3, self.image_size, self.image_size):
            raise DataError(f"sample {sample.get('id')!r}: image of shape {tuple(image.shape)}, expected "
                            f"(3, {self.image_size}, {self.image_size}); apply model.image_transform to images")
        tok = self.tokenizer
        head = [PAD_ID, tok.bos_token_id]  # modality column, then BOS
        if image is not None:
            image_start = len(head) + len(self.image_prefix)
            head += self.image_prefix + [PAD_ID] * self.n_image_tokens
        else:
            image_start = -1
            head += self.no_image_prefix
        ids = head + tok.encode(sample["prompt"], add_special_tokens=False)
        labels = [IGNORE_INDEX] * len(ids)
        if self.train:
            target = tok.encode(sample.get("target") or "", add_special_tokens=False) + [tok.eos_token_id]
            ids, labels = ids + target, labels + target
        return ids[: self.max_seq_len], labels[: self.max_seq_len], image, image_start

    def __call__(self, samples: list[Mapping[str, Any]]) -> dict[str, Any]:
        rows = [self._row(s) for s in samples]
        L = max(len(r[0]) for r in rows)
        input_ids, labels, mask, starts = [], [], [], []
        for ids, lab, _, start in rows:
            n_pad = L - len(ids)
            if self.train:  # right padding
                input_ids.append(ids + [PAD_ID] * n_pad)
                labels.append(lab + [IGNORE_INDEX] * n_pad)
                mask.append([1] * len(ids) + [0] * n_pad)
            else:  # left padding of the text, the modality token stays in column 0
                input_ids.append(ids[:1] + [PAD_ID] * n_pad + ids[1:])
                mask.append([1] + [0] * n_pad + [1] * (len(ids) - 1))
                start = start + n_pad if start >= 0 else start
            starts.append(start)
        zeros = torch.zeros(3, self.image_size, self.image_size)
        batch = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
            "images": torch.stack([img.float() if img is not None else zeros for _, _, img, _ in rows]),
            "has_image": torch.tensor([img is not None for _, _, img, _ in rows], dtype=torch.bool),
            "image_start": torch.tensor(starts, dtype=torch.long),
            "ids": [str(s.get("id")) for s in samples],
        }
        if not self.train:  # the text the model was given, for the per-sample records (vlmkit/tasks/samples.py)
            batch["prompts"] = [(IMAGE_PREFIX + IMAGE_MARKER if img is not None else NO_IMAGE_PREFIX) + s["prompt"]
                                for s, (_, _, img, _) in zip(samples, rows)]
        if self.train:
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        return batch
