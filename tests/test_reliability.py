"""Reliability findings, each reproduced as a user meets it: errors on one torchrun rank, bad images found before a run
writes anything, resume of a changed config, checkpoints that survive failed saves, one writer per run directory,
evaluations in their own directory, Ctrl-C that says how to resume, and log.txt holding what the terminal showed."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, assert_one_error_line, run_tool
from vlmkit.engine.checkpoint import load_state_or_previous, previous_path, save_state
from vlmkit.errors import CheckpointError, DataError

TRAIN = str(REPO / "tools/train.py")
EVALUATE = str(REPO / "tools/evaluate.py")
TOY_ENV = {"PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
QUICKSTART = str(REPO / "projects/quickstart/lavin_sqa_tiny.yaml")


def toy_project(tmp_path: Path, name: str = "p", **run) -> Path:
    project = {"model": {"arch": "toy_mlp", **run.pop("model", {})},
               "datasets": {"toy_points": {"sizes": {"train": 64, "val": 16, "test": 16}}},
               "run": {"task": "toy_cls", "imports": ["toy_components"], "device": "cpu", "batch_size": 4,
                       "lr": 0.02, "tensorboard": False, "output_dir": str(tmp_path / "run"), **run}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(project))
    return path


def error_lines(stderr: str) -> list[str]:
    # progress bars end in "\r" without a newline; splitlines() separates them from the error line
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_mid_run_error(res, needle: str) -> str:
    """A failure after training started: the progress bar's lines, then one error line, status 2, no traceback."""
    lines = error_lines(res.stderr)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert len(lines) == 1 and needle in lines[0], res.stderr[-2000:]
    others = [x for x in res.stderr.splitlines() if x.strip() and not x.startswith(("error:", "train:"))]
    assert others == [], others
    return lines[0]


# --- 1. an error on one torchrun rank reaches the user ------------------------------------------------------------
@pytest.mark.parametrize("ranks, kind, expected", [
    (2, "config", "toy_fail: a config error raised on rank 1 only"),
    (2, "plugin", "ValueError: toy_fail plugin broke on rank 1 (raised at toy_components.py"),
    (3, "config", "toy_fail: a config error raised on rank 2 only"),
    (3, "plugin", "ValueError: toy_fail plugin broke on rank 2"),
    (3, "data", "toy_fail: a data error raised on rank 2 only"),
])
def test_error_on_one_rank_reaches_the_user(tmp_path, ranks, kind, expected):
    failing = ranks - 1
    project = toy_project(tmp_path, hooks=[{"type": "toy_fail", "rank": failing, "step": 2, "kind": kind}])
    start = time.monotonic()
    res = run_tool([TRAIN, "--cfg-path", str(project)], env=TOY_ENV, torchrun=ranks, timeout=300)
    assert res.returncode != 0
    assert error_lines(res.stderr) == [error_lines(res.stderr)[0]] and f"error: [rank {failing}] " in res.stderr
    assert expected in error_lines(res.stderr)[0], res.stderr[-3000:]
    # no rank's own traceback (torchrun's summary of the exit codes may follow), no lost-peer noise
    assert "Connection closed by peer" not in res.stderr and str(REPO / "vlmkit") not in res.stderr
    assert time.monotonic() - start < 120  # every other rank exited promptly (the gloo timeout is 30 min)


@pytest.fixture(scope="module")
def sqa(tmp_path_factory):
    data = tmp_path_factory.mktemp("reliability") / "sqa"
    res = run_tool([str(REPO / "tools/prepare_data.py"), "synthetic-scienceqa", "--out", str(data),
                    "--n-train", "24", "--n-val", "8", "--n-test", "8"])
    assert res.returncode == 0, res.stderr
    return data


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header still reads; decoding the pixels fails


def rank_images(data: Path, rank: int, world: int, seed: int = 0) -> list[Path]:
    """The train images that rank ``rank`` alone reads in epoch 0 (the sampler the runner uses, same seed)."""
    from vlmkit.engine.trainer import ResumableSampler

    splits = json.loads((data / "pid_splits.json").read_text())["train"]
    problems = json.loads((data / "problems.json").read_text())
    order = [list(ResumableSampler(range(len(splits)), num_replicas=world, rank=r, shuffle=True, seed=seed,
                                   drop_last=False)) for r in range(world)]
    others = {i for r in range(world) if r != rank for i in order[r]}
    return [data / "images" / "train" / splits[i] / "image.png" for i in order[rank]
            if i not in others and problems[splits[i]].get("image")]


def test_truncated_png_only_rank_1_reads_names_the_file(tmp_path, sqa):
    """With the up-front check off, the bad image is met mid-run by rank 1 alone: its error still reaches the user."""
    data = tmp_path / "sqa"
    import shutil

    shutil.copytree(sqa, data)
    bad = rank_images(data, 1, 2)
    assert bad
    for path in bad:
        truncate(path)
    res = run_tool([TRAIN, "--cfg-path", QUICKSTART, "--options", f"run.output_dir={tmp_path / 'run'}",
                    "run.validate_images=false", "run.val_splits=[]", "run.test_splits=[]"],
                   env={"VLMKIT_QUICKSTART_ROOT": str(data)}, torchrun=2, timeout=300)
    lines = error_lines(res.stderr)
    assert res.returncode != 0 and len(lines) == 1, res.stderr[-3000:]
    assert lines[0].startswith("error: [rank 1] cannot decode image ") and any(str(p) in lines[0] for p in bad)
    # the same data with the check on: found before anything is written, whichever rank checks it
    res = run_tool([TRAIN, "--cfg-path", QUICKSTART, "--options", f"run.output_dir={tmp_path / 'run2'}"],
                   env={"VLMKIT_QUICKSTART_ROOT": str(data)}, torchrun=2, timeout=300)
    lines = error_lines(res.stderr)
    assert res.returncode != 0 and len(lines) == 1 and "checked before the run wrote anything" in lines[0]
    assert not (tmp_path / "run2").exists()


# --- 2. bad images are found before the run writes anything --------------------------------------------------------
def test_bad_image_leaves_a_finished_run_untouched(tmp_path, sqa):
    data = tmp_path / "sqa"
    import shutil

    shutil.copytree(sqa, data)
    out = tmp_path / "run"
    env = {"VLMKIT_QUICKSTART_ROOT": str(data)}
    res = run_tool([TRAIN, "--cfg-path", QUICKSTART, "--options", f"run.output_dir={out}"], env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    image = sorted((data / "images" / "test").glob("*/image.png"))[0]
    truncate(image)
    for workers in (0, 2):
        res = run_tool([TRAIN, "--cfg-path", QUICKSTART, "--overwrite", "--options", f"run.output_dir={out}",
                        f"run.num_workers={workers}"], env=env)
        assert_one_error_line(res, f"cannot decode image {image}", "checked before the run wrote anything")
        assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # mid-run (check off) with DataLoader workers: still one line, not the workers' traceback
    res = run_tool([TRAIN, "--cfg-path", QUICKSTART, "--options", f"run.output_dir={tmp_path / 'w'}",
                    "run.num_workers=2", "run.validate_images=false", "run.train_splits=[test]", "run.val_splits=[]",
                    "run.test_splits=[]"], env=env)
    line = assert_mid_run_error(res, f"cannot decode image {image}")
    assert line.endswith("(in a DataLoader worker)")


def test_image_check_is_remembered(tmp_path, sqa, monkeypatch):
    from vlmkit.data import validate
    from vlmkit.registry import DATASETS, load_builtins

    load_builtins()
    monkeypatch.setenv("VLMKIT_CACHE_DIR", str(tmp_path / "cache"))
    datasets = {"scienceqa": {"train": DATASETS.build_named("scienceqa", {"root": str(sqa)}).build("train")}}
    decoded = []
    real = validate.ImageRef.check
    monkeypatch.setattr(validate.ImageRef, "check", lambda ref: decoded.append(ref.label) or real(ref))
    n = validate.validate_datasets(datasets)
    assert n > 5 and len(decoded) == n
    decoded.clear()
    assert validate.validate_datasets(datasets) == n and decoded == []  # second run: stat only
    changed = sorted((sqa / "images" / "train").glob("*/image.png"))[0]
    os.utime(changed, ns=(time.time_ns(), time.time_ns()))
    validate.validate_datasets(datasets)
    assert len(decoded) == 1 and str(changed) in decoded[0]


def vqa_files(root: Path, questions: list, annotations: list) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({"questions": questions}))
    (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": annotations}))


def vqa_annotation(qid: int, n_answers: int = 10, **extra) -> dict:
    return {"question_id": qid, "image_id": 1, "question_type": "what", "answer_type": "other",
            "multiple_choice_answer": "cat", "answers": [{"answer": "cat", "answer_id": i + 1} for i in range(n_answers)],
            **extra}


@pytest.mark.parametrize("questions, annotations, message", [
    ([{"question_id": 1, "question": "what?"}], [vqa_annotation(1)], "question 1 in .*questions.json has no 'image_id'"),
    ([{"question_id": 1, "image_id": "x", "question": "what?"}], [vqa_annotation(1)], "'image_id' is 'x' \\(str\\)"),
    ([{"question_id": 1, "image_id": 1, "question": "a"}, {"question_id": 1, "image_id": 1, "question": "b"}],
     [vqa_annotation(1)], "question_id 1 appears twice"),
    ([{"question_id": 1, "image_id": 1, "question": "a"}], [{"question_id": 1, "image_id": 1}],
     "annotation of question 1 in .*annotations.json has no 'answers'"),
    ([{"question_id": 1, "image_id": 1, "question": "a"}], [vqa_annotation(1, 3)],
     "has 3 answers, not VQAv2's 10 .*allow_answer_count: true"),
])
def test_vqa_annotation_schema(tmp_path, questions, annotations, message):
    from vlmkit.registry import DATASETS, load_builtins

    load_builtins()
    vqa_files(tmp_path, questions, annotations)
    builder = DATASETS.build_named("vqav2", {"root": str(tmp_path)})
    with pytest.raises(DataError, match=message):
        builder.build("val", None, train=False)


def test_missing_jpeg_is_found_before_the_run(tmp_path):
    from vlmkit.data.validate import validate_datasets
    from vlmkit.registry import DATASETS, load_builtins

    load_builtins()
    vqa_files(tmp_path, [{"question_id": 1, "image_id": 7, "question": "what?"}], [vqa_annotation(1)])
    ds = DATASETS.build_named("vqav2", {"root": str(tmp_path)}).build("val", None, train=False)
    jpeg = tmp_path / "val2014" / "COCO_val2014_000000000007.jpg"
    with pytest.raises(DataError, match=f"image {jpeg} \\(vqav2 val sample 1\\) not found"):
        validate_datasets({"vqav2": {"val": ds}})


def test_karpathy_image_without_filepath(tmp_path):
    from vlmkit.registry import DATASETS, load_builtins

    load_builtins()
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": [
        {"split": "test", "filename": "a.jpg", "cocoid": 3, "sentences": [{"raw": "a cat"}]}]}))
    builder = DATASETS.build_named("coco_caption", {"root": str(tmp_path)})
    with pytest.raises(DataError, match="image 3 in .*dataset_coco.json has no 'filepath' field"):
        builder.build("test", None, train=False)


# --- 3. resume refuses a changed run -------------------------------------------------------------------------------
def test_resume_compares_the_config(tmp_path):
    project = toy_project(tmp_path, max_steps=4, save_every=2)
    res = run_tool([TRAIN, "--cfg-path", str(project)], env=TOY_ENV)
    assert res.returncode == 0, res.stderr[-2000:]
    out = tmp_path / "run"
    before = (out / "checkpoints" / "last.pt").read_bytes()
    res = run_tool([TRAIN, "--cfg-path", str(project), "--resume", "--options", "run.batch_size=8", "run.lr=0.05"],
                   env=TOY_ENV)
    assert_one_error_line(res, "--resume: this config differs", "run.batch_size: 4 -> 8", "run.lr: 0.02 -> 0.05",
                          "--force-config")
    assert (out / "checkpoints" / "last.pt").read_bytes() == before
    # keys that do not change the optimisation may differ
    res = run_tool([TRAIN, "--cfg-path", str(project), "--resume", "--options", "run.max_steps=6", "run.log_every=1",
                    "run.eval_every=0"], env=TOY_ENV)
    assert res.returncode == 0, res.stderr[-2000:]
    # --force-config accepts the change and the log says so
    res = run_tool([TRAIN, "--cfg-path", str(project), "--resume", "--force-config", "--options", "run.max_steps=8",
                    "run.weight_decay=0.1"], env=TOY_ENV)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "--force-config: resuming with a changed config: run.weight_decay: 0.0 -> 0.1" in \
        (out / "log.txt").read_text()


# --- 5. checkpoints ----------------------------------------------------------------------------------------------
def test_checkpoint_keeps_the_previous_one_and_falls_back(tmp_path):
    last = tmp_path / "checkpoints" / "last.pt"
    save_state({"step": 1, "w": torch.ones(3)}, last)
    save_state({"step": 2, "w": torch.ones(3) * 2}, last)
    assert torch.load(previous_path(last), weights_only=True)["step"] == 1
    last.write_bytes(last.read_bytes()[:100])  # the newest is torn (a disk that lied, a copy cut short)
    import logging

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("vlmkit").addHandler(handler)
    try:
        state, used = load_state_or_previous(last)
    finally:
        logging.getLogger("vlmkit").removeHandler(handler)
    assert (state["step"], used) == (1, previous_path(last))
    (warning,) = records
    assert warning.startswith(f"cannot read checkpoint {last}") and \
        f"resuming from the checkpoint before it, {previous_path(last)} (step 1)" in warning


def test_failed_or_impossible_save_is_one_error_and_keeps_the_old(tmp_path, monkeypatch):
    import shutil as shutil_module
    from collections import namedtuple

    last = tmp_path / "checkpoints" / "last.pt"
    save_state({"step": 1, "w": torch.ones(1000)}, last)
    good = last.read_bytes()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(CheckpointError, match=r"not enough free space to write .*last.pt: it needs about 16 MiB and "
                                              r"0 MiB are free.*kept: .*last.pt"):
        save_state({"step": 2, "w": torch.ones(1000)}, last)
    monkeypatch.undo()

    def full_disk(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 8336320 vs 8336208")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="could not write .*last.pt: .*unexpected pos"):
        save_state({"step": 2, "w": torch.ones(1000)}, last)
    assert last.read_bytes() == good
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]  # no temp file left


# --- 8. output_dir holding a run, and one writer at a time -----------------------------------------------------------
def test_a_finished_run_is_not_overwritten_without_overwrite(tmp_path):
    project = toy_project(tmp_path)
    assert run_tool([TRAIN, "--cfg-path", str(project)], env=TOY_ENV).returncode == 0
    out = tmp_path / "run"
    before = (out / "model.safetensors").read_bytes()
    other = toy_project(tmp_path, "other", model={"hidden": 16})
    res = run_tool([TRAIN, "--cfg-path", str(other)], env=TOY_ENV)
    assert_one_error_line(res, f"run.output_dir {out} already holds a finished run of model 'toy_mlp'",
                          "--overwrite")
    assert (out / "model.safetensors").read_bytes() == before
    # --overwrite: a failing new run leaves the old one whole in .previous
    failing = toy_project(tmp_path, "failing", hooks=[{"type": "toy_fail", "rank": 0, "step": 2, "kind": "data"}])
    res = run_tool([TRAIN, "--cfg-path", str(failing), "--overwrite"], env=TOY_ENV)
    assert_mid_run_error(res, "toy_fail: a data error")
    assert (out / ".previous" / "model.safetensors").read_bytes() == before
    assert not (out / "model.safetensors").exists()
    res = run_tool([TRAIN, "--cfg-path", str(other), "--overwrite"], env=TOY_ENV)
    assert res.returncode == 0 and not (out / ".previous").exists()


def test_a_second_writer_is_refused(tmp_path):
    project = toy_project(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".vlmkit.lock").write_text(f"{holder.pid} {os.uname().nodename}\n")
        res = run_tool([TRAIN, "--cfg-path", str(project)], env=TOY_ENV)
        assert_one_error_line(res, f"is being written by another vlmkit process (pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    res = run_tool([TRAIN, "--cfg-path", str(project)], env=TOY_ENV)  # the holder is gone: its stale lock is taken
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (out / ".vlmkit.lock").exists()


# --- 9. evaluations, interruption, logs ----------------------------------------------------------------------------
def test_evaluate_writes_its_own_directory_and_warns_when_untrained(tmp_path):
    project = toy_project(tmp_path)
    assert run_tool([TRAIN, "--cfg-path", str(project)], env=TOY_ENV).returncode == 0
    out = tmp_path / "run"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    res = run_tool([EVALUATE, "--cfg-path", str(project), "--split", "test"], env=TOY_ENV)
    assert res.returncode == 0, res.stderr[-2000:]
    assert {p: p.read_bytes() for p in before} == before  # the run's predictions and metrics are untouched
    (evaluation,) = (out / "evaluations").iterdir()
    assert (evaluation / "metrics.json").is_file() and (evaluation / "predictions").is_dir()
    assert res.stdout.count("NO TRAINED WEIGHTS") == 2  # before and after the table
    log = (evaluation / "log.txt").read_text()
    assert "== test ==" in log and "accuracy" in log and f"outputs in {evaluation}" in log
    res = run_tool([EVALUATE, "--cfg-path", str(project), "--split", "test", "--checkpoint",
                    str(out / "model.safetensors"), "--output-dir", str(tmp_path / "mine")], env=TOY_ENV)
    assert res.returncode == 0 and "NO TRAINED WEIGHTS" not in res.stdout
    assert (tmp_path / "mine" / "metrics.json").is_file()


def test_train_log_holds_the_tables_and_the_outputs_line(tmp_path):
    project = toy_project(tmp_path)
    res = run_tool([TRAIN, "--cfg-path", str(project)], env=TOY_ENV)
    assert res.returncode == 0
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "== test ==" in res.stdout and "== test ==" in log and "== val ==" in log
    assert f"outputs in {tmp_path / 'run'}: model.safetensors" in log


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_names_the_checkpoint_and_the_resume_command(tmp_path, sig):
    project = toy_project(tmp_path, save_every=2, epochs=50, model={"step_sleep": 0.02})
    env = {**os.environ, "PYTHONPATH": TOY_ENV["PYTHONPATH"]}
    proc = subprocess.Popen([sys.executable, TRAIN, "--cfg-path", str(project)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    (line,) = error_lines(stderr)
    step = torch.load(last, weights_only=True)["step"]
    assert f"the last good checkpoint is {last} (step {step})" in line
    command = line.split("resume with: ", 1)[1]
    assert command == f"python {shlex.quote(TRAIN)} --cfg-path {shlex.quote(str(project))} --resume"
    args = shlex.split(command)
    resumed = run_tool([*args[1:], "--options", f"run.max_steps={step + 2}"], env=TOY_ENV)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert torch.load(last, weights_only=True)["step"] == step + 2

