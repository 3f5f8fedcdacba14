"""benchmarks/fewshot_throughput.py cannot rot: at toy size (--quick) it builds the model in open-flamingo 2.0.1,
loads it into vlmkit, runs the 8-shot points through both and finds identical generated ids for every vlmkit variant
(vision cache, shared prefill, length grouping on and off). No timing is asserted."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REFERENCE_DIR = Path(os.environ.get("VLMKIT_REFERENCE_DIR", REPO / ".reference" / "open_flamingo"))

pytestmark = pytest.mark.skipif(not (REFERENCE_DIR / "open_flamingo").is_dir(),
                                reason="open-flamingo reference not installed (run tests/reference/install_open_flamingo.sh)")


def test_quick_benchmark_finds_identical_ids(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/fewshot_throughput.py"), "--quick", "--no-sweep",
                           "--shots", "8", "--queries", "4", "--pool", "9", "--batch", "2", "--all-variants",
                           "--json", str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "VLMKIT_REFERENCE_DIR": str(REFERENCE_DIR)})
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(r["point"], r["variant"]) for r in rows} == {
        (p, v) for p in ("8-shot greedy", "8-shot 3 beams")
        for v in ("vlmkit", "vlmkit, no vision cache", "vlmkit, no cache, no shared prefill, no grouping")}
    assert all(r["identical_ids"] and r["vlmkit_samples_per_s"] > 0 and r["reference_samples_per_s"] > 0 for r in rows)
    assert all(r["compared"] + r["generated_image_token"] == 4 and r["compared"] >= 2 for r in rows)
    assert "| 8-shot 3 beams | vlmkit |" in proc.stdout and "0.71 for OpenFlamingo-9B" in proc.stdout
