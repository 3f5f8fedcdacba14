"""Caption scores with pycocoevalcap, computed the way its ``COCOEvalCap.evaluate`` computes them.

The ground truth and the results go through pycocotools (``COCO`` + ``loadRes``), the images scored are those of the
results (as open_flamingo sets ``params["image_id"]``), both sides are tokenised by the Stanford PTBTokenizer (Java),
then BLEU-1..4, METEOR (Java), ROUGE-L and CIDEr (and SPICE on request) score them. Values are pycocoevalcap's raw
ones (CIDEr is about 0..1.5, the others 0..1); papers' tables print them ×100.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmkit.errors import DataError, VlmkitError
from vlmkit.io import read_json

logger = logging.getLogger(__name__)

#: The metric names, in COCOEvalCap's order; SPICE follows when asked for.
CAPTION_METRICS: tuple[str, ...] = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
BLEU_MAX_N = 4

JAVA_HOW = "install a Java runtime (e.g. `apt-get install default-jre-headless`) and make sure `java` is on PATH"
GT_HOW = 'use COCO-format ground truth {"images": [{"id"}], "annotations": [{"image_id", "id", "caption"}]}'
RESULTS_HOW = 'write a JSON list [{"image_id": <id>, "caption": <str>}], one per image'
#: SPICE needs Stanford CoreNLP 3.6.0, which pycocoevalcap downloads at first use; vlmkit never downloads at run time.
SPICE_CORENLP_JAR = Path("lib") / "stanford-corenlp-3.6.0.jar"


def caption_scores(ground_truth: dict, results: list[dict], spice: bool = False, *, per_image: dict | None = None,
                   ground_truth_source: str = "ground truth", results_source: str = "results") -> dict[str, float]:
    """pycocoevalcap scores of ``results`` against COCO-format ``ground_truth``.

    Args:
        ground_truth: ``{"images": [{"id"}], "annotations": [{"image_id", "id", "caption"}]}``.
        results: ``[{"image_id", "caption"}]``, one per image; only these images are scored.
        spice: also compute SPICE (needs Stanford CoreNLP 3.6.0 installed into pycocoevalcap).
        per_image: a dict that receives ``{image_id: CIDEr}`` as pycocoevalcap computes it per image (their mean is
            the corpus CIDEr).
        *_source: where the inputs came from (file paths), for error messages.

    Returns:
        ``{"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"[, "SPICE"]: float}``, raw (not ×100).
    """
    _check_ground_truth(ground_truth, ground_truth_source)
    _check_results(results, ground_truth, results_source, ground_truth_source)
    if shutil.which("java") is None:
        raise VlmkitError(f"caption metrics need Java (the PTB tokenizer and METEOR run on it), but `java` was not "
                          f"found; {JAVA_HOW}")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    spice_scorer = _spice_scorer() if spice else None  # fails fast, before any Java process starts
    # Meteor() starts its Java process at once; built before tokenising, its ~10 s start-up overlaps the tokenizer.
    scorers: list[tuple[Any, str | list[str]]] = [
        (Bleu(BLEU_MAX_N), list(CAPTION_METRICS[:BLEU_MAX_N])),
        (Meteor(), "METEOR"),
        (Rouge(), "ROUGE_L"),
        (Cider(), "CIDEr"),
    ]
    if spice_scorer is not None:
        scorers.append((spice_scorer, "SPICE"))

    chatter = io.StringIO()  # pycocotools and the BLEU scorer print progress; stdout must stay clean for the CLI
    with contextlib.redirect_stdout(chatter):
        gts, res = _tokenized_pairs(ground_truth, results)
        scores: dict[str, Any] = {}
        for scorer, names in scorers:
            score, per_item = scorer.compute_score(gts, res)
            if isinstance(names, list):
                scores.update({name: float(s) for name, s in zip(names, score)})
            else:
                scores[names] = float(score)
            if names == "CIDEr" and per_image is not None:  # the scorer's per-image values, in gts order
                per_image.update({image_id: float(v) for image_id, v in zip(gts, per_item)})
    if chatter.getvalue():
        logger.debug("pycocoevalcap output:\n%s", chatter.getvalue())
    return scores


def _tokenized_pairs(ground_truth: Mapping[str, Any], results: list[Mapping[str, Any]]) -> tuple[dict, dict]:
    """Image id → PTB-tokenised references, and → the tokenised result, for the images in ``results``."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    from pycocotools.coco import COCO

    coco = COCO()
    # pycocotools only reads the ground truth (loadRes copies the images list), so a shallow copy is enough.
    coco.dataset = {"images": list(ground_truth["images"]), "annotations": list(ground_truth["annotations"])}
    coco.createIndex()
    # loadRes numbers the result annotations in place; copy so the caller's list stays as it was.
    coco_results = coco.loadRes(copy.deepcopy(results))
    image_ids = coco_results.getImgIds()
    gts = {i: coco.imgToAnns[i] for i in image_ids}
    res = {i: coco_results.imgToAnns[i] for i in image_ids}
    tokenizer = PTBTokenizer()
    try:
        return tokenizer.tokenize(gts), tokenizer.tokenize(res)
    except PermissionError as e:  # it writes its input file next to its jar, inside the installed package
        raise VlmkitError(f"pycocoevalcap's PTB tokenizer could not write its temporary file ({e}); make "
                          f"the pycocoevalcap/tokenizer folder writable or install pycocoevalcap in a "
                          f"writable environment") from e


def _spice_scorer() -> Any:
    from pycocoevalcap.spice import spice as spice_module

    jar = Path(spice_module.__file__).parent / SPICE_CORENLP_JAR
    if not jar.exists():
        raise VlmkitError(f"SPICE needs Stanford CoreNLP 3.6.0 at {jar}, which is not installed; on a machine with "
                          f"internet run `python -c 'from pycocoevalcap.spice.get_stanford_models import "
                          f"get_stanford_models; get_stanford_models()'`, or drop --spice")
    return spice_module.Spice()


def _check_ground_truth(ground_truth: Any, source: str) -> None:
    if not isinstance(ground_truth, Mapping) or not isinstance(ground_truth.get("images"), list) \
            or not isinstance(ground_truth.get("annotations"), list):
        raise DataError(f"caption ground truth in {source} must have 'images' and 'annotations' lists; {GT_HOW}")
    for i, img in enumerate(ground_truth["images"]):
        if not isinstance(img, Mapping) or "id" not in img:
            raise DataError(f"image #{i} in {source} has no 'id'; {GT_HOW}")
    for i, ann in enumerate(ground_truth["annotations"]):
        if not isinstance(ann, Mapping) or not {"image_id", "id", "caption"} <= ann.keys() \
                or not isinstance(ann["caption"], str):
            raise DataError(f"annotation #{i} in {source} needs image_id, id and a caption string; {GT_HOW}")


def _check_results(results: Any, ground_truth: Mapping[str, Any], source: str, gt_source: str) -> None:
    if not isinstance(results, list):
        raise DataError(f"caption results in {source} must be a list, got {type(results).__name__}; {RESULTS_HOW}")
    if not results:
        raise DataError(f"no results to score in {source}; {RESULTS_HOW}")
    image_ids = {img["id"] for img in ground_truth["images"]}
    captioned = {ann["image_id"] for ann in ground_truth["annotations"]}
    seen: set[Any] = set()
    for i, r in enumerate(results):
        if not isinstance(r, Mapping) or "image_id" not in r or not isinstance(r.get("caption"), str):
            raise DataError(f"result #{i} in {source} must be an object with image_id and a caption string, "
                            f"got {r!r}")
        image_id = r["image_id"]
        if image_id not in image_ids:
            raise DataError(f"image_id {image_id!r} in {source} is not an image of {gt_source}; score the results "
                            f"against the ground truth of the split they were produced from")
        if image_id not in captioned:
            raise DataError(f"image_id {image_id!r} in {source} has no caption in {gt_source}; {GT_HOW}")
        if image_id in seen:
            raise DataError(f"image_id {image_id!r} appears more than once in {source}; deduplicate the results "
                            f"(one caption per image)")
        seen.add(image_id)


def load_caption_ground_truth(path: str | Path) -> dict:
    """COCO-format caption ground truth (e.g. captions_val2014.json or a Karpathy-split conversion)."""
    return read_json(path, "caption ground-truth file", GT_HOW)


def load_caption_results(path: str | Path) -> list[dict]:
    """A results file ``[{image_id, caption}]`` (checked by :func:`caption_scores`)."""
    return read_json(path, "caption results file", RESULTS_HOW)
