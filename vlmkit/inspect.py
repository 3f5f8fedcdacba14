"""``vlmkit inspect RUN_DIR``: what the model answered, item by item, from an evaluation's per-sample records.

    vlmkit inspect runs/flamingo_vqav2_eval/shots4/trial0 --wrong --n 10
    vlmkit inspect runs/lavin_sqa_7b --split test --category IMG --html /tmp/img_items.html

Reads ``RUN_DIR/samples/<dataset>_<split>.jsonl`` (one JSON object per item: id, index, prompt, demo_ids, generation,
prediction, reference, score, unparsed, images, category — vlmkit/tasks/samples.py writes them) and prints the selected
items as a table: the end of the prompt (the question), the raw generation, the parsed answer, the reference and
right/wrong. ``--html FILE`` writes one self-contained page (images embedded as thumbnails, every text escaped).
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmkit.errors import ConfigError, DataError

SAMPLES_DIR = "samples"
WRITTEN_BY = ("per-sample records are written by every evaluation: `vlmkit evaluate --cfg-path <yaml> ...` (or the "
              "evaluations of `vlmkit train`, or each point of a few-shot sweep `vlmkit evaluate ... --shots`)")
IMAGE_TOKEN = "<image>"
THUMBNAIL = 160  # pixels, longer side
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class SampleFile:
    path: Path
    items: list[dict[str, Any]]

    @property
    def name(self) -> str:
        return self.path.stem


# ------------------------------------------------------------------------------------------------------- reading
def find_sample_files(run_dir: Path, split: str | None = None) -> list[Path]:
    """The record files of ``run_dir`` (those of ``split`` only, when given); one-line errors otherwise."""
    if not run_dir.is_dir():
        raise DataError(f"{run_dir} is not a directory; pass the output dir of an evaluation (its {SAMPLES_DIR}/ "
                        "folder holds the per-sample records)")
    folder = run_dir / SAMPLES_DIR
    if not folder.is_dir():
        points = sorted(p.parent.parent.name + "/" + p.parent.name for p in run_dir.glob(f"shots*/trial*/{SAMPLES_DIR}"))
        evaluations = sorted(p.parent.name for p in run_dir.glob(f"evaluations/*/{SAMPLES_DIR}"))
        hint = (f"; this is a few-shot sweep: inspect one point, e.g. {run_dir / points[0]}" if points else
                f"; its evaluations are in {run_dir / 'evaluations'}/, e.g. {run_dir / 'evaluations' / evaluations[-1]}"
                if evaluations else "")
        raise DataError(f"no per-sample records in {run_dir} ({folder} does not exist){hint}; {WRITTEN_BY}")
    files = sorted(p for p in folder.glob("*.jsonl") if p.is_file())
    if not files:
        raise DataError(f"{folder} holds no <dataset>_<split>.jsonl record files; {WRITTEN_BY}")
    if split is None:
        return files
    chosen = [p for p in files if p.stem == split or p.stem.endswith(f"_{split}")]
    if not chosen:
        raise ConfigError(f"--split {split}: {folder} has records of {', '.join(p.stem for p in files)} only")
    return chosen


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The items of one record file, in file order; a line that is not a JSON object is a one-line error."""
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as e:
            raise DataError(f"{path} line {number} is not JSON ({e.msg}); the record file is damaged — rerun the "
                            "evaluation (or `vlmkit evaluate ... --resume`) to rewrite it") from e
        if not isinstance(item, dict):
            raise DataError(f"{path} line {number} is not a JSON object")
        items.append(item)
    return items


# ----------------------------------------------------------------------------------------------------- selecting
def is_wrong(item: Mapping[str, Any]) -> bool:
    """Scored below full credit (VQA accuracy < 1, ScienceQA 0, CIDEr < 1); an unscored item is not 'wrong'."""
    score = item.get("score")
    return isinstance(score, (int, float)) and score < 1


def has_category(item: Mapping[str, Any], category: str) -> bool:
    labels = item.get("category") or []
    if isinstance(labels, str):
        labels = [labels]
    return any(str(label).lower() == category.lower() for label in labels)


def select(items: Sequence[Mapping[str, Any]], wrong: bool = False, category: str | None = None) -> list[dict]:
    return [dict(i) for i in items if (not wrong or is_wrong(i)) and (category is None or has_category(i, category))]


# ----------------------------------------------------------------------------------------------------- rendering
def _choice(index: Any, choices: Sequence[Any]) -> str:
    if isinstance(index, bool) or not isinstance(index, int):
        return str(index)
    letter = LETTERS[index] if 0 <= index < len(LETTERS) else str(index)
    return f"({letter}) {choices[index]}" if 0 <= index < len(choices) else f"({letter}) <no such option>"


def reference_text(item: Mapping[str, Any]) -> str:
    """VQA / captions: the distinct reference answers (with counts when repeated); ScienceQA: the right option."""
    ref = item.get("reference")
    if isinstance(ref, Mapping):
        return _choice(ref.get("answer"), ref.get("choices") or [])
    if isinstance(ref, list):
        counts: dict[str, int] = {}
        for answer in ref:
            counts[str(answer)] = counts.get(str(answer), 0) + 1
        return " / ".join(a if n == 1 else f"{a} ×{n}" for a, n in counts.items())
    return "" if ref is None else str(ref)


def prediction_text(item: Mapping[str, Any]) -> str:
    pred = item.get("prediction")
    ref = item.get("reference")
    if isinstance(ref, Mapping) and isinstance(pred, int) and not isinstance(pred, bool):
        return _choice(pred, ref.get("choices") or [])
    return "" if pred is None else str(pred)


def verdict(item: Mapping[str, Any]) -> str:
    score = item.get("score")
    prefix = "unparsed, " if item.get("unparsed") else ""
    if not isinstance(score, (int, float)):
        return prefix + "not scored" if prefix else "-"
    if score >= 1:
        return prefix + ("right" if score == 1 else f"{score:.2f}")
    if score <= 0:
        return prefix + "wrong"
    return prefix + f"partly {score:.2f}"


def prompt_tail(prompt: str) -> str:
    """The query part of a prompt: what follows its last image marker (the demos come before it)."""
    tail = prompt.rsplit(IMAGE_TOKEN, 1)[-1] if IMAGE_TOKEN in prompt else prompt
    return " ".join(tail.split())


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:max(width - 1, 0)] + "…"


COLUMNS = ("id", "prompt (end)", "generation", "prediction", "reference", "result")


def rows_of(items: Sequence[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    return [(str(i.get("id", "")), prompt_tail(str(i.get("prompt", ""))), str(i.get("generation", "")),
             prediction_text(i), reference_text(i), verdict(i)) for i in items]


def format_table(items: Sequence[Mapping[str, Any]], width: int | None = None) -> str:
    """A plain-text table that fits ``width`` columns (the terminal's); long cells end in '…'."""
    width = width or shutil.get_terminal_size((140, 24)).columns
    rows = rows_of(items)
    natural = [max([len(c)] + [len(" ".join(r[k].split())) for r in rows]) for k, c in enumerate(COLUMNS)]
    # id and result keep their width; the text columns share the rest
    fixed = {0: min(natural[0], 14), 5: min(natural[5], 16)}
    room = max(width - sum(fixed.values()) - 3 * (len(COLUMNS) - 1), 40)
    share = {1: 0.36, 2: 0.22, 3: 0.17, 4: 0.25}
    widths = [fixed.get(k) or max(min(natural[k], int(room * share[k])), len(COLUMNS[k])) for k in range(len(COLUMNS))]
    spare = room - sum(widths[k] for k in share)
    for k in (1, 4, 2, 3):  # hand out what narrow columns left unused
        extra = min(max(spare, 0), natural[k] - widths[k])
        if extra > 0:
            widths[k] += extra
            spare -= extra
    while sum(widths) + 3 * (len(COLUMNS) - 1) > width and max(widths[k] for k in share) > 6:
        widest = max(share, key=lambda k: widths[k])  # a very narrow terminal: the widest text column gives way
        widths[widest] -= 1
    line = " | ".join(_clip(c, w).ljust(w) for c, w in zip(COLUMNS, widths))
    out = [line.rstrip(), "-+-".join("-" * w for w in widths)]
    for row in rows:
        out.append(" | ".join(_clip(c, w).ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(out)


def describe(file: SampleFile, selected: int, shown: int, args: argparse.Namespace) -> str:
    scores = [float(i["score"]) for i in file.items if isinstance(i.get("score"), (int, float))]
    filters = [f for f, on in (("--wrong", args.wrong), (f"--category {args.category}", args.category)) if on]
    mean = f", mean score {sum(scores) / len(scores):.3f}" if scores else ""
    return (f"== {file.name}: {len(file.items)} items{mean}; {selected} selected"
            f"{' by ' + ' '.join(filters) if filters else ''}, {shown} shown ==")


# ---------------------------------------------------------------------------------------------------------- html
def resolve_image(path: str, run_dir: Path) -> Path | None:
    candidate = Path(path)
    for where in ([candidate] if candidate.is_absolute() else [run_dir / candidate, Path.cwd() / candidate]):
        if where.is_file():
            return where
    return None


def thumbnail(path: Path) -> str | None:
    """A base64 ``data:`` URI of a small JPEG of the image (None when it cannot be decoded)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((THUMBNAIL, THUMBNAIL))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=85)
    except Exception:  # an undecodable image is shown as missing, not a failure of the page
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


PAGE_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
.item{border:1px solid #ccc;border-radius:6px;padding:.8em;margin:.8em 0;display:flex;gap:1em}
.item.right{border-left:6px solid #2a2}.item.wrong{border-left:6px solid #c33}.item.partly{border-left:6px solid #d90}
.images{display:flex;gap:.3em;flex-wrap:wrap;max-width:45%}.images figure{margin:0;text-align:center;font-size:.75em}
.images img{border:1px solid #999}.query img{border:3px solid #36c}
pre{white-space:pre-wrap;background:#f6f6f6;padding:.4em;margin:.2em 0;font-size:.85em}
table.kv td{padding:.1em .6em;vertical-align:top}.missing{color:#999;font-size:.75em}"""


def _css_class(item: Mapping[str, Any]) -> str:
    score = item.get("score")
    if not isinstance(score, (int, float)):
        return ""
    return "right" if score >= 1 else "wrong" if score <= 0 else "partly"


def item_html(item: Mapping[str, Any], run_dir: Path) -> str:
    esc = html.escape
    figures = []
    images = [str(p) for p in item.get("images") or []]
    for k, image in enumerate(images):
        query = k == len(images) - 1
        label = "query" if query else f"demo {k + 1}"
        found = resolve_image(image, run_dir)
        uri = thumbnail(found) if found is not None else None
        body = (f'<img src="{uri}" alt="{esc(image)}">' if uri else
                f'<div class="missing">image not found:<br>{esc(image)}</div>')
        figures.append(f'<figure class="{"query" if query else "demo"}">{body}<figcaption>{esc(label)}'
                       f'</figcaption></figure>')
    fields = [("id", str(item.get("id", ""))), ("result", verdict(item)), ("generation", str(item.get("generation", ""))),
              ("prediction", prediction_text(item)), ("reference", reference_text(item))]
    if item.get("category"):
        labels = item["category"]
        fields.append(("category", ", ".join(map(str, labels)) if isinstance(labels, list) else str(labels)))
    if item.get("demo_ids"):
        fields.append(("demo ids", ", ".join(map(str, item["demo_ids"]))))
    table = "".join(f"<tr><td><b>{esc(k)}</b></td><td>{esc(v)}</td></tr>" for k, v in fields)
    return (f'<div class="item {_css_class(item)}"><div class="images">{"".join(figures)}</div>'
            f'<div><table class="kv">{table}</table><pre>{esc(str(item.get("prompt", "")))}</pre></div></div>')


def write_html(path: Path, run_dir: Path, sections: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]) -> None:
    from vlmkit.io import write_text_atomic

    esc = html.escape
    body = []
    for heading, items in sections:
        body.append(f"<h2>{esc(heading)}</h2>")
        body.extend(item_html(i, run_dir) for i in items)
    page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>vlmkit inspect {esc(str(run_dir))}</title>'
            f"<style>{PAGE_STYLE}</style></head><body><h1>vlmkit inspect {esc(str(run_dir))}</h1>\n"
            + "\n".join(body) + "\n</body></html>\n")
    if path.is_dir():
        raise DataError(f"--html {path} is a directory; name the page file, e.g. {path / 'inspect.html'}")
    write_text_atomic(path, page)


# ---------------------------------------------------------------------------------------------------------- main
def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Show an evaluation's answers item by item, from "
                                                            "RUN_DIR/samples/<dataset>_<split>.jsonl.")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="an evaluation's output dir (a few-shot point: <sweep>/shots<N>/trial<t>)")
    parser.add_argument("--split", default=None, help="only this split's records (default: every record file)")
    parser.add_argument("--wrong", action="store_true", help="only items scored below full credit (score < 1)")
    parser.add_argument("--category", default=None, metavar="C",
                        help="only items of this category (ScienceQA NAT/SOC/LAN/TXT/IMG/NO/G1-6/G7-12, VQA answer "
                             "types yes/no, number, other)")
    parser.add_argument("--n", type=int, default=20, metavar="N", help="items to show per file (0: all; default 20)")
    parser.add_argument("--html", type=Path, default=None, metavar="FILE",
                        help="also write a self-contained page of the selected items with their images")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for user errors")
    return parser


def inspect_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``vlmkit inspect``: one-line errors through :func:`vlmkit.cli.guarded`."""
    from vlmkit.cli import guarded

    args = build_parser(prog).parse_args(argv)

    def run(a: argparse.Namespace) -> int:
        if a.n < 0:
            raise ConfigError(f"--n must be >= 0 (0 shows every selected item), got {a.n}")
        files = [SampleFile(p, read_samples(p)) for p in find_sample_files(a.run_dir, a.split)]
        sections = []
        for file in files:
            selected = select(file.items, a.wrong, a.category)
            shown = selected if a.n == 0 else selected[:a.n]
            print(describe(file, len(selected), len(shown), a))
            print(format_table(shown) if shown else "(no item matches)")
            sections.append((f"{file.name} ({len(shown)} of {len(selected)} selected items)", shown))
        if a.html is not None:
            write_html(a.html, a.run_dir, sections)
            print(f"wrote {a.html} ({sum(len(items) for _, items in sections)} items)")
        return 0

    return guarded(run, args)
