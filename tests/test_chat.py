"""vlmkit chat in the terminal: a trained tiny LaVIN answers about images through stdin/stdout (it looks: another
image, another answer), commands and bad input behave, the history cut is shown; a tiny OpenFlamingo chats too."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, assert_one_error_line, run_tool
from vlmkit.chat.formats import Turn, parse_question
from vlmkit.chat.settings import GenerationSettings
from vlmkit.errors import ConfigError, DataError

COLOR_OPTIONS = ["red", "green", "blue", "yellow"]


def chat(args: list[str], lines: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """tools/chat.py with ``lines`` on its standard input (as a user would pipe them)."""
    cmd = [sys.executable, str(REPO / "tools/chat.py"), *args]
    return subprocess.run(cmd, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "2"})


def replies(stdout: str) -> list[str]:
    return [line[len("assistant: "):] for line in stdout.splitlines() if line.startswith("assistant: ")]


def error_lines(stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert all(line.startswith("error: ") for line in lines), stderr
    return lines


@pytest.fixture(scope="module")
def color_images(quickstart_run: dict) -> list[tuple[Path, str]]:
    """Two test-split colour questions whose right answers differ: (image path, answer letter)."""
    data = quickstart_run["data"]
    problems = json.loads((data / "problems.json").read_text())
    test_ids = json.loads((data / "pid_splits.json").read_text())["test"]
    picked: list[tuple[Path, str]] = []
    for pid in test_ids:
        p = problems[pid]
        if p.get("image") and p["question"].startswith("Which color") and p["choices"] == COLOR_OPTIONS:
            letter = "ABCD"[p["answer"]]
            if letter not in {lt for _, lt in picked}:
                picked.append((data / "images" / "test" / pid / p["image"], letter))
        if len(picked) == 2:
            return picked
    raise AssertionError("the generated test split has no two colour questions with different answers")


QUESTION = "Which color is the shape in the picture? | " + " | ".join(COLOR_OPTIONS)


def test_answers_about_the_image_and_another_image_changes_the_answer(quickstart_run: dict,
                                                                      color_images: list) -> None:
    (first, a), (second, b) = color_images
    res = chat(["--run", str(quickstart_run["out"])],
               [f"/image {first}", QUESTION, "/reset", f"/image {second}", QUESTION, "/quit", "never read"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert error_lines(res.stderr) == []
    assert replies(res.stdout) == [f"The answer is {a}.", f"The answer is {b}."], res.stdout
    assert "* image 1 attached" in res.stdout and "(32x32)" in res.stdout
    assert "ScienceQA prompt format QCM-A" in res.stdout  # the run's own format


def test_commands_and_bad_input_are_one_line_each(quickstart_run: dict, color_images: list,
                                                  tmp_path: Path) -> None:
    (image, letter), _ = color_images
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(image.read_bytes()[:60])
    big = tmp_path / "big.png"
    from PIL import Image

    Image.new("RGB", (300, 300)).save(big)
    lines = ["/image /no/such/file.png", f"/image {not_image}", f"/image {truncated}", f"/image {big}", "/image",
             "/set top_p 2", "/set num_beams 2.5", "/set temperature warm", "/set color 1", "/set top_p", "/frobnicate",
             "   ", " | red", "q | a | b | c | d | e | f",
             f"/image {image}", QUESTION, "/set max_new_tokens 2", QUESTION, "/set max_new_tokens 8",
             "/set num_beams 3", QUESTION, "/settings", "/prompt", "/help"]
    res = chat(["--run", str(quickstart_run["out"]), "--max-image-pixels", "10000"], lines)
    assert res.returncode == 0, res.stderr[-2000:]
    errors = error_lines(res.stderr)
    expected = ["image not found: /no/such/file.png", "notes.png is not an image", "cut.png is not an image",
                "90,000 pixels; the limit is 10,000", "/image needs a path",
                "top_p must be a number in (0, 1], got '2'",
                "num_beams must be an integer in [1, 8], got '2.5'", "temperature must be a number in [0, 5]",
                "unknown setting 'color'", "/set takes a name and a value", "unknown command '/frobnicate'",
                "empty question", "the prompt format labels at most 5"]
    assert len(errors) == len(expected), errors
    for line, needle in zip(errors, expected):
        assert needle in line, (needle, line)
    # max_new_tokens cuts the reply; beam search answers as greedy does here
    assert replies(res.stdout) == [f"The answer is {letter}.", "The answer", f"The answer is {letter}."]
    assert "num_beams=3 max_new_tokens=8" in res.stdout
    assert "Options: (A) red (B) green (C) blue (D) yellow" in res.stdout  # /prompt shows the model input
    assert "/reset" in res.stdout  # /help


def test_history_goes_into_the_context_and_its_cut_is_shown(quickstart_run: dict, color_images: list) -> None:
    (image, letter), _ = color_images
    res = chat(["--run", str(quickstart_run["out"])], [f"/image {image}"] + [QUESTION] * 8 + ["/prompt"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert error_lines(res.stderr) == []
    assert len(replies(res.stdout)) == 8
    cut = [line for line in res.stdout.splitlines() if line.startswith("* history cut")]
    assert cut and "oldest turn(s) left out to fit 160 tokens" in cut[0], res.stdout
    dropped, kept = map(int, re.search(r"the (\d+) oldest .* \((\d+) earlier turn", cut[-1]).groups())
    assert dropped >= 1 and dropped + kept == 7, cut[-1]  # 7 turns before the 8th question
    context = re.search(r"^Context: (.*)$", res.stdout, re.M).group(1)  # /prompt: what the model saw last
    assert context.count("Question: Which color") == kept and f"Answer: The answer is {letter}." in context, context


def test_run_errors_are_one_line(quickstart_run: dict, tmp_path: Path) -> None:
    assert_one_error_line(run_tool([str(REPO / "tools/chat.py"), "--run", str(tmp_path / "nope")]),
                          "run directory not found")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((quickstart_run["out"] / "config.yaml").read_text())
    assert_one_error_line(run_tool([str(REPO / "tools/chat.py"), "--run", str(unfinished)]),
                          "has not finished training", "best.safetensors")
    assert_one_error_line(run_tool([str(REPO / "tools/chat.py")]), "--run RUN_DIR")


def test_web_without_gradio_names_the_extra(quickstart_run: dict, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    from vlmkit.chat import chat_main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio → ImportError
    assert chat_main(["--run", str(quickstart_run["out"]), "--web"], prog="vlmkit chat") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "vlmkit[chat]"' in err[0], err


def test_reply_streams_in_pieces(quickstart_run: dict, color_images: list) -> None:
    from vlmkit.chat.engine import ChatEngine, ChatSession

    (image, letter), _ = color_images
    session = ChatSession(ChatEngine.load(run_dir=str(quickstart_run["out"])))
    session.attach_image(image)
    reply = session.ask(QUESTION)
    pieces = list(reply.stream())
    assert len(pieces) >= 3 and "".join(pieces).strip() == reply.text == f"The answer is {letter}.", pieces
    assert [t.answer for t in session.turns] == [reply.text]
    session.set("num_beams", 2)  # beam search cannot stream: one piece
    assert list(session.ask(QUESTION).stream()) == [f"The answer is {letter}."]


def test_settings_and_question_syntax() -> None:
    settings = GenerationSettings.from_run({"max_new_tokens": 8, "num_beams": 1, "length_penalty": 0.0})
    assert settings.max_new_tokens == 8 and settings.with_value("temperature", "0.7").temperature == 0.7
    assert settings.with_value("num_beams", "3.0").num_beams == 3
    for name, value in [("top_p", 0), ("max_new_tokens", 0), ("temperature", "nan"), ("num_beams", 9)]:
        with pytest.raises(ConfigError, match=name):
            settings.with_value(name, value)
    assert parse_question("Which one? | a |b") == ("Which one?", ["a", "b"])
    assert parse_question("plain") == ("plain", [])
    with pytest.raises(DataError, match="empty option"):
        parse_question("q | a | ")
    assert Turn("q").image is None


# --------------------------------------------------------------------------------------------------- OpenFlamingo
@pytest.fixture(scope="module")
def flamingo_run(tmp_path_factory: pytest.TempPathFactory, spm_tokenizer_path: Path) -> dict:
    """A tiny OpenFlamingo project (VQAv2 template) and weights moved off their initial values, as if trained."""
    from vlmkit.config import load_config
    from vlmkit.engine.checkpoint import save_weights
    from vlmkit.registry import MODELS

    root = tmp_path_factory.mktemp("flamingo_chat")
    project = yaml.safe_load((REPO / "projects/quickstart/flamingo_vqav2_tiny.yaml").read_text())
    project["model"]["lm"]["tokenizer"] = str(spm_tokenizer_path)
    project["datasets"]["vqav2"]["root"] = str(root / "no_data_needed")
    cfg_path = root / "project.yaml"
    cfg_path.write_text(yaml.safe_dump(project))
    model = MODELS.build(load_config(cfg_path).model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.2 * torch.randn(param.shape, generator=gen))
    weights = root / "model.safetensors"
    save_weights(model.trainable_state_dict(), weights)
    from PIL import Image

    images = []
    for i, color in enumerate(["red", "blue"]):
        Image.new("RGB", (40, 40), color).save(root / f"{color}.png")
        images.append(root / f"{color}.png")
    return {"cfg": cfg_path, "weights": weights, "images": images}


def test_openflamingo_chats_with_interleaved_images(flamingo_run: dict) -> None:
    red, blue = flamingo_run["images"]
    res = chat(["--cfg-path", str(flamingo_run["cfg"]), "--checkpoint", str(flamingo_run["weights"])],
               ["what color is it?", f"/image {red}", "what color is it?", "and now?", f"/image {blue}",
                "what color is it?", "/prompt"])
    assert res.returncode == 0, res.stderr[-2000:]
    errors = error_lines(res.stderr)
    assert len(errors) == 1 and "attach one first" in errors[0], errors
    answers = replies(res.stdout)
    assert len(answers) == 3 and all(answers), res.stdout
    prompt = res.stdout.split("* last model input:\n", 1)[1]
    # three chunks, two image tags (the follow-up about the same image has none), earlier answers as context
    assert prompt.startswith(f"<image>Question:what color is it? Short answer:{answers[0]}<|endofchunk|>"
                             f"Question:and now? Short answer:{answers[1]}<|endofchunk|><image>"), prompt
    assert prompt.count("<image>") == 2 and prompt.rstrip().endswith("Short answer:"), prompt
