"""Benchmark scorers that reproduce the official ones, and the ``python -m vlmkit.metrics`` command.

- :func:`vlmkit.metrics.scienceqa.scienceqa_scores`: ScienceQA accuracy by category (lupantech/ScienceQA
  ``tools/evaluate_acc.py``).
- :func:`vlmkit.metrics.vqa.vqa_scores`: VQA accuracy (GT-Vision-Lab ``vqaEval.py``), with
  :func:`vlmkit.metrics.vqa.normalize_vqa_answer` for answer postprocessing.
- :func:`vlmkit.metrics.caption.caption_scores`: BLEU / METEOR / ROUGE-L / CIDEr (pycocoevalcap, needs Java).

See docs/metrics.md for the rules each scorer follows.
"""
from __future__ import annotations

from vlmkit.metrics.caption import caption_scores
from vlmkit.io import read_json
from vlmkit.metrics.scienceqa import SQA_CATEGORIES, load_scienceqa_results, scienceqa_scores
from vlmkit.metrics.vqa import normalize_vqa_answer, vqa_scores

__all__ = [
    "SQA_CATEGORIES",
    "caption_scores",
    "load_scienceqa_results",
    "normalize_vqa_answer",
    "read_json",
    "scienceqa_scores",
    "vqa_scores",
]
