"""The bad-input and fault matrix of docs/reliability.md, as executable cases.

Each case sets up its input in a temporary folder and runs it the way a user meets it: a ``vlmkit`` command run
in-process (``cli``: the exact ``error:`` line is captured), or a library call (``py``: the raised error's message,
which the commands print after ``error:``). Cases that need a separate process (torchrun, signals, a killed save) are
rows pointing at the test that asserts their message (``test``).

    python tests/reliability_cases.py > docs/reliability.md     # regenerate the table

tests/test_reliability_table.py runs every case, checks each message, and fails when docs/reliability.md differs from
what this file generates, so the table cannot drift from the behaviour.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests")] if str(REPO / "tests") not in sys.path else []


@dataclass
class Case:
    area: str
    what: str
    kind: str  # cli | py | test
    run: Callable[[Path], Any] | str  # tmp → argv (cli) / raises (py); a test node id (test)
    needle: str  # a regular expression the message must match
    status: int = 2


CASES: list[Case] = []


def case(area: str, what: str, kind: str, needle: str, status: int = 2) -> Callable:
    def add(fn: Callable[[Path], Any]) -> Callable:
        CASES.append(Case(area, what, kind, fn, needle, status))
        return fn
    return add


def ref(area: str, what: str, test: str, needle: str) -> None:
    CASES.append(Case(area, what, "test", test, needle))


# --- helpers ---------------------------------------------------------------------------------------------------------
def toy(tmp: Path, name: str = "p", **run: Any) -> str:
    model = run.pop("model", {})
    project = {"model": {"arch": "toy_mlp", **model},
               "datasets": {"toy_points": {"sizes": {"train": 16, "val": 8, "test": 8}}},
               "run": {"task": "toy_cls", "imports": ["toy_components"], "device": "cpu", "batch_size": 4,
                       "lr": 0.02, "tensorboard": False, "validate_images": False, "output_dir": str(tmp / "run"),
                       **run}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(project))
    return str(path)


def train(tmp: Path, *options: str, extra: tuple[str, ...] = (), **run: Any) -> list[str]:
    return ["train", "--cfg-path", toy(tmp, **run), *extra, *(["--options", *options] if options else [])]


def trained(tmp: Path, **run: Any) -> Path:
    from vlmkit.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(train(tmp, **run)) == 0
    return tmp / "run"


def builtins() -> Any:
    from vlmkit.registry import DATASETS, load_builtins

    load_builtins()
    return DATASETS


def sqa(tmp: Path, **changes: Any) -> Path:
    from vlmkit.data.synthetic.scienceqa import write_synthetic_scienceqa

    root = tmp / "sqa"
    write_synthetic_scienceqa(root, n_train=6, n_val=2, n_test=2, seed=0)
    return root


def sqa_build(root: Path, split: str = "train") -> Any:
    return builtins().build_named("scienceqa", {"root": str(root)}).build(split)


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    data = json.loads(path.read_text())
    out = change(data)
    path.write_text(json.dumps(data if out is None else out))


def vqa(tmp: Path, questions: list | None = None, annotations: list | None = None) -> Path:
    root = tmp / "vqa"
    root.mkdir(exist_ok=True)
    q = questions if questions is not None else [{"question_id": 1, "image_id": 1, "question": "what?"}]
    a = annotations if annotations is not None else [vqa_ann(1)]
    (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({"questions": q}))
    (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": a}))
    return root


def vqa_ann(qid: int, n: int = 10, **extra: Any) -> dict:
    return {"question_id": qid, "image_id": 1, "question_type": "what", "answer_type": "other",
            "multiple_choice_answer": "cat", "answers": [{"answer": "cat", "answer_id": i + 1} for i in range(n)],
            **extra}


def vqa_build(root: Path) -> Any:
    return builtins().build_named("vqav2", {"root": str(root)}).build("val", None, train=False)


def karpathy(tmp: Path, images: list) -> Any:
    (tmp / "dataset_coco.json").write_text(json.dumps({"images": images}))
    return builtins().build_named("coco_caption", {"root": str(tmp)}).build("test", None, train=False)


def write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


# --- config -----------------------------------------------------------------------------------------------------------
for option, needle in [
    ("run.lr", r"--options item 'run.lr' is not KEY=VALUE \(e.g. run.lr=2e-3\); to set null write 'run.lr=null'"),
    ("=3", r"--options item '=3' is not KEY=VALUE \(e.g. run.lr=2e-3\): it has no key before '='"),
    ("run.betas=[0.9,", r"--options item 'run.betas=\[0.9,': the value '\[0.9,' cannot be parsed"),
    ("run.batch_size=0", r"run.batch_size must be >= 1, got 0"),
    ("run.eval_batch_size=0", r"run.eval_batch_size must be >= 1, got 0"),
    ("run.lr=-1", r"run.lr must be > 0, got -1"),
    ("run.accum_iter=0", r"run.accum_iter must be >= 1, got 0"),
    ("run.num_workers=-1", r"run.num_workers must be >= 0, got -1"),
    ("run.grad_clip=0", r"run.grad_clip must be > 0, got 0"),
    ("run.betas=[0.9,1.5]", r"run.betas must be two numbers in \[0, 1\)"),
    ("run.batch_size=big", r"run.batch_size"),
    ("run.lrr=0.1", r"unknown config key 'run.lrr' in <tmp>/p.yaml / --options; did you mean 'run.lr'\?"),
    ("model.hiden=3", r"unknown config key 'model.hiden' .*did you mean 'model.hidden'\?"),
    ("run.epochs=0", r"run.epochs must be >= 1, got 0"),
    ("run.scheduler.name=cosine_warm", r"cosine_warm"),
    ("run.strategy=zero3", r"run.strategy 'zero3' is not one of: ddp, fsdp"),
]:
    case("config", f"`--options {option}`", "cli", needle)(lambda tmp, o=option: train(tmp, o))

case("config", "unknown model arch", "cli", r"unknown model 'toy_mpl'.*did you mean 'toy_mlp'")(
    lambda tmp: train(tmp, "model.arch=toy_mpl"))
case("config", "unknown task", "cli", r"toy_clss")(lambda tmp: train(tmp, "run.task=toy_clss"))
case("config", "a `run.hooks` entry of an unknown type", "cli", r"tensorbord")(
    lambda tmp: train(tmp, hooks=[{"type": "tensorbord"}]))
case("config", "a `run.hooks` entry with a misspelled key", "cli", r"unknown config key 'run.hooks\[0\].stpe'")(
    lambda tmp: train(tmp, hooks=[{"type": "toy_fail", "stpe": 2}]))
case("config", "project YAML that does not exist", "cli", r"nowhere.yaml")(
    lambda tmp: ["train", "--cfg-path", str(tmp / "nowhere.yaml")])
case("config", "project YAML with a syntax error", "cli", r"bad.yaml")(
    lambda tmp: ["train", "--cfg-path", write(tmp, "bad.yaml", "run: {lr: [1,\n")])
case("config", "`--force-config` without `--resume`", "cli", r"--force-config only applies to --resume")(
    lambda tmp: train(tmp, extra=("--force-config",)))
case("config", "`--trials` without `--shots`", "cli", r"--trials needs --shots")(
    lambda tmp: ["evaluate", "--cfg-path", toy(tmp), "--trials", "2"])
case("config", "`--import` of a module that does not exist", "cli", r"no_such_plugin")(
    lambda tmp: ["train", "--cfg-path", toy(tmp), "--import", "no_such_plugin"])


@case("config", "`run.effective_batch` not a multiple of batch × ranks", "py",
      r"run.effective_batch=6 is not a multiple of run.batch_size × ranks = 4 × 1")
def _(tmp: Path) -> None:
    from omegaconf import OmegaConf

    from vlmkit.engine.build import apply_effective_batch

    apply_effective_batch(OmegaConf.create({"batch_size": 4, "effective_batch": 6}), 1)


# --- data -------------------------------------------------------------------------------------------------------------
@case("data", "ScienceQA root without problems.json", "py", r"problems.json.*not found: <tmp>/nowhere")
def _(tmp: Path) -> None:
    sqa_build(tmp / "nowhere")


@case("data", "problems.json that is not valid JSON", "py", r"not valid JSON: <tmp>/sqa/problems.json \(line 1")
def _(tmp: Path) -> None:
    root = sqa(tmp)
    (root / "problems.json").write_text("{broken")
    sqa_build(root)


@case("data", "a ScienceQA problem without `choices`", "py", r"lacks one of the fields")
def _(tmp: Path) -> None:
    root = sqa(tmp)
    edit_json(root / "problems.json", lambda d: [p.pop("choices") for p in d.values()] and None)
    sqa_build(root)


@case("data", "a ScienceQA answer index outside the choices", "py", r"has \d choices and answer 9")
def _(tmp: Path) -> None:
    root = sqa(tmp)
    edit_json(root / "problems.json", lambda d: [p.update(answer=9) for p in d.values()] and None)
    sqa_build(root)


@case("data", "a ScienceQA image file missing", "py", r"images of split 'train' are missing, e.g. the image not found")
def _(tmp: Path) -> None:
    root = sqa(tmp)
    next((root / "images" / "train").glob("*/image.png")).unlink()
    sqa_build(root)


@case("data", "a truncated PNG (the header still reads)", "py",
      r"cannot decode image <tmp>/sqa/images/train/\d+/image.png of ScienceQA problem '\d+': image file is truncated"
      r".*checked before the run wrote anything")
def _(tmp: Path) -> None:
    from vlmkit.data.validate import validate_datasets

    root = sqa(tmp)
    image = sorted((root / "images" / "train").glob("*/image.png"))[0]
    image.write_bytes(image.read_bytes()[:-40])
    validate_datasets({"scienceqa": {"train": sqa_build(root)}})


@case("data", "a split with no problems", "py", r"split 'nosuch'")
def _(tmp: Path) -> None:
    sqa_build(sqa(tmp), "nosuch")


@case("data", "a results JSON with a key twice", "py", r"has the key 'q1' twice")
def _(tmp: Path) -> None:
    from vlmkit.io import read_json

    read_json(write(tmp, "r.json", '{"q1": 0, "q1": 1}'), "results", "write each id once")


for qs, anns, what, needle in [
    ([{"question_id": 1, "question": "what?"}], None, "a VQAv2 question without `image_id`",
     r"question 1 in <tmp>/vqa/v2_OpenEnded_mscoco_val2014_questions.json has no 'image_id' field"),
    ([{"question_id": 1, "image_id": "7", "question": "what?"}], None, "a VQAv2 `image_id` of the wrong type",
     r"'image_id' is '7' \(str\), expected int"),
    ([{"question_id": 1, "image_id": 1, "question": "a"}] * 2, None, "a VQAv2 question id twice",
     r"question_id 1 appears twice in <tmp>/vqa/v2_OpenEnded_mscoco_val2014_questions.json"),
    (None, [{"question_id": 1, "image_id": 1}], "VQAv2 annotations without `answers`",
     r"annotation of question 1 in <tmp>/vqa/v2_mscoco_val2014_annotations.json has no 'answers' field"),
    (None, [vqa_ann(1, 3)], "a VQAv2 question with 3 answers instead of 10",
     r"has 3 answers, not VQAv2's 10 .*datasets.vqav2.allow_answer_count: true"),
    (None, [vqa_ann(2)], "a VQAv2 question without an annotation", r"question 1 of .* has no annotation"),
    ({"questions": 1}, None, "a VQAv2 questions file without a list", r"has no 'questions' list"),
]:
    case("data", what, "py", needle)(lambda tmp, q=qs, a=anns: vqa_build(vqa(tmp, q, a)))

case("data", "a VQAv2 image missing (found before the run)", "py",
     r"image <tmp>/vqa/val2014/COCO_val2014_000000000001.jpg \(vqav2 val sample 1\) not found")(
    lambda tmp: __import__("vlmkit.data.validate", fromlist=["x"]).validate_datasets(
        {"vqav2": {"val": vqa_build(vqa(tmp))}}))
case("data", "a Karpathy image without `filepath`", "py", r"image 3 in <tmp>/dataset_coco.json has no 'filepath'")(
    lambda tmp: karpathy(tmp, [{"split": "test", "filename": "a.jpg", "cocoid": 3, "sentences": [{"raw": "x"}]}]))
case("data", "a Karpathy image without sentences", "py", r"image 3 of <tmp>/dataset_coco.json has no sentences")(
    lambda tmp: karpathy(tmp, [{"split": "test", "filepath": "v", "filename": "a.jpg", "cocoid": 3,
                                "sentences": []}]))
case("data", "a Karpathy `cocoid` twice", "py", r"cocoid 3 appears twice")(
    lambda tmp: karpathy(tmp, [{"split": "test", "filepath": "v", "filename": f"{i}.jpg", "cocoid": 3,
                                "sentences": [{"raw": "x"}]} for i in range(2)]))


@case("data", "an image–text JSONL line without `image`", "py", r"<tmp>/items.jsonl line 1 has no 'image'")
def _(tmp: Path) -> None:
    (tmp / "items.jsonl").write_text('{"prompt": "what?", "answer": "cat"}\n')
    builtins().build_named("image_text", {"root": str(tmp), "splits": {"train": "items.jsonl"}}).build(
        "train", None, train=True)


@case("data", "a webdataset shard that is not a tar file", "py", r"cannot read shard <tmp>/s-000000.tar")
def _(tmp: Path) -> None:
    from vlmkit.data.shards import ShardIndex

    (tmp / "s-000000.tar").write_bytes(b"not a tar")
    ShardIndex.load(tmp / "s-000000.tar")


# --- metrics ----------------------------------------------------------------------------------------------------------
def sqa_score(tmp: Path, results: dict, *extra: str) -> list[str]:
    problems = {f"q{i}": {"answer": 0, "choices": ["a", "b"], "split": "test"} for i in range(4)}
    return ["score", "scienceqa", "--problems", write(tmp, "problems.json", json.dumps(problems)), "--results",
            write(tmp, "results.json", json.dumps({"results": results})), *extra]


case("metrics", "ScienceQA results covering half the split", "cli",
     r"has results for 2 of the 4 problems of split 'test' \(2 missing\).*--partial")(
    lambda tmp: sqa_score(tmp, {"q0": 0, "q1": 1}, "--split", "test"))
case("metrics", "a ScienceQA result for an unknown problem", "cli", r"result id 'q9' .* is not a problem")(
    lambda tmp: sqa_score(tmp, {"q9": 0}))
case("metrics", "a ScienceQA result that is not an option index", "cli", r"q0")(
    lambda tmp: sqa_score(tmp, {"q0": "A)"}))


def vqa_score(tmp: Path, results: Any, annotations: list | None = None, *extra: str) -> list[str]:
    root = vqa(tmp, annotations=annotations)
    return ["score", "vqa", "--questions", str(root / "v2_OpenEnded_mscoco_val2014_questions.json"),
            "--annotations", str(root / "v2_mscoco_val2014_annotations.json"),
            "--results", write(tmp, "results.json", json.dumps(results)), *extra]


case("metrics", "VQA scoring of questions with 3 answers", "cli",
     r"question_id 1 .* has 3 answers, not VQAv2's 10.*--allow-answer-count")(
    lambda tmp: vqa_score(tmp, [{"question_id": 1, "answer": "cat"}], [vqa_ann(1, 3)]))
case("metrics", "VQA results answering a question twice", "cli", r"deduplicate")(
    lambda tmp: vqa_score(tmp, [{"question_id": 1, "answer": "cat"}] * 2))
case("metrics", "VQA results for an unknown question", "cli", r"question_id 9")(
    lambda tmp: vqa_score(tmp, [{"question_id": 9, "answer": "cat"}]))
case("metrics", "VQA results that are not a list", "cli", r"must be a list")(
    lambda tmp: vqa_score(tmp, {"question_id": 1}))
case("metrics", "caption ground truth without `annotations`", "cli", r"must have 'images' and 'annotations' lists")(
    lambda tmp: ["score", "caption", "--annotations", write(tmp, "gt.json", '{"images": []}'),
                 "--results", write(tmp, "r.json", "[]")])


# --- checkpoints ------------------------------------------------------------------------------------------------------
case("checkpoints", "`--checkpoint` that does not exist", "cli", r"checkpoint not found: <tmp>/nope.safetensors")(
    lambda tmp: ["evaluate", "--cfg-path", toy(tmp), "--checkpoint", str(tmp / "nope.safetensors")])
case("checkpoints", "`--resume` without a checkpoint", "cli", r"--resume: no checkpoint at <tmp>/run/checkpoints/last.pt")(
    lambda tmp: train(tmp, extra=("--resume",)))


@case("checkpoints", "a checkpoint of another model", "cli", r"is a checkpoint of model 'lavin', but this config builds "
      r"'toy_mlp'")
def _(tmp: Path) -> list[str]:
    torch.save({"vlmkit_checkpoint": 1, "arch": "lavin", "model": {}}, tmp / "other.pt")
    return ["evaluate", "--cfg-path", toy(tmp), "--checkpoint", str(tmp / "other.pt")]


@case("checkpoints", "a `.safetensors` file that is torn", "cli", r"cannot read safetensors file <tmp>/torn.safetensors")
def _(tmp: Path) -> list[str]:
    (tmp / "torn.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    return ["evaluate", "--cfg-path", toy(tmp), "--checkpoint", str(tmp / "torn.safetensors")]


@case("checkpoints", "a LLaMA shard that is a code-running pickle", "py",
      r"refusing to load <tmp>/llama/tiny/consolidated.00.pth: it is not a plain tensor checkpoint")
def _(tmp: Path) -> None:
    from vlmkit.models.llama import load_meta_state_dict

    (tmp / "llama" / "tiny").mkdir(parents=True)
    import pickle

    class Payload:
        def __reduce__(self):  # would run `print` when unpickled
            return (print, ("pwned",))

    with open(tmp / "llama" / "tiny" / "consolidated.00.pth", "wb") as f:
        pickle.dump(Payload(), f)
    load_meta_state_dict(tmp / "llama" / "tiny", 1)


@case("checkpoints", "`--resume` with a changed batch size", "cli",
      r"--resume: this config differs .*run.batch_size: 4 -> 8.*--force-config")
def _(tmp: Path) -> list[str]:
    trained(tmp, max_steps=2, save_every=1, val_splits=[], test_splits=[])
    return train(tmp, "run.batch_size=8", extra=("--resume",), max_steps=2, save_every=1, val_splits=[],
                 test_splits=[])


ref("checkpoints", "the newest `last.pt` torn: `--resume` uses the one before",
    "tests/test_reliability.py::test_checkpoint_keeps_the_previous_one_and_falls_back",
    "resuming from the checkpoint before it")
ref("checkpoints", "not enough free space for `last.pt`",
    "tests/test_reliability.py::test_failed_or_impossible_save_is_one_error_and_keeps_the_old",
    "not enough free space to write")
ref("checkpoints", "disk full while writing `last.pt`",
    "tests/test_reliability.py::test_failed_or_impossible_save_is_one_error_and_keeps_the_old",
    "could not write")
ref("checkpoints", "a killed save's temp file", "tests/test_input_guards.py::test_a_killed_save_leaves_no_temp_file_"
    "behind", "not stale.exists() and live.exists()")

# --- faults -----------------------------------------------------------------------------------------------------------
ref("faults", "Ctrl-C during training", "tests/test_reliability.py::test_interrupt_names_the_checkpoint_and_the_resume_"
    "command", "the last good checkpoint is")
ref("faults", "SIGTERM during training", "tests/test_reliability.py::test_interrupt_names_the_checkpoint_and_the_resume_"
    "command", "resume with: ")
ref("faults", "SIGKILL mid-epoch, then `--resume`: identical weights and metrics",
    "tests/test_resume.py::test_resume_after_sigkill_is_bit_identical", "assert_same_weights(")
ref("faults", "a plugin hook raising its own exception", "tests/test_reliability.py::test_error_on_one_rank_reaches_"
    "the_user", "ValueError: toy_fail plugin broke")
ref("faults", "a bad image met mid-run by a DataLoader worker",
    "tests/test_reliability.py::test_bad_image_leaves_a_finished_run_untouched", "(in a DataLoader worker)")


@case("faults", "a plugin exception (single process)", "cli",
      r"ValueError: toy_fail plugin broke on rank 0 \(raised at toy_components.py:\d+ in after_step; --debug shows",
      status=1)
def _(tmp: Path) -> list[str]:
    return train(tmp, hooks=[{"type": "toy_fail", "rank": 0, "step": 1, "kind": "plugin"}])


# --- distributed ------------------------------------------------------------------------------------------------------
ref("distributed", "a config error raised on rank 1 of 2", "tests/test_reliability.py::test_error_on_one_rank_"
    "reaches_the_user", "error: [rank {failing}] ")
ref("distributed", "a plugin exception on rank 2 of 3", "tests/test_reliability.py::test_error_on_one_rank_reaches_"
    "the_user", "toy_fail plugin broke on rank 2")
ref("distributed", "a truncated PNG only rank 1 reads", "tests/test_reliability.py::test_truncated_png_only_rank_1_"
    "reads_names_the_file", "error: [rank 1] cannot decode image ")
ref("distributed", "bad images under torchrun, check on", "tests/test_reliability.py::test_truncated_png_only_rank_1_"
    "reads_names_the_file", "checked before the run wrote anything")

# --- output -----------------------------------------------------------------------------------------------------------
case("output", "`run.output_dir` that is a file", "cli", r"run.output_dir <tmp>/f is a file, not a directory")(
    lambda tmp: train(tmp, f"run.output_dir={write(tmp, 'f', 'x')}"))


@case("output", "`run.output_dir` holding a finished run", "cli",
      r"run.output_dir <tmp>/run already holds a finished run of model 'toy_mlp'.*--overwrite")
def _(tmp: Path) -> list[str]:
    trained(tmp)
    return train(tmp, "model.hidden=16")


@case("output", "`run.output_dir` holding a run without `checkpoints/`", "cli",
      r"already holds a finished run of model 'toy_mlp' \(config.yaml, model.safetensors\)")
def _(tmp: Path) -> list[str]:
    import shutil

    shutil.rmtree(trained(tmp) / "checkpoints")
    return train(tmp)


@case("output", "`run.output_dir` being written by another process", "cli",
      r"is being written by another vlmkit process \(pid 1 on")
def _(tmp: Path) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / ".vlmkit.lock").write_text(f"1 {os.uname().nodename}\n")  # pid 1 is always alive
    return train(tmp)


ref("output", "`vlmkit evaluate` aimed at a training run",
    "tests/test_reliability.py::test_evaluate_writes_its_own_directory_and_warns_when_untrained", "evaluations")
ref("output", "`vlmkit evaluate` without `--checkpoint`",
    "tests/test_reliability.py::test_evaluate_writes_its_own_directory_and_warns_when_untrained", "NO TRAINED WEIGHTS")
ref("output", "`--overwrite` and the new run fails", "tests/test_reliability.py::test_a_finished_run_is_not_overwritten"
    "_without_overwrite", ".previous")


# --- running and rendering --------------------------------------------------------------------------------------------
def normalise(text: str, tmp: Path) -> str:
    import socket

    return text.replace(str(tmp), "<tmp>").replace(str(REPO), "<repo>").replace(f" on {socket.gethostname()})",
                                                                                 " on <host>)")


def execute(c: Case, tmp: Path) -> tuple[int, str]:
    """(exit status, the message) of a ``cli`` or ``py`` case."""
    from vlmkit.errors import VlmkitError

    if c.kind == "py":
        try:
            c.run(tmp)
        except VlmkitError as e:
            return 2, normalise(" ".join(str(e).split()), tmp)
        raise AssertionError(f"{c.what}: no error raised")
    from vlmkit.cli import main

    argv = c.run(tmp)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = main(argv)
    lines = [line for line in err.getvalue().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, (c.what, err.getvalue()[-2000:])
    return status, normalise(lines[0][len("error: "):], tmp)


def render(messages: dict[int, str]) -> str:
    rows = ["# Reliability: what vlmkit says for bad input and faults", "",
            "Generated by `python tests/reliability_cases.py > docs/reliability.md` from the cases tests/"
            "test_reliability_table.py runs; the test fails when this file differs from the behaviour. `<tmp>` "
            "stands for the folder the input was in. Commands print the message after `error: ` on one stderr line "
            "and exit with the status shown (2: bad input, 1: another exception, 130: interrupted); under torchrun "
            "the line reads `error: [rank N] ...` (vlmkit/failures.py). Rows marked *test* need their own "
            "process (torchrun, signals, a full disk); the named test asserts the text shown.", "",
            f"{len(CASES)} cases.", "", "| # | area | case | status | message |", "|---|---|---|---|---|"]
    for i, c in enumerate(CASES, 1):
        if c.kind == "test":
            text = f"*test* `{c.run}` asserts “{c.needle}”"
            status = ""
        else:
            text, status = messages[i], str(c.status)
        rows.append(f"| {i} | {c.area} | {c.what} | {status} | {text.replace('|', chr(92) + '|')} |")
    return "\n".join(rows) + "\n"


def run_all(root: Path) -> dict[int, str]:
    messages = {}
    for i, c in enumerate(CASES, 1):
        if c.kind == "test":
            continue
        tmp = root / f"case{i}"
        tmp.mkdir(parents=True)
        cwd = os.getcwd()
        try:
            os.chdir(tmp)
            status, message = execute(c, tmp)
        finally:
            os.chdir(cwd)
        assert status == c.status, (c.what, status, message)
        assert re.search(c.needle, message), (c.what, c.needle, message)
        messages[i] = message
    return messages


def survey(root: Path) -> None:
    """Every case's status and message, mismatches marked (for writing the needles)."""
    for i, c in enumerate(CASES, 1):
        if c.kind == "test":
            continue
        tmp = root / f"case{i}"
        tmp.mkdir(parents=True)
        try:
            status, message = execute(c, tmp)
            ok = status == c.status and re.search(c.needle, message)
        except BaseException as e:  # noqa: BLE001 - a survey reports everything
            status, message, ok = -1, f"{type(e).__name__}: {e}", False
        print(f"{'ok ' if ok else 'BAD'} {i} {c.what}: [{status}] {message}", file=sys.stderr)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        if sys.argv[1:] == ["--survey"]:
            survey(Path(d))
        else:
            print(render(run_all(Path(d))), end="")
