"""The README's first command, end to end: the tiny LaVIN must learn to answer, including from the image."""
import json


def test_quickstart_reaches_target_accuracy(quickstart_run):
    out = quickstart_run["out"]
    metrics = json.loads((out / "metrics.json").read_text())["test"]
    # Chance is about 40 %; image questions can only be answered by looking at the picture.
    assert metrics["Average"] >= 80, metrics
    assert metrics["IMG"] >= 75, metrics
    assert metrics["unparsed"] == 0
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "model.safetensors", "checkpoints/last.pt",
                 "predictions/scienceqa_test.json"):
        assert (out / name).is_file(), name
    # The category table is printed.
    assert "NAT" in quickstart_run["stdout"] and "G7-12" in quickstart_run["stdout"]
    results = json.loads((out / "predictions/scienceqa_test.json").read_text())["results"]
    assert len(results) == 200


def test_official_scorer_cli_agrees_with_run(quickstart_run):
    from conftest import run_tool

    out, data = quickstart_run["out"], quickstart_run["data"]
    res = run_tool(["-m", "vlmkit.metrics", "scienceqa", "--problems", str(data / "problems.json"),
                    "--results", str(out / "predictions/scienceqa_test.json"), "--split", "test"])
    assert res.returncode == 0, res.stderr
    scored = json.loads(res.stdout)
    run_metrics = json.loads((out / "metrics.json").read_text())["test"]
    for key in ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Average"):
        assert scored[key] == run_metrics[key], key
