"""Bad input: one clear line on stderr (what, where, how to fix), exit status 2, no traceback, nothing overwritten."""
import json
import shutil

import pytest

from conftest import REPO, assert_one_error_line, run_tool

QUICKSTART = str(REPO / "projects/quickstart/lavin_sqa_tiny.yaml")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    data = tmp_path_factory.mktemp("bad_input") / "sqa"
    res = run_tool([str(REPO / "tools/prepare_data.py"), "synthetic-scienceqa", "--out", str(data),
                    "--n-train", "20", "--n-val", "10", "--n-test", "10"])
    assert res.returncode == 0, res.stderr
    return data


def _train(data, out, *options, cfg=QUICKSTART, tool="train.py", extra=()):
    return run_tool([str(REPO / "tools" / tool), "--cfg-path", str(cfg), *extra, "--options",
                     f"run.output_dir={out}", "run.epochs=1", *options],
                    env={"VLMKIT_QUICKSTART_ROOT": str(data)})


@pytest.fixture()
def existing_output(tmp_path):
    """An output dir holding a previous run's metrics, which a failing run must leave untouched."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"test": {"Average": 55.0}}')
    return out


def _untouched(out):
    assert json.loads((out / "metrics.json").read_text()) == {"test": {"Average": 55.0}}
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_unknown_arch(small_data, existing_output):
    assert_one_error_line(_train(small_data, existing_output, "model.arch=lavn"), "unknown model 'lavn'", "did you mean 'lavin'")
    _untouched(existing_output)


def test_misspelled_key(small_data, existing_output):
    assert_one_error_line(_train(small_data, existing_output, "model.adapter_dimm=4"), "model.adapter_dimm", "adapter_dim")
    _untouched(existing_output)


def test_wrong_value_type(small_data, existing_output):
    assert_one_error_line(_train(small_data, existing_output, "run.batch_size=big"), "run.batch_size", "int")
    _untouched(existing_output)


def test_missing_data_file(tmp_path, small_data, existing_output):
    res = _train(small_data, existing_output, f"datasets.scienceqa.root={tmp_path / 'nowhere'}")
    assert_one_error_line(res, "problems.json", str(tmp_path / "nowhere"))
    _untouched(existing_output)


def test_missing_weight_file(tmp_path, small_data, existing_output):
    res = _train(small_data, existing_output, f"model.llama_root={tmp_path / 'no_weights'}")
    assert_one_error_line(res, str(tmp_path / "no_weights"), "tokenizer.model")
    _untouched(existing_output)


def test_corrupt_image(tmp_path, small_data, existing_output):
    data = tmp_path / "corrupt"
    shutil.copytree(small_data, data)
    images = sorted((data / "images").glob("*/*/image.png"))
    for image in images:
        image.write_bytes(b"not a png")
    res = run_tool([str(REPO / "tools/train.py"), "--cfg-path", QUICKSTART, "--options",
                    f"run.output_dir={existing_output}", "run.epochs=1"], env={"VLMKIT_QUICKSTART_ROOT": str(data)})
    assert_one_error_line(res, "image.png")
    _untouched(existing_output)


def test_empty_split(tmp_path, small_data, existing_output):
    data = tmp_path / "empty"
    shutil.copytree(small_data, data)
    splits = json.loads((data / "pid_splits.json").read_text())
    splits["test"] = []
    (data / "pid_splits.json").write_text(json.dumps(splits))
    res = run_tool([str(REPO / "tools/evaluate.py"), "--cfg-path", QUICKSTART, "--split", "test", "--options",
                    f"run.output_dir={existing_output}"], env={"VLMKIT_QUICKSTART_ROOT": str(data)})
    assert_one_error_line(res, "test")
    _untouched(existing_output)


def test_checkpoint_of_another_model(tmp_path, small_data, existing_output):
    # Train one step of a differently-shaped LaVIN, then evaluate the quickstart model with its weights.
    other = tmp_path / "other"
    res = _train(small_data, other, "model.adapter_dim=4", "model.train_backbone=false", "run.max_steps=1")
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_tool([str(REPO / "tools/evaluate.py"), "--cfg-path", QUICKSTART, "--checkpoint",
                    str(other / "model.safetensors"), "--options", f"run.output_dir={existing_output}"],
                   env={"VLMKIT_QUICKSTART_ROOT": str(small_data)})
    assert_one_error_line(res, "model.safetensors")
    _untouched(existing_output)


def test_missing_checkpoint_file(tmp_path, small_data, existing_output):
    res = run_tool([str(REPO / "tools/evaluate.py"), "--cfg-path", QUICKSTART, "--checkpoint",
                    str(tmp_path / "nope.safetensors"), "--options", f"run.output_dir={existing_output}"],
                   env={"VLMKIT_QUICKSTART_ROOT": str(small_data)})
    assert_one_error_line(res, "nope.safetensors")
    _untouched(existing_output)


def test_debug_shows_traceback(small_data, existing_output):
    res = run_tool([str(REPO / "tools/train.py"), "--cfg-path", QUICKSTART, "--debug", "--options",
                    f"run.output_dir={existing_output}", "model.arch=lavn"],
                   env={"VLMKIT_QUICKSTART_ROOT": str(small_data)})
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_7b_recipe_names_missing_weights(tmp_path, small_data):
    """The LaVIN-7B recipe on a machine without the weights: one line naming the file and how to get it."""
    res = run_tool([str(REPO / "tools/train.py"), "--cfg-path", str(REPO / "projects/lavin/sqa_7b.yaml"), "--options",
                    f"run.output_dir={tmp_path / 'run'}"],
                   env={"VLMKIT_LLAMA_ROOT": str(tmp_path / "llama"), "VLMKIT_SQA_ROOT": str(small_data)})
    line = assert_one_error_line(res, str(tmp_path / "llama"))
    assert "obtain" in line or "request" in line or "download" in line, line
    assert not (tmp_path / "run").exists()
