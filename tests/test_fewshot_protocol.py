"""A few-shot sweep's protocol files: fewshot.jsonl (one row per shots × trial, the same at 1 and 2 ranks but for the
timing), fewshot.md (mean ± std per shots; the published 9B figures only for the 9B setup), protocol.json (hashes of
the evaluated ids, demo pool and query sets, prompts, generation, model, versions), config.yaml — and max_samples cuts
only the evaluated items, never the demo pool."""
from __future__ import annotations

import hashlib
import json
import statistics
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_tool
from vlmkit.config import load_config

PROJECT = str(REPO / "projects/quickstart/flamingo_vqav2_tiny.yaml")
SHOTS, TRIALS = (0, 4, 8), 2
MAX_SAMPLES, QUERY_SET = 8, 50
TIMING = ("seconds", "samples_per_s")


def _sha(ids) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def _question_ids(data: Path, split: str) -> list[str]:
    name = {"train": "train2014", "val": "val2014"}[split]
    questions = json.loads((data / f"v2_OpenEnded_mscoco_{name}_questions.json").read_text())["questions"]
    return [str(q["question_id"]) for q in questions]


@pytest.fixture(scope="module")
def model(tmp_path_factory, fewshot_flamingo):
    """The shared tiny fine-tuned OpenFlamingo (conftest.fewshot_flamingo), outputs under this module's root."""
    return {**fewshot_flamingo, "root": tmp_path_factory.mktemp("fewshot_protocol")}


def _sweep(model, out: Path, torchrun: int = 0) -> None:
    res = run_tool([str(REPO / "tools/evaluate.py"), "--cfg-path", PROJECT, "--checkpoint", model["weights"],
                    "--split", "val", "--shots", *map(str, SHOTS), "--trials", str(TRIALS),
                    "--options", f"run.output_dir={out}", "run.generate.max_new_tokens=3",
                    f"datasets.vqav2.max_samples={MAX_SAMPLES}", f"datasets.vqav2.fewshot.query_set_size={QUERY_SET}"],
                   env=model["env"], torchrun=torchrun)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.fixture(scope="module")
def sweep(model):
    out = model["root"] / "sweep"
    _sweep(model, out)
    return out


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "fewshot.jsonl").read_text().splitlines()]


def test_rows_one_per_point_with_the_point_metrics(sweep):
    rows = _rows(sweep)
    assert [(r["shots"], r["trial"]) for r in rows] == [(n, t) for n in SHOTS for t in range(TRIALS)]
    for r in rows:
        point = sweep / f"shots{r['shots']}" / f"trial{r['trial']}"
        assert r["metrics"] == json.loads((point / "metrics.json").read_text())
        assert set(r["metrics"]["val"]) >= {"overall", "num_questions"}
        assert r["seed"] == 42 and r["sampler"] == "random"
        assert r["num_samples"] == MAX_SAMPLES
        assert r["seconds"] > 0 and r["samples_per_s"] == pytest.approx(MAX_SAMPLES / r["seconds"], rel=0.01, abs=0.5)
    summary = json.loads((sweep / "fewshot_summary.json").read_text())  # unchanged beside the new files
    for n in SHOTS:
        assert summary["splits"]["val"][str(n)]["trials"] == [r["metrics"]["val"]["overall"] for r in rows
                                                               if r["shots"] == n]


def test_markdown_mean_and_std_per_shots(sweep):
    rows, text = _rows(sweep), (sweep / "fewshot.md").read_text()
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| shots | overall |"))
    names = [c.strip() for c in lines[header].strip("|").split("|")][1:]
    assert names[0] == "overall" and names[-1] == "num_questions"
    for i, n in enumerate(SHOTS):
        cells = [c.strip() for c in lines[header + 2 + i].strip("|").split("|")]
        assert cells[0] == str(n)
        for name, cell in zip(names, cells[1:]):
            values = [r["metrics"]["val"][name] for r in rows if r["shots"] == n]
            expected = str(MAX_SAMPLES) if name.startswith("num_") else \
                f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"
            assert cell == expected, (n, name)
    assert "## val" in text and "published" not in text.lower()  # a tiny model is not the 9B setup
    assert "over 2 trials" in text and "demos: random (seed 42)" in text


def test_protocol_and_config(model, sweep):
    protocol = json.loads((sweep / "protocol.json").read_text())
    config = yaml.safe_load((sweep / "config.yaml").read_text())
    assert config["datasets"]["vqav2"]["fewshot"]["query_set_size"] == QUERY_SET
    assert protocol["shots"] == list(SHOTS) and protocol["trials"] == TRIALS
    assert protocol["points"] == [[n, t] for n in SHOTS for t in range(TRIALS)]
    vqa = protocol["datasets"]["vqav2"]
    val_ids, train_ids = _question_ids(model["data"], "val"), _question_ids(model["data"], "train")
    assert vqa["evaluated"]["val"]["num_items"] == MAX_SAMPLES
    evaluated = [p["question_id"] for p in json.loads((sweep / "shots4/trial0/predictions/vqav2_val.json").read_text())]
    ordered = [i for i in val_ids if int(i) in set(evaluated)]  # dataset order = the questions file's order
    assert len(ordered) == MAX_SAMPLES and vqa["evaluated"]["val"]["ids_sha256"] == _sha(ordered)
    # the demo pool is the whole train split, although max_samples cuts val to 8
    assert vqa["demo_pool"] == {"split": "train", "size": len(train_ids), "ids_sha256": _sha(train_ids)}
    assert len(train_ids) > QUERY_SET
    sets = vqa["query_sets"]
    assert list(sets) == ["0", "1"] and all(s["size"] == QUERY_SET for s in sets.values())
    assert sets["0"]["ids_sha256"] != sets["1"]["ids_sha256"]  # a trial is another query set
    assert vqa["sampler"] == "random" and vqa["seed"] == 42 and vqa["query_set_size"] == QUERY_SET
    assert vqa["prompt_template"] == "{image_token}Question:{question} Short answer:{answer}{end_of_chunk_token}"
    assert vqa["demo_separator"] == "\n" and vqa["zero_shot_demos"] == 2
    assert vqa["postprocess"] == {"stop_words": ["Question", "Answer", "Short"], "split_at": ", ", "strip_quotes": False}
    # run.generate (tiny yaml + --options) over the model's generate() defaults
    assert protocol["generation"] == {"max_new_tokens": 3, "num_beams": 1, "length_penalty": 0.0, "temperature": 0.0,
                                      "top_p": 1.0, "do_sample": None, "share_prefill": True}
    m = protocol["model"]
    assert m["arch"] == "openflamingo" and m["published_setup"] is None
    assert m["config_sha256"] == hashlib.sha256(json.dumps(config["model"], sort_keys=True).encode()).hexdigest()
    assert m["checkpoint"] == {"path": model["weights"],
                               "sha256": hashlib.sha256(Path(model["weights"]).read_bytes()).hexdigest()}
    import vlmkit

    assert protocol["versions"] == {"vlmkit": vlmkit.__version__, "torch": metadata.version("torch"),
                                    "transformers": metadata.version("transformers"),
                                    "open_clip": metadata.version("open_clip_torch")}


def test_two_ranks_same_rows_and_protocol(model, sweep):
    """A second sweep, under torchrun with 2 ranks: the same rows but for the timing, and the same protocol (every hash
    stable between the two runs)."""
    out = model["root"] / "sweep_2ranks"
    _sweep(model, out, torchrun=2)
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in _rows(out)]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in _rows(sweep)]
    assert all(set(r) - set(s) == set(TIMING) for r, s in zip(_rows(out), strip))
    assert json.loads((out / "protocol.json").read_text()) == json.loads((sweep / "protocol.json").read_text())
    assert (out / "fewshot.md").read_text() == (sweep / "fewshot.md").read_text()


def test_max_samples_cuts_the_evaluated_items_not_the_demo_pool(model):
    from vlmkit.engine.build import build_task

    def datasets(max_samples):
        cfg = load_config(PROJECT, [f"datasets.vqav2.root={model['data']}",
                                    f"model.lm.tokenizer={model['data']}/tokenizer/tokenizer.model",
                                    "datasets.vqav2.fewshot.shots=2", f"datasets.vqav2.max_samples={max_samples}"])
        return build_task(cfg).build_datasets(None, splits=["val"], train=[])["vqav2"]["val"]

    train_ids = _question_ids(model["data"], "train")
    cut, full = datasets(3), datasets("null")
    assert len(cut) == 3 and len(full) == len(_question_ids(model["data"], "val"))
    for ds in (cut, full):
        assert [ds.demo_dataset.sample_id(i) for i in range(len(ds.demo_dataset))] == train_ids
    # so the demos of an item do not depend on max_samples either
    by_id = {full[i]["id"]: full[i]["demo_ids"] for i in range(len(full))}
    assert all(cut[i]["demo_ids"] == by_id[cut[i]["id"]] for i in range(len(cut)))


# --- fewshot.md of the 9B setup (no 9B weights needed: the table is made from rows)
def _rows_for(metric: str, values: dict[int, list[float]]) -> tuple[list[dict], dict]:
    from vlmkit.engine.sweep import summarize

    rows = [{"shots": n, "trial": t, "seed": 42, "sampler": "random", "metrics": {"val": {metric: v}}}
            for n, vs in values.items() for t, v in enumerate(vs)]
    return rows, summarize({"val": values}, metric, 2)


class _Task:
    def __init__(self, scale: float) -> None:
        self.table_scale = scale


def test_markdown_published_rows_for_the_9b_setup(tmp_path):
    from vlmkit.engine.sweep_files import format_markdown

    cfg = load_config(REPO / "projects/flamingo/vqav2_eval.yaml")  # ViT-L/14 + LLaMA-7B, xattn every 4 (paths unread)
    rows, summary = _rows_for("overall", {0: [40.0, 42.0], 4: [44.0, 46.0], 8: [47.0, 47.0], 2: [41.0, 41.0]})
    text = format_markdown(cfg, _Task(1.0), summary, rows, [0, 2, 4, 8])
    lines = text.splitlines()
    assert "| shots | overall |" in lines and "| 4 | 45.00 ± 1.41 |" in lines
    assert "| | 0 shots | 2 shots | 4 shots | 8 shots |" in lines
    assert "| this sweep | 41.00 ± 1.41 | 41.00 ± 0.00 | 45.00 ± 1.41 | 47.00 ± 0.00 |" in lines
    assert "| published: OpenFlamingo-9B v1 (LLaMA-7B) | 43.55 | - | 44.05 | 47.50 |" in lines
    assert "| published: Flamingo-9B (DeepMind) | 51.80 | - | 56.30 | 58.00 |" in lines
    assert "MPT" not in text  # v2's numbers belong to another LM

    # a small LM in the same layout is not the 9B setup
    lm = tmp_path / "small_lm"
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4}))
    small = load_config(REPO / "projects/flamingo/vqav2_eval.yaml", [f"model.lm.path={lm}"])
    assert "published" not in format_markdown(small, _Task(1.0), summary, rows, [0, 2, 4, 8])
    (lm / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32}))
    assert "| published: Flamingo-9B (DeepMind) |" in format_markdown(small, _Task(1.0), summary, rows, [0, 2, 4, 8])


def test_markdown_published_captions_scaled_as_the_papers():
    from vlmkit.engine.sweep_files import format_markdown

    cfg = load_config(REPO / "projects/flamingo/caption_coco_eval.yaml")
    rows, summary = _rows_for("CIDEr", {0: [0.60, 0.62], 4: [0.70, 0.72]})
    lines = format_markdown(cfg, _Task(100.0), summary, rows, [0, 4]).splitlines()
    assert "| this sweep | 61.00 ± 1.41 | 71.00 ± 1.41 |" in lines
    assert "| published: OpenFlamingo-9B v1 (LLaMA-7B) | 65.52 | 74.28 |" in lines
    assert "| published: Flamingo-9B (DeepMind) | 79.40 | 93.10 |" in lines
