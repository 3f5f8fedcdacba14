"""``run.strategy: fsdp`` on 2 CPU ranks (gloo): training equals DDP, checkpoints resume across strategies, generation
stays in lockstep when ranks finish at different steps, and what FSDP cannot shard is refused up front.

(The sharded 2-rank evaluation of the trained quickstart models is in test_flamingo_quickstart.py.)
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, assert_one_error_line, run_tool
from vlmkit.models.tiny import TINY_LLAMA_PARAMS, write_meta_checkpoint

PROJECT = str(REPO / "projects/quickstart/flamingo_coco_tiny.yaml")
# 16 images × 5 captions, 8 per rank and micro-batch: 5 micro-batches per rank and epoch, 3 optimizer steps (accum 2, the
# last group short); 6 in all.
# A constant schedule, so a run cut by max_steps and resumed without it follows the uninterrupted run's schedule.
OPTIONS = ["run.epochs=2", "run.batch_size=8", "run.accum_iter=2", "run.grad_clip=0.5", "run.scheduler.name=constant",
           "run.lr=1e-3", "run.test_splits=[]", "run.log_every=1", "run.tensorboard=false"]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    data = tmp_path_factory.mktemp("fsdp") / "coco"
    res = run_tool([str(REPO / "tools/prepare_data.py"), "synthetic-coco", "--out", str(data), "--n-train", "16",
                    "--n-test", "8"])
    assert res.returncode == 0, res.stderr
    return {"VLMKIT_QUICKSTART_COCO": str(data)}


def train(coco, out, *options, resume=False):
    res = run_tool([str(REPO / "tools/train.py"), "--cfg-path", PROJECT, *(["--resume"] if resume else []),
                    "--options", f"run.output_dir={out}", *OPTIONS, *options], env=coco, torchrun=2)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def weights(out):
    return load_file(str(out / "model.safetensors"))


def losses(out):
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r.get("split") == "train"}


def assert_close(a, b, tol=1e-5):
    assert a.keys() == b.keys() and len(a) > 50
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=tol, atol=tol, msg=key)


@pytest.fixture(scope="module")
def ddp_run(coco, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp") / "ddp"
    train(coco, out, "run.strategy=ddp")
    return out


def test_fsdp_training_equals_ddp(coco, ddp_run, tmp_path):
    out = tmp_path / "fsdp"
    res = train(coco, out, "run.strategy=fsdp")
    assert "FSDP: 9 units + root sharded over 2 ranks" in res.stdout
    assert len(losses(out)) == 6
    assert losses(out) == pytest.approx(losses(ddp_run), rel=1e-5)
    trained = weights(out)
    assert_close(trained, weights(ddp_run))
    # The checkpoint holds full tensors: the optimizer state keyed by parameter name, loadable without torch pickles.
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 6 and set(state["model"]) == set(trained)
    names = state["optimizer"]["param_groups"][0]["params"]
    assert all(isinstance(n, str) for n in names)
    assert state["optimizer"]["state"][names[0]]["exp_avg"].shape == trained[names[0]].shape


@pytest.mark.parametrize("first,then", [("ddp", "fsdp"), ("fsdp", "ddp")])
def test_resume_across_strategies_equals_uninterrupted(coco, ddp_run, tmp_path, first, then):
    """Cut after 4 of 6 steps (mid-epoch), resume with the other strategy: the same weights as never stopping."""
    out = tmp_path / "run"
    train(coco, out, f"run.strategy={first}", "run.max_steps=4")
    cut = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert (cut["step"], cut["epoch"], cut["iter_in_epoch"]) == (4, 1, 2)
    train(coco, out, f"run.strategy={then}", resume=True)
    assert_close(weights(out), weights(ddp_run))
    assert losses(out) == pytest.approx(losses(ddp_run), rel=1e-5)


def test_generation_stays_in_lockstep(spm_tokenizer_path, tmp_path):
    """Rank 0's batch ends after a token or two, rank 1's runs to the limit: no hang, and sharded outputs (greedy,
    3-beam; OpenFlamingo and LaVIN) equal the unsharded model's."""
    llama = write_meta_checkpoint(tmp_path / "llama", "tiny", TINY_LLAMA_PARAMS, spm_tokenizer_path, seed=0)
    res = run_tool([str(REPO / "tests/fsdp_generation_script.py"), str(spm_tokenizer_path), str(llama),
                    str(tmp_path / "out")], torchrun=2, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for model in ("flamingo", "lavin"):
        assert ranks[0][model]["steps"] < 3 and ranks[1][model]["steps"] == 6, model  # really out of step
    for rank in ranks:
        assert rank["lavin"]["sharded"] == rank["lavin"]["reference"]
        reference, sharded = rank["flamingo"]["reference"], rank["flamingo"]["sharded"]
        assert sharded == {key: reference[key] for key in sharded}  # greedy text, 3-beam text, greedy ids


@pytest.mark.parametrize("options,needles", [
    (["run.strategy=zero3"], ["run.strategy 'zero3' is not one of: ddp, fsdp"]),
    (["run.strategy=fsdp", "run.optimizer=adamw8bit"], ["run.strategy=fsdp needs run.optimizer=adamw"]),
])
def test_unsupported_fsdp_settings_are_refused(coco, tmp_path, options, needles):
    out = tmp_path / "run"
    res = run_tool([str(REPO / "tools/train.py"), "--cfg-path", PROJECT, "--options", f"run.output_dir={out}",
                    *OPTIONS, *options], env=coco)
    assert_one_error_line(res, *needles)
    assert not out.exists()


def test_fsdp_refuses_a_model_without_units(tmp_path):
    """A plugin model that does not define fsdp_wrap_classes() cannot be sharded: said before anything is written."""
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(json.dumps({
        "model": {"arch": "toy_mlp"}, "datasets": {"toy_points": {"sizes": {"train": 16, "val": 4, "test": 4}}},
        "run": {"task": "toy_cls", "imports": ["toy_components"], "output_dir": str(tmp_path / "run"),
                "device": "cpu", "strategy": "fsdp"}}))
    res = run_tool([str(REPO / "tools/train.py"), "--cfg-path", str(cfg)],
                   env={"PYTHONPATH": f"{REPO}:{REPO / 'tests'}"})
    assert_one_error_line(res, "model ToyMLP does not say how to shard itself", "fsdp_wrap_classes")
    assert not (tmp_path / "run").exists()
