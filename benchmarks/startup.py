"""Start-up times of the ``vlmkit`` command: ``--help``, ``list``, ``import vlmkit.cli`` and the time from process start
to the end of the first optimizer step of the tiny CPU quickstart (``projects/quickstart/lavin_sqa_tiny.yaml``).

    python benchmarks/startup.py [--runs 5] [--train-runs 3] [--threads N] [--repo PATH] [--no-importtime]

Every measurement is a fresh subprocess; the table gives the median (and min / max) of the runs, after one warm-up run
of each command that is not counted (it fills the OS file cache and the image-check manifest). Everything a run writes
— the generated ScienceQA data, the run folders, the image-check cache — goes into a temporary directory, never into the
repository; the subprocesses run with that directory as their working directory.

First training step: the quickstart runs through ``tools/train.py`` (the README's command) with ``run.max_steps=1
run.log_every=1 run.test_splits=[]``. The clock starts just before the process is spawned; the output is read as it
comes and timestamped when the trainer's progress bar appears at 0 % (drawn right before the first step: everything
up to here is start-up — interpreter, imports, config, model, data, image check) and when its log line of step 1
(``epoch 0 step 1 loss ...``, written right after the optimizer step) arrives. Nothing after the step is in those two
numbers; the process's exit (it then saves the final weights) is a third row.

``--repo PATH`` measures another checkout of vlmkit with the same interpreter (its tree goes first on PYTHONPATH), e.g.
a copy from before a change. With ``-X importtime`` (unless ``--no-importtime``) one more run of ``vlmkit list`` and of
the quickstart prints the packages that cost the most import time (self time summed per top-level package) and the
imports that pulled the most in (the roots of the import trees, with their cumulative time). ``-X importtime`` logs
``import`` statements only: a module loaded with ``importlib.import_module`` (a registry's first ``get`` of a built-in,
the command dispatch) is missing from it, while the modules it imports show up as roots.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = Path("projects") / "quickstart" / "lavin_sqa_tiny.yaml"
LOOP_START = re.compile(r"train:\s+0%")  # the trainer's progress bar, drawn just before the first step
FIRST_STEP = re.compile(r"\bepoch 0 step 1 loss ")  # its log line of step 1, written right after the optimizer step
TRAIN_OPTIONS = ("run.max_steps=1", "run.log_every=1", "run.test_splits=[]", "run.val_splits=[]")
VERSIONS = ("torch", "transformers", "open_clip_torch", "timm", "torchvision")


class Bench:
    """Spawns the measured commands: the interpreter running this script, the checkout ``repo``, scratch ``tmp``."""

    def __init__(self, repo: Path, tmp: Path, threads: int | None = None) -> None:
        self.repo, self.tmp = repo, tmp
        path = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "PYTHONPATH": path,
                    "VLMKIT_CACHE_DIR": str(tmp / "cache"), "VLMKIT_QUICKSTART_ROOT": str(tmp / "sqa_tiny"),
                    "PYTHONUNBUFFERED": "1"}
        if threads:
            self.env["OMP_NUM_THREADS"] = str(threads)
        script = Path(sys.executable).parent / "vlmkit"
        # the installed console script when there is one (what a user types); it imports vlmkit from PYTHONPATH first
        self.vlmkit = [sys.executable, str(script)] if script.is_file() else [sys.executable, "-m", "vlmkit"]
        self.n_train = 0

    def run(self, args: Sequence[str], importtime: bool = False) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-X", "importtime", *args[1:]] if importtime else list(args)
        res = subprocess.run(cmd, cwd=self.tmp, env=self.env, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
        return res

    def timed(self, args: Sequence[str]) -> float:
        start = time.perf_counter()
        self.run(args)
        return time.perf_counter() - start

    def train_command(self) -> list[str]:
        self.n_train += 1
        out = self.tmp / "runs" / f"run{self.n_train}"
        return [sys.executable, str(self.repo / "tools" / "train.py"), "--cfg-path", str(self.repo / QUICKSTART),
                "--options", f"run.output_dir={out}", *TRAIN_OPTIONS]

    def first_step(self) -> tuple[float, float, float]:
        """Seconds from spawn to the training loop's start (the progress bar at 0 %), to the step-1 log line, and to the
        process's exit, of one quickstart run. The output is read as it comes (the bar's line has no newline yet)."""
        cmd = self.train_command()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=self.tmp, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        seen, marks = "", {}
        while chunk := os.read(proc.stdout.fileno(), 65536):
            seen += chunk.decode("utf-8", "replace")
            for key, pattern in (("loop", LOOP_START), ("step", FIRST_STEP)):
                if key not in marks and pattern.search(seen):
                    marks[key] = time.perf_counter() - start
        status = proc.wait()
        total = time.perf_counter() - start
        if status != 0 or len(marks) < 2:
            raise SystemExit(f"{' '.join(cmd)} exited {status} without the progress bar and the step-1 log line:\n"
                             f"{seen[-4000:]}")
        return marks["loop"], marks["step"], total

    def prepare_data(self) -> None:
        self.run([*self.vlmkit, "prepare-data", "synthetic-scienceqa", "--out", str(self.tmp / "sqa_tiny")])


def median_row(name: str, times: Sequence[float]) -> str:
    return (f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} | {len(times)} |")


def measure(bench: Bench, runs: int, train_runs: int) -> list[str]:
    """The Markdown rows of the table (each command: one warm-up run, then ``runs`` timed ones)."""
    light = {
        "`vlmkit --help`": [*bench.vlmkit, "--help"],
        "`vlmkit list`": [*bench.vlmkit, "list"],
        '`python -c "import vlmkit.cli"`': [sys.executable, "-c", "import vlmkit.cli"],
    }
    rows = []
    for name, cmd in light.items():
        bench.timed(cmd)
        rows.append(median_row(name, [bench.timed(cmd) for _ in range(runs)]))
    if train_runs:
        bench.first_step()
        results = [bench.first_step() for _ in range(train_runs)]
        for i, what in enumerate(("training loop entered (imports, config, model, data, image check)",
                                  "first optimizer step done", "exit (max_steps 1: also saves the weights)")):
            rows.append(median_row(f"quickstart: process start → {what}", [r[i] for r in results]))
    return rows


def parse_importtime(stderr: str) -> tuple[dict[str, float], list[tuple[float, str]]]:
    """From ``-X importtime`` output: self time (ms) per top-level package, and (cumulative ms, module) of every import
    started outside another import (the top of each import tree: the module whose import pulled in the rest)."""
    per_package: dict[str, float] = defaultdict(float)
    roots = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        try:
            self_us, cumulative_us, name = line[len("import time:"):].split("|")
            per_package[name.strip().split(".")[0]] += int(self_us) / 1e3
        except ValueError:
            continue
        if len(name) - len(name.lstrip()) <= 1:  # one space after "|": not nested in another import
            roots.append((int(cumulative_us) / 1e3, name.strip()))
    return dict(per_package), sorted(roots, reverse=True)


def importtime_report(bench: Bench, top: int) -> list[str]:
    lines = []
    for name, cmd in (("`vlmkit list`", [sys.executable, "-m", "vlmkit", "list"]),
                      ("the quickstart (whole process, max_steps 1)", bench.train_command())):
        per_package, roots = parse_importtime(bench.run(cmd, importtime=True).stderr)
        total = sum(per_package.values())
        lines += ["", f"`-X importtime` of {name}: {total:.0f} ms of imports (-X importtime itself inflates them)",
                  "", "| package (self time summed) | ms | share |", "|---|---:|---:|"]
        for package, ms in sorted(per_package.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"| {package} | {ms:.0f} | {100 * ms / max(total, 1e-9):.0f} % |")
        lines += ["", "| import tree started by (what pulled the rest in) | ms (cumulative) |", "|---|---:|"]
        lines += [f"| `{module}` | {ms:.0f} |" for ms, module in roots[:top]]
    return lines


def environment() -> str:
    versions = []
    for dist in VERSIONS:
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average {load}; "
            + ", ".join(versions))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each light command (default 5)")
    parser.add_argument("--train-runs", type=int, default=3, help="timed quickstart runs (default 3; 0: skip)")
    parser.add_argument("--repo", type=Path, default=REPO, help="the vlmkit checkout to measure (default: this one)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of the measured runs (default: as in this environment; on a machine "
                             "other jobs share, 1 keeps torch's threads from fighting them for the cores)")
    parser.add_argument("--no-importtime", action="store_true", help="skip the -X importtime breakdown")
    parser.add_argument("--top", type=int, default=12, help="packages shown per -X importtime breakdown")
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    if not (repo / "vlmkit" / "cli.py").is_file():
        parser.error(f"{repo} is not a vlmkit checkout (no vlmkit/cli.py)")
    with tempfile.TemporaryDirectory(prefix="vlmkit-startup-") as tmp:
        bench = Bench(repo, Path(tmp), args.threads)
        threads = bench.env.get("OMP_NUM_THREADS", "unset (torch's default)")
        print(f"vlmkit start-up, {repo}; {environment()}; OMP_NUM_THREADS {threads}", flush=True)
        if args.train_runs or not args.no_importtime:
            bench.prepare_data()
        rows = measure(bench, args.runs, args.train_runs)
        print("\n| command | median s | min s | max s | runs |\n|---|---:|---:|---:|---:|")
        print("\n".join(rows), flush=True)
        if not args.no_importtime:
            print("\n".join(importtime_report(bench, args.top)))
        print(f"\nload average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
