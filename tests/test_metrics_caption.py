"""Caption scorer: equal to pycocoevalcap's own COCOEvalCap run on the same files; clean CLI stdout; bad inputs.

METEOR loads its paraphrase table for ~10 s per run, so the two full runs (the CLI, which calls caption_scores, and
COCOEvalCap in process) happen once per module and side by side; the in-process checks stub METEOR out.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vlmkit.errors import DataError, VlmkitError
from vlmkit.metrics import caption as caption_module
from vlmkit.metrics.caption import CAPTION_METRICS, SPICE_CORENLP_JAR, caption_scores

needs_java = pytest.mark.skipif(shutil.which("java") is None,
                                reason="caption metrics run Java (PTBTokenizer, METEOR); no `java` on PATH")

GROUND_TRUTH = {
    "images": [{"id": i} for i in (11, 12, 13, 14, 15, 16)],
    "annotations": [
        {"image_id": 11, "id": 1, "caption": "A brown dog runs across the green grass."},
        {"image_id": 11, "id": 2, "caption": "a dog running on a lawn"},
        {"image_id": 11, "id": 3, "caption": "The dog is playing outside, in the park!"},
        {"image_id": 12, "id": 4, "caption": "Two cats sleeping on a red sofa."},
        {"image_id": 12, "id": 5, "caption": "two cats are asleep on the couch"},
        {"image_id": 13, "id": 6, "caption": "A man riding a bicycle down a city street."},
        {"image_id": 13, "id": 7, "caption": "a person on a bike in traffic"},
        {"image_id": 13, "id": 8, "caption": "Man cycling, past some cars."},
        {"image_id": 14, "id": 9, "caption": "A plate of pasta with tomato sauce."},
        {"image_id": 14, "id": 10, "caption": "spaghetti on a white plate"},
        {"image_id": 15, "id": 11, "caption": "A red train at the station."},
        {"image_id": 15, "id": 12, "caption": "a train stopped next to a platform"},
        {"image_id": 16, "id": 13, "caption": "Not among the results: this image is not scored."},
    ],
}
RESULTS = [  # not in image order, one caption equal to a reference, one unrelated
    {"image_id": 13, "caption": "a man rides a bike on a street"},
    {"image_id": 11, "caption": "a dog running on a lawn"},
    {"image_id": 15, "caption": "a train at a station"},
    {"image_id": 12, "caption": "\"two cats on a sofa.\""},
    {"image_id": 14, "caption": "a blue car parked"},
]


class _NoSpice:
    """COCOEvalCap always runs SPICE, which downloads Stanford CoreNLP; there is no network here."""

    def compute_score(self, gts: dict, res: dict) -> tuple[float, list[float]]:
        return 0.0, [0.0] * len(gts)

    def method(self) -> str:
        return "SPICE"


def official_cocoevalcap(gt_path: Path, results_path: Path) -> dict[str, float]:
    from pycocoevalcap import eval as cocoeval
    from pycocotools.coco import COCO

    coco = COCO(str(gt_path))
    coco_results = coco.loadRes(str(results_path))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cocoeval, "Spice", _NoSpice)
        evaluator = cocoeval.COCOEvalCap(coco, coco_results)
        evaluator.params["image_id"] = coco_results.getImgIds()  # score the results' images
        evaluator.evaluate()
    return {k: v for k, v in evaluator.eval.items() if k != "SPICE"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The CLI (which calls caption_scores) in a subprocess, alongside COCOEvalCap in process."""
    root = tmp_path_factory.mktemp("captions")
    gt_path, results_path = root / "gt.json", root / "results.json"
    gt_path.write_text(json.dumps(GROUND_TRUTH))
    results_path.write_text(json.dumps(RESULTS))
    cli = subprocess.Popen([sys.executable, "-m", "vlmkit.metrics", "caption", "--annotations", str(gt_path),
                            "--results", str(results_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        official = official_cocoevalcap(gt_path, results_path)
        stdout, stderr = cli.communicate(timeout=300)
    finally:
        cli.kill()
    return {"official": official, "cli": (cli.returncode, stdout, stderr)}


@needs_java
def test_cli_equals_cocoevalcap_and_prints_only_the_json(runs: dict):
    returncode, stdout, stderr = runs["cli"]
    assert returncode == 0, stderr
    ours = json.loads(stdout)  # the whole stdout is one JSON object
    assert list(ours) == list(CAPTION_METRICS)
    assert ours == runs["official"]  # every key, exactly: same pipeline, same Java tools
    assert 0 < ours["Bleu_4"] < ours["Bleu_1"] <= 1 and ours["CIDEr"] > 0


class _FixedMeteor:
    """Stands in for METEOR (10 s of Java start-up) where the in-process run checks everything else."""

    def compute_score(self, gts: dict, res: dict) -> tuple[float, list[float]]:
        return 0.25, [0.25] * len(gts)


@needs_java
def test_in_process(runs: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    from pycocoevalcap.meteor import meteor

    monkeypatch.setattr(meteor, "Meteor", _FixedMeteor)
    results = copy.deepcopy(RESULTS)
    ours = caption_scores(GROUND_TRUTH, results)
    assert results == RESULTS  # loadRes numbers annotations in place; the caller's list is left alone
    assert capsys.readouterr().out == ""  # pycocotools' and BLEU's progress prints are kept off stdout
    assert ours["METEOR"] == 0.25
    assert {k: v for k, v in ours.items() if k != "METEOR"} == \
        {k: v for k, v in runs["official"].items() if k != "METEOR"}


def test_bad_inputs(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(DataError, match="image_id 99 in my.json is not an image"):
        caption_scores(GROUND_TRUTH, [{"image_id": 99, "caption": "x"}], results_source="my.json")
    with pytest.raises(DataError, match="must be a list"):
        caption_scores(GROUND_TRUTH, {"image_id": 11, "caption": "x"})
    with pytest.raises(DataError, match="deduplicate"):
        caption_scores(GROUND_TRUTH, [{"image_id": 11, "caption": "x"}, {"image_id": 11, "caption": "y"}])
    with pytest.raises(DataError, match="caption string"):
        caption_scores(GROUND_TRUTH, [{"image_id": 11, "caption": None}])
    with pytest.raises(DataError, match="no caption in"):
        caption_scores({"images": [{"id": 1}], "annotations": []}, [{"image_id": 1, "caption": "x"}])
    with pytest.raises(DataError, match="'images' and 'annotations'"):
        caption_scores({"annotations": []}, [{"image_id": 1, "caption": "x"}])
    monkeypatch.setattr(caption_module.shutil, "which", lambda name: None)
    with pytest.raises(VlmkitError, match="apt-get install default-jre-headless"):
        caption_scores(GROUND_TRUTH, RESULTS)


@needs_java
def test_spice_without_corenlp_fails_before_running():
    from pycocoevalcap.spice import spice as spice_module

    if (Path(spice_module.__file__).parent / SPICE_CORENLP_JAR).exists():
        pytest.skip("Stanford CoreNLP is installed here, so SPICE would run")
    with pytest.raises(VlmkitError, match="SPICE needs Stanford CoreNLP"):
        caption_scores(GROUND_TRUTH, RESULTS, spice=True)


def test_cli_bad_inputs(tmp_path: Path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(GROUND_TRUTH))
    (tmp_path / "broken.json").write_text('[{"image_id": ')
    (tmp_path / "unknown.json").write_text(json.dumps([{"image_id": 99, "caption": "x"}]))
    for name, message in [("missing.json", "not found"), ("broken.json", "not valid JSON"),
                          ("unknown.json", "image_id 99")]:
        done = subprocess.run([sys.executable, "-m", "vlmkit.metrics", "caption", "--annotations", str(gt),
                               "--results", str(tmp_path / name)], capture_output=True, text=True, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and done.stdout == ""
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    # no java on PATH
    (tmp_path / "ok.json").write_text(json.dumps(RESULTS[:1]))
    done = subprocess.run([sys.executable, "-m", "vlmkit.metrics", "caption", "--annotations", str(gt),
                           "--results", str(tmp_path / "ok.json")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": str(tmp_path)})
    assert done.returncode == 2 and "default-jre-headless" in done.stderr and len(done.stderr.splitlines()) == 1
