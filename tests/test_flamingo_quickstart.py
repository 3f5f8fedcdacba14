"""The two tiny OpenFlamingo quickstarts: fine-tuning lifts the score far above the untrained model's, also under
torchrun with 2 CPU ranks, and 1- and 2-rank evaluation give identical predictions."""
import json

import pytest

from conftest import REPO, run_tool

CASES = {
    "coco": dict(project="projects/quickstart/flamingo_coco_tiny.yaml", env="VLMKIT_QUICKSTART_COCO",
                 prepare=["synthetic-coco", "--n-train", "300", "--n-test", "40"], split="test",
                 metric="CIDEr", predictions="coco_caption_test.json"),
    "vqav2": dict(project="projects/quickstart/flamingo_vqav2_tiny.yaml", env="VLMKIT_QUICKSTART_VQAV2",
                  prepare=["synthetic-vqav2", "--n-train-images", "200", "--n-val-images", "30"], split="val",
                  metric="overall", predictions="vqav2_val.json"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def trained(request, tmp_path_factory):
    case = CASES[request.param]
    root = tmp_path_factory.mktemp(f"flamingo_{request.param}")
    data = root / "data"
    res = run_tool([str(REPO / "tools/prepare_data.py"), *case["prepare"][:1], "--out", str(data), *case["prepare"][1:]])
    assert res.returncode == 0, res.stderr
    env = {case["env"]: str(data)}
    res = run_tool([str(REPO / "tools/train.py"), "--cfg-path", str(REPO / case["project"]),
                    "--options", f"run.output_dir={root / 'run'}"], env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return {**case, "root": root, "env": env, "run": root / "run"}


def _metric(out, case):
    return json.loads((out / "metrics.json").read_text())[case["split"]][case["metric"]]


def test_finetuning_beats_untrained_model(trained):
    untrained = trained["root"] / "untrained"
    res = run_tool([str(REPO / "tools/evaluate.py"), "--cfg-path", str(REPO / trained["project"]),
                    "--split", trained["split"], "--options", f"run.output_dir={untrained}"], env=trained["env"])
    assert res.returncode == 0, res.stderr[-3000:]
    before, after = _metric(untrained, trained), _metric(trained["run"], trained)
    predictions = json.loads((trained["run"] / "predictions" / trained["predictions"]).read_text())
    if trained["metric"] == "CIDEr":  # raw pycocoevalcap CIDEr (tables show ×100)
        assert before < 0.3 and after > 1.5, (before, after)
        # it looks: captions differ with the image (a model that ignores it gives one caption for all 40)
        assert len({p["caption"] for p in predictions}) >= 5, predictions[:5]
    else:  # VQA accuracy in percent; answers depend on what is drawn
        assert before < 25 and after > 50, (before, after)
        # colour questions need the image (four colours, any shape): the trained model reads it
        colour = json.loads((trained["run"] / "metrics.json").read_text())["val"]["answer_type/other"]
        assert colour > 90, colour


def test_two_rank_evaluation_matches_one_rank(trained):
    """Also sharded (FSDP): the ranks' generations end at different steps, and every step is a collective."""
    outs = {}
    for ranks, strategy in ((1, "ddp"), (2, "ddp"), (2, "fsdp")):
        out = trained["root"] / f"eval_{ranks}_{strategy}"
        res = run_tool([str(REPO / "tools/evaluate.py"), "--cfg-path", str(REPO / trained["project"]),
                        "--checkpoint", str(trained["run"] / "model.safetensors"), "--split", trained["split"],
                        "--options", f"run.output_dir={out}", f"run.strategy={strategy}"], env=trained["env"],
                       torchrun=ranks)
        assert res.returncode == 0, res.stderr[-3000:]
        outs[ranks, strategy] = json.loads((out / "predictions" / trained["predictions"]).read_text())
        samples = (out / "samples" / trained["predictions"].replace(".json", ".jsonl")).read_text()
        outs[ranks, strategy, "samples"] = samples
    assert outs[1, "ddp"] == outs[2, "ddp"] == outs[2, "fsdp"]
    assert outs[1, "ddp", "samples"] == outs[2, "ddp", "samples"] == outs[2, "fsdp", "samples"]
    # the per-item scores are the official scorer's: their mean is the split's metric
    rows = [json.loads(line) for line in outs[1, "ddp", "samples"].splitlines()]
    metric = _metric(trained["root"] / "eval_1_ddp", trained)
    scale = 1.0 if trained["metric"] == "CIDEr" else 100.0  # VQA accuracy in percent; raw CIDEr
    assert sum(r["score"] for r in rows) / len(rows) * scale == pytest.approx(metric, abs=1e-6 if scale == 1 else 0.01)
    assert all("<image>" in r["prompt"] and isinstance(r["reference"], list) for r in rows)
    assert outs[1, "ddp"] == json.loads((trained["run"] / "predictions" / trained["predictions"]).read_text())


def test_limit_evaluates_the_first_items_apart_from_full_results(trained):
    target = trained["root"] / "limited"
    res = run_tool([str(REPO / "tools/evaluate.py"), "--cfg-path", str(REPO / trained["project"]),
                    "--checkpoint", str(trained["run"] / "model.safetensors"), "--split", trained["split"],
                    "--limit", "5", "--options", f"run.output_dir={target}"], env=trained["env"])
    assert res.returncode == 0, res.stderr[-3000:]
    out = target / "subsets" / "limit5"
    metrics = json.loads((out / "metrics.json").read_text())[trained["split"]]
    total = len(json.loads((trained["run"] / "predictions" / trained["predictions"]).read_text()))
    assert metrics["subset"] == f"the first 5 of {total} items" and not (target / "metrics.json").exists()
    rows = [json.loads(line) for line in (out / "samples" / trained["predictions"].replace(".json", ".jsonl"))
            .read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]


def test_two_rank_training(trained):
    out = trained["root"] / "ddp"
    res = run_tool([str(REPO / "tools/train.py"), "--cfg-path", str(REPO / trained["project"]),
                    "--options", f"run.output_dir={out}", "run.epochs=2"], env=trained["env"], torchrun=2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "model.safetensors").is_file()
    assert _metric(out, trained) > 0
