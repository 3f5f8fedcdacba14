"""tools/evaluate.py under torchrun with 1, 2 and 3 CPU ranks writes identical predictions and metrics."""
import json

import pytest

from conftest import REPO, run_tool


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_evaluate_same_for_any_rank_count(quickstart_run, ranks, tmp_path):
    out = tmp_path / f"eval_{ranks}"
    args = [str(REPO / "tools/evaluate.py"), "--cfg-path", str(REPO / "projects/quickstart/lavin_sqa_tiny.yaml"),
            "--checkpoint", str(quickstart_run["out"] / "model.safetensors"), "--split", "test",
            "--options", f"run.output_dir={out}"]
    res = run_tool(args, env=quickstart_run["env"], torchrun=ranks, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    preds = json.loads((out / "predictions/scienceqa_test.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())["test"]
    # 200 test problems: 3 ranks do not divide them, so the sampler pads and the evaluator must deduplicate.
    assert len(preds["results"]) == 200
    reference = json.loads((quickstart_run["out"] / "predictions/scienceqa_test.json").read_text())
    assert preds["results"] == reference["results"]
    assert metrics["Average"] == json.loads((quickstart_run["out"] / "metrics.json").read_text())["test"]["Average"]
    # per-sample records: the same lines at any rank count (dataset order, padding duplicates dropped), and their
    # per-item scores average to the official accuracy
    samples = (out / "samples" / "scienceqa_test.jsonl").read_text()
    assert samples == (quickstart_run["out"] / "samples" / "scienceqa_test.jsonl").read_text()
    rows = [json.loads(line) for line in samples.splitlines()]
    assert [r["index"] for r in rows] == list(range(200)) and len({r["id"] for r in rows}) == 200
    assert sum(r["score"] for r in rows) / 200 * 100 == pytest.approx(metrics["Average"])
    assert sum(r["unparsed"] for r in rows) == metrics["unparsed"]
    first = rows[0]
    assert first["prompt"].startswith(("Image: <image>", "Image: N/A")) and first["generation"]
    assert first["reference"]["answer"] in range(len(first["reference"]["choices"])) and "category" in first


def test_lavin_trains_under_torchrun_two_ranks(quickstart_run, tmp_path):
    out = tmp_path / "ddp"
    res = run_tool([str(REPO / "tools/train.py"), "--cfg-path", str(REPO / "projects/quickstart/lavin_sqa_tiny.yaml"),
                    "--options", f"run.output_dir={out}", "run.epochs=1"], env=quickstart_run["env"], torchrun=2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and (out / "checkpoints/last.pt").is_file()
    metrics = json.loads((out / "metrics.json").read_text())["test"]
    assert len(json.loads((out / "predictions/scienceqa_test.json").read_text())["results"]) == 200
    assert set(metrics) >= {"Average", "IMG", "unparsed"}
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(line).get("split") == "train"]
    assert len(losses) >= 2 and losses[-1] < 0.5 * losses[0], losses  # both ranks' gradients train one model
