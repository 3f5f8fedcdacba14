"""Per-sample records of an evaluation: ``<output_dir>/samples/<dataset>_<split>.jsonl``, one JSON object per item.

Each line: ``id``, ``index`` (position in the dataset), ``prompt`` (the text the model was given, ``<image>`` where an
image goes), ``demo_ids`` (few-shot), ``generation`` (raw), ``prediction`` (parsed), ``reference``, ``score`` (the
official per-item score: VQA accuracy 0..1, ScienceQA 1/0, per-image CIDEr; null where none), ``unparsed``, and the
task's ``category`` labels. Rank 0 appends every batch's lines (gathered from all ranks, duplicates of the sampler's
padding dropped) in one write, so a killed evaluation keeps what it finished; at the end the file is rewritten atomically
in dataset order with the scores that need the whole split (CIDEr), so it is the same at any world size.

``<dataset>_<split>.meta.json`` beside it holds the evaluation's fingerprint (hash of the resolved config and of the
checkpoint file), the item count and ``complete``; ``vlmkit evaluate --resume`` continues only a record of the same
fingerprint and evaluates the items not yet recorded.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vlmkit.errors import DataError
from vlmkit.io import file_sha256, write_json_atomic, write_text_atomic

#: Config keys that do not change what an evaluation produces (excluded from its fingerprint).
NOT_FINGERPRINTED = ("output_dir", "device", "num_workers", "validate_images", "tensorboard", "log_every", "hooks")


def fingerprint(cfg: Mapping[str, Any], checkpoint: str | None) -> dict[str, Any]:
    """What makes two evaluations the same: the resolved config (but paths and bookkeeping) and the checkpoint bytes."""
    from vlmkit.config import to_dict

    plain = to_dict(cfg) if not isinstance(cfg, dict) else dict(cfg)
    plain["run"] = {k: v for k, v in plain.get("run", {}).items() if k not in NOT_FINGERPRINTED}
    config_hash = hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()
    return {"config_sha256": config_hash, "checkpoint": str(checkpoint) if checkpoint else None,
            "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None}


class SampleLog:
    """The record file of one (dataset, split) evaluation; only rank 0 writes it."""

    def __init__(self, directory: Path, key: str, identity: Mapping[str, Any], total: int,
                 subset: Mapping[str, Any] | None = None) -> None:
        self.path = directory / f"{key}.jsonl"
        self.meta_path = directory / f"{key}.meta.json"
        self.identity = dict(identity)
        self.total = total
        self.subset = dict(subset) if subset else None
        self.rows: dict[str, dict[str, Any]] = {}

    # --- resume
    def load_for_resume(self) -> dict[str, dict[str, Any]]:
        """The rows already recorded by an evaluation with the same fingerprint (refused when it differs)."""
        if not self.meta_path.is_file():
            return {}
        try:
            meta = json.loads(self.meta_path.read_text())
        except ValueError:
            meta = {}
        theirs = {k: meta.get(k) for k in self.identity}
        if theirs != self.identity:
            changed = [k for k in self.identity if theirs.get(k) != self.identity[k]]
            raise DataError(f"--resume: {self.path} was written by another evaluation ({', '.join(changed)} "
                            "differ: another model, config or checkpoint); evaluate into a new --output-dir, or "
                            "drop --resume to start this one afresh")
        rows: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # the line a kill cut short
                rows.setdefault(str(row["id"]), row)
        self.rows = rows
        return rows

    # --- writing
    def start(self, resume: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resume:
            self.rows = {}
            write_text_atomic(self.path, "")
        self._write_meta(complete=False)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        new = [dict(r) for r in rows if str(r["id"]) not in self.rows]
        for row in new:
            self.rows[str(row["id"])] = row
        if new:
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, text.encode("utf-8"))  # one write per batch: a kill keeps whole lines
            finally:
                os.close(fd)

    def finish(self, scores: Mapping[str, float] | None = None) -> None:
        """Rewrite in dataset order with the scores known only now (e.g. per-image CIDEr); mark complete."""
        rows = sorted(self.rows.values(), key=lambda r: r["index"])
        for row in rows:
            if scores and row["id"] in scores:
                row["score"] = float(scores[row["id"]])
        write_text_atomic(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        self._write_meta(complete=len(rows) == self.total)

    def _write_meta(self, complete: bool) -> None:
        write_json_atomic(self.meta_path, {**self.identity, "items": self.total, "recorded": len(self.rows),
                                           "complete": complete, "subset": self.subset})
