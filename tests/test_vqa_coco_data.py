"""VQAv2 / COCO-caption builders, prompts, postprocessing and evaluators on generated data in the official layouts."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.transforms import ToTensor

from vlmkit.data.coco import COCOCaptionBuilder
from vlmkit.data.synthetic.coco_vqa import write_synthetic_coco, write_synthetic_vqav2
from vlmkit.data.vqav2 import VQAv2Builder
from vlmkit.errors import ConfigError, DataError
from vlmkit.registry import DATASETS, TASKS
from vlmkit.tasks.generative import postprocess_generation

from vlmkit.config import CONFIG_ROOT as CONFIGS  # noqa: E402
IMAGE_TAG, CHUNK_END = "<image>", "<|endofchunk|>"


def dataset_cfg(name: str, root: Path, **overrides):
    cfg = OmegaConf.load(CONFIGS / "datasets" / f"{name}.yaml")
    cfg.root = str(root)
    return OmegaConf.merge(cfg, overrides)


@pytest.fixture(scope="module")
def vqa_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_vqav2(tmp_path_factory.mktemp("vqav2"), n_train_images=12, n_val_images=6, seed=1)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_coco(tmp_path_factory.mktemp("coco"), n_train=12, n_val=4, n_test=5, seed=1)


def test_registered_builders_and_tasks() -> None:
    assert DATASETS.get("vqav2") is VQAv2Builder and DATASETS.get("coco_caption") is COCOCaptionBuilder
    assert TASKS.get("vqa").main_metric == "overall" and TASKS.get("caption").main_metric == "CIDEr"


def test_vqav2_training_samples(vqa_root: Path) -> None:
    ds = VQAv2Builder(dataset_cfg("vqav2", vqa_root)).build("train", ToTensor(), train=True)
    questions = json.loads((vqa_root / "v2_OpenEnded_mscoco_train2014_questions.json").read_text())["questions"]
    anns = {a["question_id"]: a for a in json.loads(
        (vqa_root / "v2_mscoco_train2014_annotations.json").read_text())["annotations"]}
    assert len(ds) == len(questions) == 36
    for i in (0, 7, 35):
        s, q = ds[i], questions[i]
        assert s["id"] == str(q["question_id"]) and s["question_id"] == q["question_id"]
        assert s["prompt"] == f"<image>Question:{q['question']} Short answer:"
        assert s["target"] == anns[q["question_id"]]["multiple_choice_answer"] + CHUNK_END
        assert s["prompt"].count(IMAGE_TAG) == len(s["images"]) == 1
        assert s["images"][0].shape == (3, 64, 64)


def test_vqav2_answer_choices_and_eval_samples(vqa_root: Path) -> None:
    cfg = dataset_cfg("vqav2", vqa_root, train_answer="first", max_samples=5)
    train = VQAv2Builder(cfg).build("train", None, train=True)
    rec = train.records[3]
    assert train[3]["target"] == rec["answers"][0] + CHUNK_END
    ev = VQAv2Builder(cfg).build("val", None, train=False)
    assert len(ev) == 5 and all(ev[i]["target"] == "" for i in range(5))
    # the subset is fixed by subset_seed and keeps file order
    again = VQAv2Builder(cfg).build("val", None, train=False)
    assert [r["id"] for r in ev.records] == [r["id"] for r in again.records]
    assert [int(r["id"]) for r in ev.records] == sorted(int(r["id"]) for r in ev.records)


def test_synthetic_answers_follow_the_image(vqa_root: Path) -> None:
    """The colour question's consensus answer is the colour of the drawn pixels."""
    from vlmkit.data.synthetic.coco_vqa import COLOURS

    ds = VQAv2Builder(dataset_cfg("vqav2", vqa_root)).build("train", None, train=True)
    checked = 0
    for i, rec in enumerate(ds.records):
        if rec["answer_type"] != "other":
            continue
        pixels = ds.image(i).getcolors(maxcolors=100000)
        drawn = {c for _, c in pixels}
        want = COLOURS[rec["multiple_choice_answer"]]
        assert any(sum(abs(a - b) for a, b in zip(c, want)) < 40 for c in drawn), rec
        checked += 1
    assert checked == 12


def test_coco_training_samples_all_and_first(coco_root: Path) -> None:
    karpathy = json.loads((coco_root / "dataset_coco.json").read_text())["images"]
    train_images = [im for im in karpathy if im["split"] in ("train", "restval")]
    assert {im["split"] for im in train_images} == {"train", "restval"}
    ds = COCOCaptionBuilder(dataset_cfg("coco_caption", coco_root)).build("train", ToTensor(), train=True)
    assert len(ds) == 5 * len(train_images)
    s = ds[6]
    im = train_images[1]
    assert s["id"] == f"{im['cocoid']}_1" and s["image_id"] == im["cocoid"]
    assert s["prompt"] == "<image>Output:" and s["target"] == im["sentences"][1]["raw"].strip() + CHUNK_END
    first = COCOCaptionBuilder(dataset_cfg("coco_caption", coco_root, train_captions="first")).build("train", None, True)
    assert len(first) == len(train_images) and first[1]["target"] == im["sentences"][0]["raw"] + CHUNK_END


def test_coco_eval_split_and_ground_truth(coco_root: Path) -> None:
    ds = COCOCaptionBuilder(dataset_cfg("coco_caption", coco_root)).build("test", None, train=False)
    assert len(ds) == 5 and all(s["target"] == "" and s["prompt"] == "<image>Output:" for s in (ds[0], ds[4]))
    ids = {r["image_id"] for r in ds.records}
    gt = ds.ground_truth({next(iter(ids))})
    assert len(gt["images"]) == 1 and len(gt["annotations"]) == 5  # restricted to the asked image
    assert {a["image_id"] for a in ds.ground_truth()["annotations"]} == ids  # the file also holds val images
    # without a configured file the Karpathy sentences are the ground truth
    no_file = COCOCaptionBuilder(dataset_cfg("coco_caption", coco_root, gt_files={"test": None})).build(
        "test", None, train=False)
    assert sorted(a["caption"] for a in no_file.ground_truth()["annotations"]) == sorted(
        a["caption"] for a in ds.ground_truth()["annotations"])


def test_template_without_image_tag_or_answer_is_rejected(vqa_root: Path) -> None:
    with pytest.raises(ConfigError, match="image_token"):
        VQAv2Builder(dataset_cfg("vqav2", vqa_root, prompt_template="Question:{question} Answer:{answer}")).build(
            "train", None, True)
    with pytest.raises(ConfigError, match="answer"):
        VQAv2Builder(dataset_cfg("vqav2", vqa_root, prompt_template="{image_token}Question:{question}")).build(
            "train", None, True)


def test_custom_tokens_come_from_config(vqa_root: Path) -> None:
    cfg = dataset_cfg("vqav2", vqa_root, image_token="<img>", end_of_chunk_token="</c>")
    s = VQAv2Builder(cfg).build("train", None, True)[0]
    assert s["prompt"].startswith("<img>Question:") and s["target"].endswith("</c>") and "<image>" not in s["prompt"]


def test_missing_files_name_path_and_remedy(tmp_path: Path, vqa_root: Path) -> None:
    with pytest.raises(DataError, match=r"questions file not found: .*v2_OpenEnded_mscoco_train2014.*synthetic-vqav2"):
        VQAv2Builder(dataset_cfg("vqav2", tmp_path)).build("train", None, True)
    with pytest.raises(DataError, match=r"Karpathy split file not found: .*dataset_coco.json.*synthetic-coco"):
        COCOCaptionBuilder(dataset_cfg("coco_caption", tmp_path)).build("train", None, True)
    ds = VQAv2Builder(dataset_cfg("vqav2", vqa_root, splits={"val": {"image_dir": "nowhere"}})).build("val", None, False)
    with pytest.raises(DataError, match=r"image not found: .*nowhere/COCO_val2014_"):
        ds[0]


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    root = write_synthetic_vqav2(tmp_path / "v", n_train_images=2, n_val_images=1)
    bad = root / "val2014" / "COCO_val2014_000000000003.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    ds = VQAv2Builder(dataset_cfg("vqav2", root)).build("val", None, False)
    with pytest.raises(DataError, match="cannot decode image .*COCO_val2014_000000000003.jpg"):
        ds[0]


def test_empty_and_unknown_splits(tmp_path: Path, coco_root: Path) -> None:
    root = write_synthetic_vqav2(tmp_path / "v", n_train_images=1, n_val_images=1)
    (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({"questions": []}))
    with pytest.raises(DataError, match="split 'val' is empty"):
        VQAv2Builder(dataset_cfg("vqav2", root)).build("val", None, False)
    with pytest.raises(DataError, match="not valid JSON"):
        (root / "v2_mscoco_train2014_annotations.json").write_text("{")
        VQAv2Builder(dataset_cfg("vqav2", root)).build("train", None, True)
    with pytest.raises(ConfigError, match="no split 'minival'"):
        COCOCaptionBuilder(dataset_cfg("coco_caption", coco_root)).build("minival", None, False)


@pytest.mark.parametrize("text, kwargs, expected", [
    ("yes<|endofchunk|>", {}, "yes<|endofchunk|>"),
    (" red Question: what", {"stop_words": ["Question", "Answer", "Short"], "split_at": ", "}, "red"),
    ("2 Short answer:3", {"stop_words": ["Question", "Answer", "Short"], "split_at": ", "}, "2"),
    ("blue, green Answer", {"stop_words": ["Question", "Answer", "Short"], "split_at": ", "}, "blue"),
    ("a,b", {"split_at": ", "}, "a,b"),
    (' "A dog on a table." Output: a cat', {"stop_words": ["Output"], "strip_quotes": True}, "A dog on a table."),
    ("\nA red circle\n", {"stop_words": ["Output"], "strip_quotes": True}, "A red circle"),
])
def test_postprocess(text: str, kwargs: dict, expected: str) -> None:
    assert postprocess_generation(text, **kwargs) == expected


def run_cfg(datasets: dict, task: str, **run):
    defaults = OmegaConf.load(CONFIGS / "run.yaml")
    return OmegaConf.create({"model": {"arch": "none"}, "datasets": datasets,
                             "run": OmegaConf.merge(defaults, {"task": task, **run})})


class FakeModel:
    image_transform = ToTensor()


def test_task_builds_train_and_fewshot_eval_datasets(vqa_root: Path) -> None:
    from vlmkit.data.fewshot import FewShotDataset

    cfg = run_cfg({"vqav2": dataset_cfg("vqav2", vqa_root, fewshot={"shots": 2})}, "vqa",
                  train_splits=["train"], val_splits=["val"], test_splits=[])
    task = TASKS.get("vqa")(cfg)
    sets = task.build_datasets(FakeModel())
    assert set(sets["vqav2"]) == {"train", "val"}
    assert isinstance(sets["vqav2"]["val"], FewShotDataset)
    s = sets["vqav2"]["val"][0]
    assert s["prompt"].count(IMAGE_TAG) == len(s["images"]) == 3 and isinstance(s["images"][0], torch.Tensor)
    only_val = task.build_datasets(FakeModel(), splits=["val"])
    assert set(only_val["vqav2"]) == {"val"}


@pytest.fixture
def fake_vqa_scorer(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Stand-in for vlmkit.metrics.vqa that records what the evaluator passes (the scorer has its own tests)."""
    calls: dict = {}

    def vqa_scores(annotations, results, questions=None):
        calls.update(annotations=annotations, results=results, questions=questions)
        return {"overall": 50.0, "perAnswerType": {"yes/no": 100.0, "other": 0.0}, "perQuestionType": {"is there a": 1}}

    module = types.ModuleType("vlmkit.metrics.vqa")
    module.vqa_scores = vqa_scores
    monkeypatch.setitem(sys.modules, "vlmkit.metrics.vqa", module)
    return calls


def test_vqa_evaluator_results_format_and_dedup(vqa_root: Path, fake_vqa_scorer: dict) -> None:
    from vlmkit.tasks.base import merge_predictions

    cfg = run_cfg({"vqav2": dataset_cfg("vqav2", vqa_root)}, "vqa")
    task = TASKS.get("vqa")(cfg)
    ds = task.build_datasets(FakeModel(), splits=["val"])["vqav2"]["val"]
    ev = task.build_evaluator("vqav2", "val", ds)
    ids = [ds.sample_id(i) for i in range(4)]
    ev.reset()
    ev.process(ids[:2], ["yes Question: is", "2, 3"])
    rank0 = ev.predictions()
    ev.reset()
    ev.process(ids[1:4], ["2, 3", "red", "no"])  # sampler padding: ids[1] seen on both ranks
    merged = merge_predictions([rank0, ev.predictions()])
    results = ev.format_predictions(merged)
    assert [r["question_id"] for r in results] == sorted(int(i) for i in ids)
    assert results[0] == {"question_id": int(ids[0]), "answer": "yes"} and results[1]["answer"] == "2"
    metrics = ev.evaluate(merged)
    assert metrics["overall"] == 50.0 and metrics["answer_type/yes/no"] == 100.0 and metrics["num_questions"] == 4
    assert [a["question_id"] for a in fake_vqa_scorer["annotations"]] == [int(i) for i in sorted(ids)]
    assert fake_vqa_scorer["results"] == results
    assert "overall" in task.format_table(metrics) and "50.00" in task.format_table(metrics)


def test_caption_evaluator_scores_evaluated_images(coco_root: Path) -> None:
    pytest.importorskip("pycocoevalcap")
    try:
        import vlmkit.metrics.caption  # noqa: F401
    except ImportError:
        pytest.skip("vlmkit.metrics.caption is not in this checkout yet")
    cfg = run_cfg({"coco_caption": dataset_cfg("coco_caption", coco_root)}, "caption")
    task = TASKS.get("caption")(cfg)
    ds = task.build_datasets(FakeModel(), splits=["test"])["coco_caption"]["test"]
    ev = task.build_evaluator("coco_caption", "test", ds)
    ev.reset()
    ids = [ds.sample_id(i) for i in range(len(ds))]
    ev.process(ids, ['"' + ds.records[i]["captions"][0] + '" Output: junk' for i in range(len(ds))])
    results = ev.format_predictions(ev.predictions())
    assert results[0] == {"image_id": ds.records[0]["image_id"], "caption": ds.records[0]["captions"][0]}
    metrics = ev.evaluate(ev.predictions())
    assert metrics["num_images"] == len(ds) and metrics["CIDEr"] > 1.0 and metrics["Bleu_1"] > 0.9
