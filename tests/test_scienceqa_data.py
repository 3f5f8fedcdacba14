"""ScienceQA builder (official layout), the scienceqa task and its evaluator."""
import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from vlmkit.data.scienceqa import ScienceQADataset
from vlmkit.data.synthetic import write_synthetic_scienceqa
from vlmkit.errors import ConfigError, DataError
from vlmkit.registry import DATASETS, TASKS
from vlmkit.tasks.scienceqa import UNPARSED, ScienceQAEvaluator, format_table


@pytest.fixture(scope="module")
def sqa_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sqa")
    write_synthetic_scienceqa(root, n_train=20, n_val=10, n_test=10, seed=1, image_size=16)
    return root


@pytest.fixture()
def sqa_copy(sqa_root, tmp_path):
    return shutil.copytree(sqa_root, tmp_path / "sqa")


def test_builder_samples(sqa_root):
    problems = json.loads((sqa_root / "problems.json").read_text())
    splits = json.loads((sqa_root / "pid_splits.json").read_text())
    train = ScienceQADataset(sqa_root, "train", train=True)
    test = ScienceQADataset(sqa_root, "test", image_transform=lambda im: torch.full((3, 4, 4), 7.0))
    assert [train[i]["id"] for i in range(len(train))] == splits["train"]
    for ds in (train, test):
        for sample in (ds[i] for i in range(len(ds))):
            problem = problems[sample["id"]]
            assert sample["answer"] == problem["answer"] and sample["n_choices"] == len(problem["choices"])
            assert sample["prompt"].startswith(f"Question: {problem['question']}\n")
            assert sample["prompt"].endswith("\nResponse:")
            assert len(sample["images"]) == (1 if problem["image"] else 0)
            if ds is train:
                assert sample["target"].startswith(f"The answer is {'ABCDE'[problem['answer']]}. BECAUSE: ")
                if sample["images"]:
                    img = sample["images"][0]  # default transform: float CHW in [0, 1]
                    assert img.shape == (3, 16, 16) and 0.0 <= img.min() and img.max() <= 1.0
            else:
                assert sample["target"] == ""
                assert all(torch.equal(im, torch.full((3, 4, 4), 7.0)) for im in sample["images"])


def test_composite_splits_find_images_and_captions_join_context(sqa_root):
    ds = ScienceQADataset(sqa_root, "trainval", use_caption=True)
    captions = json.loads((sqa_root / "captions.json").read_text())["captions"]
    with_image = [i for i, q in enumerate(ds.qids) if ds.has_image(q)]
    assert {ds.problems[ds.qids[i]]["split"] for i in with_image} == {"train", "val"}
    for i in with_image:
        sample = ds[i]
        assert len(sample["images"]) == 1
        assert f"\nContext: {captions[sample['id']]}\n" in sample["prompt"]


def test_defaults_yaml_and_registered_builder(sqa_root, monkeypatch):
    from vlmkit.config import defaults_for

    monkeypatch.setenv("VLMKIT_SQA_ROOT", str(sqa_root))
    ds_cfg = OmegaConf.merge(defaults_for("datasets", "scienceqa"), {})
    OmegaConf.resolve(ds_cfg)
    assert ds_cfg.root == str(sqa_root)  # the root comes from the environment when the YAML gives none
    assert ds_cfg.prompt_format == "QCM-ALE" and ds_cfg.use_caption is False and ds_cfg.caption_file is None
    ds = DATASETS.build_named("scienceqa", ds_cfg).build("val")
    assert isinstance(ds, ScienceQADataset) and len(ds) == 10 and ds[0]["target"] == ""


def test_missing_files_name_path_and_remedy(sqa_copy):
    (sqa_copy / "captions.json").unlink()
    ScienceQADataset(sqa_copy, "train")  # captions are optional without use_caption
    with pytest.raises(DataError, match=r"captions.json not found: .*captions\.json"):
        ScienceQADataset(sqa_copy, "train", use_caption=True)
    (sqa_copy / "problems.json").unlink()
    with pytest.raises(DataError, match=r"ScienceQA problems.json not found: .*problems\.json .*vlmkit prepare-data"):
        ScienceQADataset(sqa_copy, "train")
    shutil.copy(sqa_copy / "pid_splits.json", sqa_copy / "problems.json")
    (sqa_copy / "pid_splits.json").unlink()
    with pytest.raises(DataError, match=r"pid_splits.json not found: .*pid_splits\.json"):
        ScienceQADataset(sqa_copy, "train")


def test_corrupt_and_missing_images(sqa_copy):
    ds = ScienceQADataset(sqa_copy, "train")
    index = next(i for i, q in enumerate(ds.qids) if ds.has_image(q))
    qid = ds.qids[index]
    path = sqa_copy / "images" / "train" / qid / "image.png"
    path.write_bytes(path.read_bytes()[:40])  # truncated PNG
    with pytest.raises(DataError, match=rf"cannot decode image .*{qid}.*re-extract images/train/{qid}/image.png"):
        ds[index]
    path.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=rf"images/train/{qid}/image.png"):
        ds[index]
    path.unlink()  # a missing image is found when the dataset is built, not hours into a run
    with pytest.raises(DataError, match=rf"images of split 'train' are missing.*images/train/{qid}/image.png"):
        ScienceQADataset(sqa_copy, "train")


def test_split_errors(sqa_copy):
    splits_path = sqa_copy / "pid_splits.json"
    splits = json.loads(splits_path.read_text())
    splits["empty"] = []
    splits["stale"] = ["999999"]
    splits_path.write_text(json.dumps(splits))
    with pytest.raises(DataError, match=r"split 'empty' of .*pid_splits.json is empty"):
        ScienceQADataset(sqa_copy, "empty")
    with pytest.raises(DataError, match=r"ids of split 'stale' .* not in .*problems.json \(e.g. '999999'\)"):
        ScienceQADataset(sqa_copy, "stale")
    with pytest.raises(DataError, match=r"split 'tset' is not in .*\(it has: train, val, test"):
        ScienceQADataset(sqa_copy, "tset")
    (sqa_copy / "problems.json").write_text("{not json")
    with pytest.raises(DataError, match=r"ScienceQA problems.json is not valid JSON"):
        ScienceQADataset(sqa_copy, "train")


def test_bad_prompt_format_is_config_error(sqa_root):
    with pytest.raises(ConfigError, match="prompt_format 'QCM-XYZ'"):
        ScienceQADataset(sqa_root, "train", prompt_format="QCM-XYZ")


class _Model:
    @staticmethod
    def image_transform(image):
        return torch.zeros(3, 2, 2)


def test_task_builds_train_and_eval_datasets(sqa_root):
    cfg = OmegaConf.create({
        "datasets": {"scienceqa": {"root": str(sqa_root), "prompt_format": "QCM-A", "use_caption": False,
                                   "caption_file": None}},
        "run": {"task": "scienceqa", "train_splits": ["train"], "val_splits": ["minival"], "test_splits": ["test"]},
    })
    task = TASKS.get("scienceqa").from_config(cfg)
    assert task.main_metric == "Average"
    datasets = task.build_datasets(_Model())
    assert set(datasets["scienceqa"]) == {"train", "minival", "test"}
    train, test = datasets["scienceqa"]["train"], datasets["scienceqa"]["test"]
    assert train[0]["target"].startswith("The answer is") and test[0]["target"] == ""
    image_sample = next(test[i] for i in range(len(test)) if test[i]["images"])
    assert torch.equal(image_sample["images"][0], torch.zeros(3, 2, 2))
    assert isinstance(task.build_evaluator("scienceqa", "test", test), ScienceQAEvaluator)
    # Built through the registry, a partial section takes the defaults (caption_file: null) and a typo is an error.
    partial = {"root": str(sqa_root), "prompt_format": "QCM-A", "use_caption": False}
    assert len(DATASETS.build_named("scienceqa", partial, "datasets.scienceqa").build("val")) == 10
    with pytest.raises(ConfigError, match="unknown config key 'datasets.scienceqa.caption_fle'.*did you mean "
                                          "'datasets.scienceqa.caption_file'"):
        DATASETS.build_named("scienceqa", {**partial, "caption_fle": None}, "datasets.scienceqa")


def _evaluator_and_outputs(sqa_root):
    ds = ScienceQADataset(sqa_root, "test")
    evaluator = ScienceQAEvaluator(ds.problems)
    evaluator.reset()
    ids = list(ds.qids)
    outputs = []
    for i, qid in enumerate(ids):
        answer = ds.problems[qid]["answer"]
        if i == 0:
            outputs.append("I am not sure.")  # unparsed
        elif i == 1:
            outputs.append("The answer is E.")  # out of range for <= 4 choices: unparsed
        elif i % 2 == 0:
            outputs.append(f"The answer is {'ABCDE'[answer]}. BECAUSE: yes")
        else:
            outputs.append(f"The answer is {'ABCDE'[(answer + 1) % len(ds.problems[qid]['choices'])]}.")
    evaluator.process(ids[:5], outputs[:5])
    evaluator.process(ids[5:], outputs[5:])
    return ds, evaluator, ids


def test_evaluator_records_unparsed_as_minus_one_and_official_format(sqa_root):
    ds, evaluator, ids = _evaluator_and_outputs(sqa_root)
    preds = evaluator.predictions()
    assert [preds[q]["pred"] for q in ids[:2]] == [UNPARSED, UNPARSED]
    formatted = evaluator.format_predictions(preds)
    assert set(formatted["results"]) == set(ids)
    assert all(isinstance(v, int) for v in formatted["results"].values())
    assert formatted["outputs"][ids[0]] == "I am not sure."
    # the official scorer compares int(results[qid]) with the answer: -1 is wrong, never a lucky guess
    official_correct = sum(int(formatted["results"][q]) == ds.problems[q]["answer"] for q in ids)
    assert official_correct == sum(1 for i in range(2, len(ids)) if i % 2 == 0)
    assert json.loads(json.dumps(formatted)) == formatted


def test_evaluator_scores(sqa_root):
    pytest.importorskip("vlmkit.metrics.scienceqa", reason="the ScienceQA scorer module is not installed")
    ds, evaluator, ids = _evaluator_and_outputs(sqa_root)
    metrics = evaluator.evaluate(evaluator.predictions())
    assert metrics["unparsed"] == 2 and metrics["n"] == len(ids)
    expected = 100.0 * sum(1 for i in range(2, len(ids)) if i % 2 == 0) / len(ids)
    assert metrics["Average"] == pytest.approx(expected)
    table = format_table(metrics)
    assert table.splitlines()[0].split() == ["NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Average"]
    assert f"{expected:.2f}" in table.splitlines()[1] and "2 of 10 generations" in table


def test_format_table_two_decimals():
    metrics = {"NAT": 89.25, "SOC": 94.94, "LAN": 85.24, "TXT": 88.51, "IMG": 87.46, "NO": 88.08, "G1-6": 90.16,
               "G7-12": 88.07, "Average": 89.4117, "unparsed": 0, "n": 4241}
    lines = format_table(metrics).splitlines()
    assert len(lines) == 2
    assert lines[1].split() == ["89.25", "94.94", "85.24", "88.51", "87.46", "88.08", "90.16", "88.07", "89.41"]
