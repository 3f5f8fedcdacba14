"""The tiny LaVIN ablation suite (projects/quickstart/ablations) trained once by `tools/study.py`, and `tools/compare.py`
on it: learning-rate curves follow each YAML's schedule, the live models' adapter dropout per layer is each YAML's
profile, the tables hold metrics.json's numbers with the best bold, figures are valid PNGs, report.html embeds them,
an incomplete run is one warning line, a bad input one error line with nothing written."""
from __future__ import annotations

import base64
import json
import math
import re
import shutil
import struct

import pytest

from conftest import REPO, assert_one_error_line, run_tool

ABLATIONS = REPO / "projects/quickstart/ablations"
STUDY, COMPARE = str(REPO / "tools/study.py"), str(REPO / "tools/compare.py")
RUNS = ("base", "cyclical_lr", "dropout_dec", "dropout_dec_v2", "dropout_inc", "dropout_inc_v2", "exp_decay",
        "step_decay")
N_TRAIN, BATCH, EPOCHS, LR = 320, 16, 2, 2.0e-3
STEPS_PER_EPOCH = math.ceil(N_TRAIN / BATCH)  # 20
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS
WARMUP = round(0.2 * STEPS_PER_EPOCH)  # base.yaml: warmup_epochs 0.2
SQA_COLUMNS = ["NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Average"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # a tiny model trains faster single-threaded on a shared 2-core machine


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The eight tiny ablations on a small generated ScienceQA, trained and compared by the study command."""
    root = tmp_path_factory.mktemp("study")
    data = root / "sqa"
    res = run_tool([str(REPO / "tools/prepare_data.py"), "synthetic-scienceqa", "--out", str(data),
                    "--n-train", str(N_TRAIN), "--n-val", "20", "--n-test", "40"])
    assert res.returncode == 0, res.stderr
    env = {"VLMKIT_QUICKSTART_ROOT": str(data), **ONE_THREAD}
    out = root / "out"
    res = run_tool([STUDY, str(ABLATIONS), "--out", str(out)], env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return {"root": root, "data": data, "out": out, "env": env, "stdout": res.stdout, "stderr": res.stderr}


def _train_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "train"]


def _expected_lr(name: str, t: int) -> float:
    """The rate of update t (0-based) from the YAML's schedule keys, written out here independently of vlmkit."""
    def main(u: int) -> float:
        if name == "cyclical_lr":  # triangular between 0.1·lr and lr, cycle 0.5 epochs
            half = 0.5 * STEPS_PER_EPOCH / 2
            low = 0.1 * LR
            x = abs(u / half - 2 * math.floor(1 + u / (2 * half)) + 1)
            return low + (LR - low) * max(0.0, 1 - x)
        if name == "step_decay":  # halves every 0.5 epochs
            return LR * 0.5 ** (u // (0.5 * STEPS_PER_EPOCH))
        if name == "exp_decay":  # x 0.2 per epoch, per step
            return LR * 0.2 ** (u / STEPS_PER_EPOCH)
        span = TOTAL_STEPS - WARMUP  # warmup_cosine down to min_lr 0
        return LR * 0.5 * (1 + math.cos(math.pi * min(u, span) / span))

    return main(0) * t / WARMUP if t < WARMUP else main(t - WARMUP)


def test_study_trains_every_yaml_and_compares(study):
    out = study["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*RUNS, "compare"])
    for name in RUNS:
        assert (out / name / "model.safetensors").is_file() and (out / name / "metrics.json").is_file()
        assert set(json.loads((out / name / "metrics.json").read_text())) == {"val", "test"}
    assert study["stdout"].index("base: training") < study["stdout"].index("cyclical_lr: training")  # base first
    assert (out / "compare" / "results.md").is_file() and (out / "compare" / "report.html").is_file()


@pytest.mark.parametrize("name", ["base", "cyclical_lr", "step_decay", "exp_decay"])
def test_logged_lr_follows_the_schedule(study, name):
    records = _train_records(study["out"] / name)
    assert [r["step"] for r in records] == list(range(1, TOTAL_STEPS + 1))  # log_every 1
    for r in records:  # the record of step s holds the rate update s-1 used
        assert r["lr"] == pytest.approx(_expected_lr(name, r["step"] - 1), rel=1e-9, abs=1e-15), r
    after = [r["lr"] for r in records[WARMUP:]]  # updates WARMUP.. : the schedule after warmup
    if name == "step_decay":
        levels = sorted(set(round(v, 12) for v in after), reverse=True)
        assert levels == pytest.approx([LR * 0.5 ** k for k in range(4)])
    if name == "cyclical_lr":
        peaks = [i for i in range(1, len(after) - 1) if after[i - 1] < after[i] > after[i + 1]]
        assert len(peaks) >= 3 and max(after) == pytest.approx(LR) and min(after) == pytest.approx(0.1 * LR)
    if name == "exp_decay":
        assert after[STEPS_PER_EPOCH] / after[0] == pytest.approx(0.2)


#: LLM-adapter dropout per decoder layer (4 layers in the tiny LLaMA), from each YAML's comment.
EXPECTED_DROPOUT = {
    "dropout_inc": [0.0, 0.2 / 3, 0.4 / 3, 0.2],
    "dropout_dec": [0.2, 0.4 / 3, 0.2 / 3, 0.0],
    "dropout_inc_v2": [0.05, 0.1125, 0.2375, 0.3],
    "dropout_dec_v2": [0.3, 0.2375, 0.1125, 0.05],
}


@pytest.mark.parametrize("name", RUNS)
def test_live_adapter_dropout_is_the_yaml_profile(study, name, monkeypatch):
    from vlmkit.compare.plots import dropout_profile
    from vlmkit.config import load_config
    from vlmkit.models.lavin import NormWithAdapter
    from vlmkit.registry import MODELS

    monkeypatch.setenv("VLMKIT_QUICKSTART_ROOT", str(study["data"]))
    cfg = load_config(ABLATIONS / f"{name}.yaml")
    model = MODELS.build(cfg.model, "model")
    live = [layer.input_layernorm.adapter.dropout.p for layer in model.llm.model.layers]
    assert all(isinstance(layer.input_layernorm, NormWithAdapter) for layer in model.llm.model.layers)
    assert live == pytest.approx(EXPECTED_DROPOUT.get(name, [0.1] * 4), abs=1e-12)
    assert [a.dropout.p for a in model.visual.adapters] == pytest.approx([0.1] * len(model.visual.adapters))
    # the comparison's dropout figure reads the same profile from the run's resolved config.yaml
    import yaml

    run_cfg = yaml.safe_load((study["out"] / name / "config.yaml").read_text())
    assert dropout_profile(run_cfg) == pytest.approx(live, abs=1e-12)


def _tables(markdown: str) -> dict[str, tuple[list[str], list[list[tuple[str, bool]]]]]:
    """title → (header, rows of (cell text, bold)) of every table in a results.md."""
    tables, lines = {}, markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("**") and i + 2 < len(lines) and lines[i + 2].startswith("|"):
            header = [c.strip() for c in lines[i + 2].strip("|").split("|")]
            rows = []
            for row in lines[i + 4:]:
                if not row.startswith("|"):
                    break
                cells = [c.strip() for c in row.strip().strip("|").split("|")]
                rows.append([(c.strip("*"), c.startswith("**")) for c in cells])
            tables[line.strip("*")] = (header, rows)
    return tables


def test_table_holds_metrics_json_with_best_bold(study):
    tables = _tables((study["out"] / "compare" / "results.md").read_text())
    header, rows = tables["ScienceQA accuracy (%) on test"]
    assert header == ["Method", *SQA_COLUMNS]
    assert [r[0][0] for r in rows] == list(RUNS)
    for row in rows:
        metrics = json.loads((study["out"] / row[0][0] / "metrics.json").read_text())["test"]
        assert [c for c, _ in row[1:]] == [f"{metrics[col]:.2f}" for col in SQA_COLUMNS]
    for j in range(1, len(header)):
        column = [round(float(r[j][0]), 2) for r in rows]
        assert [r[j][1] for r in rows] == [v == max(column) for v in column], header[j]


def _fake_run(path, metrics, like):
    """A run folder with a real run's config.yaml and metrics.jsonl and a hand-written metrics.json."""
    path.mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(like / name, path / name)
    (path / "metrics.json").write_text(json.dumps({"test": metrics}))
    return path


def test_best_marking_and_names(study, tmp_path):
    like = study["out"] / "base"
    low = {c: 50.0 for c in SQA_COLUMNS}
    high = {**low, "NAT": 91.234, "Average": 60.0}
    tie = {**low, "NAT": 91.231, "IMG": 70.0}
    dirs = [_fake_run(tmp_path / n, m, like) for n, m in (("a", low), ("b", high), ("c", tie))]
    out = tmp_path / "cmp"
    res = run_tool([COMPARE, *map(str, dirs), "--out", str(out), "--names", "low", "high", "tie"])
    assert res.returncode == 0, res.stderr
    header, rows = _tables((out / "results.md").read_text())["ScienceQA accuracy (%) on test"]
    bold = {r[0][0]: {header[j]: r[j][1] for j in range(1, len(header))} for r in rows}
    assert list(bold) == ["low", "high", "tie"]
    assert bold["high"]["NAT"] and bold["tie"]["NAT"] and not bold["low"]["NAT"]  # 91.23 both, as displayed
    assert bold["high"]["Average"] and not bold["tie"]["Average"] and bold["tie"]["IMG"] and not bold["high"]["IMG"]
    assert all(bold[n]["SOC"] for n in bold)  # a tied column marks every run
    assert "| **high** |" not in (out / "results.md").read_text()  # names are never bold
    assert "**91.23**" in res.stdout


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    return struct.unpack(">II", data[16:24])


FIGURES = ("loss.png", "lr.png", "val_Average.png", "categories_scienceqa.png", "dropout.png")


def test_figures_are_valid_pngs(study):
    from PIL import Image

    out = study["out"] / "compare"
    assert sorted(p.name for p in out.glob("*.png")) == sorted(FIGURES)
    for name in FIGURES:
        width, height = _png_size(out / name)
        assert 500 <= width <= 2000 and 300 <= height <= 1200, (name, width, height)
        assert 5_000 < (out / name).stat().st_size < 400_000, name
        with Image.open(out / name) as img:
            img.verify()
        with Image.open(out / name) as img:  # not blank: many colours drawn
            assert len(img.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20, name


def test_report_html_is_self_contained(study):
    out = study["out"] / "compare"
    page = (out / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == len(FIGURES)
    assert {base64.b64decode(i) for i in images} == {(out / f).read_bytes() for f in FIGURES}
    assert "<table>" in page and all(f"<td>{n}</td>" in page for n in RUNS)
    assert re.search(r"<th>G1-6</th>", page) and "<b>" in page
    assert "http://" not in page and "https://" not in page and "file://" not in page


def test_incomplete_runs_warn_and_the_rest_are_compared(study, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(study["out"] / "exp_decay", partial)
    (partial / "metrics.json").unlink()
    with open(partial / "metrics.jsonl", "a") as f:
        f.write('{"split": "train", "step": 9\n')  # a line cut by a kill
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "cmp"
    res = run_tool([COMPARE, str(study["out"] / "base"), str(partial), str(study["out"] / "step_decay"), str(empty),
                    "--out", str(out)])
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(warnings) == 2, res.stderr
    assert warnings[0].startswith("warning: run 'partial'") and "metrics.json" in warnings[0]
    assert "1 unreadable line" in warnings[0]
    assert warnings[1].startswith("warning: run 'empty'") and "left out" in warnings[1]
    header, rows = _tables((out / "results.md").read_text())["ScienceQA accuracy (%) on test"]
    assert [r[0][0] for r in rows] == ["base", "step_decay"]
    assert {p.name for p in out.glob("*.png")} == set(FIGURES)  # the partial run's curves are still drawn


def test_bad_inputs_are_one_error_line_and_write_nothing(study, tmp_path):
    out = tmp_path / "never"
    base = str(study["out"] / "base")
    assert_one_error_line(run_tool([COMPARE, "--out", str(out)]), "no run directory")
    assert_one_error_line(run_tool([COMPARE, base, str(tmp_path / "missing"), "--out", str(out)]),
                          "does not exist", "missing")
    assert_one_error_line(run_tool([COMPARE, base, base, "--out", str(out), "--names", "x"]),
                          "--names gives 1 names for 2")
    assert_one_error_line(run_tool([COMPARE, base]), "--out")
    (tmp_path / "file.txt").write_text("not a folder")
    assert_one_error_line(run_tool([COMPARE, base, "--out", str(tmp_path / "file.txt")]), "is a file")
    (tmp_path / "empty").mkdir()
    assert_one_error_line(run_tool([COMPARE, str(tmp_path / "empty"), "--out", str(out)]), "none of the 1 directories")
    assert_one_error_line(run_tool([STUDY, str(tmp_path / "nope"), "--out", str(out)]), "does not exist")
    (tmp_path / "bad.yaml").write_text("model: {arch: lavin}\nrun: {lrr: 1.0}\n")
    assert_one_error_line(run_tool([STUDY, str(tmp_path), "--out", str(out)]), "run.lrr")
    assert not out.exists()


def test_study_skips_finished_runs(study):
    out = study["out"]
    before = {n: (out / n / "model.safetensors").stat().st_mtime_ns for n in RUNS}
    res = run_tool([STUDY, str(ABLATIONS), "--out", str(out)], env=study["env"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("finished earlier") == len(RUNS) and "training into" not in res.stdout
    assert {n: (out / n / "model.safetensors").stat().st_mtime_ns for n in RUNS} == before


def _sweep_dir(path, means, metric="overall", config=None):
    path.mkdir(parents=True)
    splits = {"val": {str(n): {"trials": [m - 1, m + 1], "mean": m, "std": math.sqrt(2), "num_trials": 2}
                      for n, m in means.items()}}
    (path / "fewshot_summary.json").write_text(json.dumps({"main_metric": metric, "trials": 2, "splits": splits}))
    if config is not None:
        import yaml

        (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


NINE_B = {"model": {"arch": "openflamingo", "lm": {"path": "checkpoints/llama-7b-hf", "tiny": None},
                    "vision": {"model_name": "ViT-L-14-quickgelu", "tiny": None}, "cross_attn": {"every_n_layers": 4}},
          "run": {"task": "vqa"}}


def test_fewshot_sweeps_table_and_published_curves(tmp_path):
    from vlmkit.compare.plots import _curves
    from vlmkit.compare.runs import load_run

    a = _sweep_dir(tmp_path / "of9b", {0: 40.0, 4: 45.5}, config=NINE_B)
    b = _sweep_dir(tmp_path / "mine", {0: 42.0, 8: 47.0})
    out = tmp_path / "cmp"
    res = run_tool([COMPARE, str(a), str(b), "--out", str(out)])
    assert res.returncode == 0, res.stderr
    header, rows = _tables((out / "results.md").read_text())["Few-shot overall, mean ± std over 2 trial(s)"]
    assert header == ["shots", "of9b", "mine"]
    assert rows == [[("0", False), ("40.00 ± 1.41", False), ("42.00 ± 1.41", True)],
                    [("4", False), ("45.50 ± 1.41", False), ("-", False)],
                    [("8", False), ("-", False), ("47.00 ± 1.41", False)]]
    assert _png_size(out / "fewshot_overall.png")[0] >= 500
    warnings = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: run 'mine'") and "config.yaml" in warnings[0]
    runs = [load_run("of9b", a), load_run("mine", b)]
    assert list(_curves("overall", runs, "auto")) == ["OpenFlamingo-9B v1 (LLaMA-7B)", "Flamingo-9B (DeepMind)"]
    assert _curves("overall", runs[1:], "auto") == {} and _curves("overall", runs, "never") == {}
    assert len(_curves("CIDEr", runs[1:], "always")) == 3
