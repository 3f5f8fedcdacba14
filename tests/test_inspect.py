"""`vlmkit inspect RUN_DIR`: the per-sample records of an evaluation as a table (filters --split, --wrong, --category,
--n) and as a self-contained HTML page; one error line for a run without records. Hand-written record files only."""
from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from conftest import assert_one_error_line, run_tool
from vlmkit.inspect import inspect_main

DEMO = "<image>Question:what shape is shown? Short answer:square<|endofchunk|>\n"


def _image(path: Path, colour: tuple[int, int, int], size: int = 320) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size // 2), colour).save(path)
    return str(path)


def _write(path: Path, items: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    red = _image(tmp_path / "images" / "red.png", (220, 20, 20))
    demo = _image(tmp_path / "images" / "demo.png", (20, 20, 220))
    vqa = [
        {"id": "101", "index": 0, "prompt": DEMO + "<image>Question:what color is the circle? Short answer:",
         "demo_ids": ["7"], "generation": "red<|endofchunk|>", "prediction": "red", "reference": ["red"] * 10,
         "score": 1.0, "unparsed": False, "images": [demo, red], "category": ["other"]},
        {"id": "102", "index": 1, "prompt": DEMO + "<image>Question:how many circles are there? Short answer:",
         "demo_ids": ["8"], "generation": "3 Question", "prediction": "3", "reference": ["2"] * 7 + ["3"] * 3,
         "score": 0.9, "unparsed": False, "images": [demo, str(tmp_path / "images" / "gone.png")],
         "category": ["number"]},
        {"id": "103", "index": 2, "prompt": DEMO + "<image>Question:is there a <b>dog</b>? Short answer:",
         "demo_ids": ["9"], "generation": "<script>alert(1)</script>", "prediction": "<script>alert(1)</script>",
         "reference": ["no"] * 10, "score": 0.0, "unparsed": False, "images": [demo, red], "category": ["yes/no"]},
    ]
    sqa = [
        {"id": "sqa-1", "index": 0, "prompt": "Question: Which colour is the square?\nOptions: (A) red (B) blue\n"
         "Answer: The answer is", "generation": "The answer is B.", "prediction": 1,
         "reference": {"answer": 1, "choices": ["red", "blue"]}, "score": 1.0, "unparsed": False,
         "category": ["NAT", "IMG", "G1-6"]},
        {"id": "sqa-2", "index": 1, "prompt": "Question: Which word is a noun?\nOptions: (A) run (B) table\n"
         "Answer: The answer is", "generation": "The answer is A.", "prediction": 0,
         "reference": {"answer": 1, "choices": ["run", "table"]}, "score": 0.0, "unparsed": False,
         "category": ["LAN", "NO", "G7-12"]},
        {"id": "sqa-3", "index": 2, "prompt": "Question: Which shape has three sides?\nOptions: (A) circle "
         "(B) triangle (C) square\nAnswer: The answer is", "generation": "I do not know", "prediction": 2,
         "reference": {"answer": 1, "choices": ["circle", "triangle", "square"]}, "score": 0.0, "unparsed": True,
         "category": ["NAT", "IMG", "G7-12"]},
    ]
    _write(run / "samples" / "vqav2_val.jsonl", vqa)
    _write(run / "samples" / "scienceqa_test.jsonl", sqa)
    (run / "samples" / "vqav2_val.meta.json").write_text("{}")  # the record's fingerprint file is not a record file
    return run


def _inspect(capsys, *argv) -> tuple[int, str, str]:
    status = inspect_main([str(a) for a in argv], prog="vlmkit inspect")
    out, err = capsys.readouterr()
    return status, out, err


def _row(out: str, sample_id: str) -> str:
    rows = [line for line in out.splitlines() if line.startswith(sample_id + " ")]
    assert len(rows) == 1, (sample_id, out)
    return rows[0]


def test_table_shows_prompt_tail_generation_answer_and_verdict(run_dir, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    status, out, err = _inspect(capsys, run_dir, "--split", "val")
    assert status == 0, err
    assert "scienceqa_test" not in out
    header = out.splitlines()[0]
    assert header == "== vqav2_val: 3 items, mean score 0.633; 3 selected, 3 shown =="
    columns = [c.strip() for c in out.splitlines()[1].split(" | ")]
    assert columns == ["id", "prompt (end)", "generation", "prediction", "reference", "result"]
    right = [c.strip() for c in _row(out, "101").split(" | ")]
    # the query after the last image marker, not the demo before it
    assert right == ["101", "Question:what color is the circle? Short answer:", "red<|endofchunk|>", "red",
                     "red ×10", "right"]
    partly = [c.strip() for c in _row(out, "102").split(" | ")]
    assert partly[3:] == ["3", "2 ×7 / 3 ×3", "partly 0.90"]
    assert [c.strip() for c in _row(out, "103").split(" | ")][-1] == "wrong"
    assert "what shape is shown" not in out


def test_wrong_category_and_n_filters(run_dir, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    status, out, _ = _inspect(capsys, run_dir, "--split", "val", "--wrong")
    assert status == 0
    ids = [line.split(" ")[0] for line in out.splitlines()[3:]]
    assert ids == ["102", "103"]  # score < 1: partial VQA credit counts as not right
    assert "2 selected by --wrong, 2 shown" in out.splitlines()[0]

    status, out, _ = _inspect(capsys, run_dir, "--split", "test", "--category", "img")
    assert status == 0
    assert out.splitlines()[0] == "== scienceqa_test: 3 items, mean score 0.333; 2 selected by --category img, 2 shown =="
    right = [c.strip() for c in _row(out, "sqa-1").split(" | ")]
    assert right[2:] == ["The answer is B.", "(B) blue", "(B) blue", "right"]
    unparsed = [c.strip() for c in _row(out, "sqa-3").split(" | ")]
    assert unparsed[3:] == ["(C) square", "(B) triangle", "unparsed, wrong"]
    assert "sqa-2" not in out

    status, out, _ = _inspect(capsys, run_dir, "--split", "test", "--wrong", "--category", "G7-12", "--n", "1")
    assert status == 0
    assert "2 selected by --wrong --category G7-12, 1 shown" in out
    assert "sqa-2" in out and "sqa-3" not in out

    status, out, _ = _inspect(capsys, run_dir, "--category", "SOC")
    assert status == 0
    assert out.count("(no item matches)") == 2  # both files listed, nothing selected


def test_every_file_without_split_and_narrow_terminal(run_dir, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    status, out, _ = _inspect(capsys, run_dir)
    assert status == 0
    assert [line for line in out.splitlines() if line.startswith("==")] == [
        "== scienceqa_test: 3 items, mean score 0.333; 3 selected, 3 shown ==",
        "== vqav2_val: 3 items, mean score 0.633; 3 selected, 3 shown ==",
    ]
    table = [line for line in out.splitlines() if not line.startswith("==")]
    assert max(len(line) for line in table) <= 80
    assert "…" in out  # long cells are cut, not wrapped


def test_html_page_embeds_thumbnails_and_escapes_text(run_dir, capsys, tmp_path):
    page = tmp_path / "report" / "inspect.html"
    status, out, err = _inspect(capsys, run_dir, "--split", "val", "--html", page)
    assert status == 0, err
    assert out.splitlines()[-1] == f"wrote {page} (3 items)"
    text = page.read_text(encoding="utf-8")
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "is there a &lt;b&gt;dog&lt;/b&gt;?" in text
    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', text)
    assert len(uris) == 5  # 3 items × 2 images, one of them missing
    red = Image.open(io.BytesIO(base64.b64decode(uris[1])))
    assert max(red.size) <= 160 and red.size == (160, 80)
    r, g, b = red.convert("RGB").getpixel((80, 40))
    assert r > 180 and g < 60 and b < 60
    assert "image not found:<br>" in text and "gone.png" in text
    assert text.count('class="item right"') == 1 and text.count('class="item wrong"') == 1
    assert text.count('class="item partly"') == 1
    assert "demo ids</b></td><td>7</td>" in text
    assert "src=\"http" not in text and "<link" not in text  # self-contained


def test_missing_records_name_the_command(tmp_path, capsys):
    run = tmp_path / "train_run"
    (run / "checkpoints").mkdir(parents=True)
    page = tmp_path / "page.html"
    status, out, err = _inspect(capsys, run, "--html", page)
    assert status == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no per-sample records in")
    assert "`vlmkit evaluate --cfg-path <yaml>" in lines[0]
    assert not page.exists()

    sweep = tmp_path / "sweep"
    (sweep / "shots4" / "trial0" / "samples").mkdir(parents=True)
    status, _, err = _inspect(capsys, sweep)
    assert status == 2 and f"inspect one point, e.g. {sweep / 'shots4' / 'trial0'}" in err


def test_bad_arguments_and_damaged_file(run_dir, capsys):
    status, _, err = _inspect(capsys, run_dir, "--split", "train")
    assert status == 2 and err.strip() == ("error: --split train: " + str(run_dir / "samples") +
                                           " has records of scienceqa_test, vqav2_val only")
    status, _, err = _inspect(capsys, run_dir, "--n", "-1")
    assert status == 2 and "--n must be >= 0" in err
    with open(run_dir / "samples" / "vqav2_val.jsonl", "a") as f:
        f.write('{"id": "104", "prompt": \n')
    status, _, err = _inspect(capsys, run_dir, "--split", "val")
    assert status == 2 and "vqav2_val.jsonl line 4 is not JSON" in err and len(err.strip().splitlines()) == 1


def test_command_line_contract(tmp_path):
    """As a process: exit status 2, one error line, no traceback."""
    code = "import sys; from vlmkit.inspect import inspect_main; sys.exit(inspect_main(sys.argv[1:], 'vlmkit inspect'))"
    res = run_tool(["-c", code, str(tmp_path / "nowhere")])
    assert_one_error_line(res, "is not a directory")
