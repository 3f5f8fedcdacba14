"""benchmarks/gpu_suite.py at tiny size on the CPU: every row runs and reports, and its FLOP formula matches what
torch's FLOP counter sees (so neither the script nor its MFU figure can rot while no GPU is at hand)."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_suite  # noqa: E402

TRAIN_ROWS = ("lavin_train", "lavin_train_ckpt", "flamingo_train", "flamingo_train_ckpt")
GEN_ROWS = ("lavin_gen_b1", "lavin_gen_b16", "lavin_gen_b64", "flamingo_gen", "flamingo_gen_cache")
CACHE_LANDED = importlib.util.find_spec("vlmkit.engine.vision_cache") is not None


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The command line's ``main`` in this process (its imports are paid once), one thread: the tiny matmuls gain
    nothing from two, and a shared 2-core machine makes two threads wait on each other."""
    out = tmp_path_factory.mktemp("gpu_suite")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    capture = io.StringIO()
    try:
        with contextlib.redirect_stdout(capture):
            gpu_suite.main(["--size", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return {"json": json.loads((out / "gpu_suite.json").read_text()), "md": (out / "gpu_suite.md").read_text(),
            "stdout": capture.getvalue()}


def test_every_row_reports_positive_figures(suite: dict) -> None:
    report = suite["json"]
    results = report["results"]
    assert set(results) == set(TRAIN_ROWS + GEN_ROWS)
    for key in TRAIN_ROWS + GEN_ROWS:
        row = results[key]
        if key == "flamingo_gen_cache" and not CACHE_LANDED:
            assert "vision cache not available" in row["error"]
            continue
        assert row["error"] is None, (key, row["error"])
        assert row["tokens_per_s"] > 0 and row["s_per_step"] > 0, key
        assert "peak_memory_gb" in row and row["peak_memory_gb"] is None, key  # CPU: no CUDA allocator figure
    for key in TRAIN_ROWS:
        row = results[key]
        assert row["tflops"] > 0 and row["flops_per_step"] > 0 and row["trainable_params"] > 0, key
        assert row["mfu"] is None and row["batch"] == [4, 64], key  # no known peak for a CPU
    for key in GEN_ROWS:
        if results[key]["error"] is None:
            assert results[key]["samples_per_s"] > 0 and results[key]["new_tokens"] >= 1, key
    stats = results["flamingo_gen_cache"].get("cache_stats") or {}
    if "hits" in stats:  # the warm-up cached the demo images; the timed call hit them
        assert stats["hits"] > 0 and stats["misses"] > 0, stats
    meta = report["meta"]
    assert meta["torch"] == torch.__version__ and meta["transformers"] and meta["date"] and meta["gpu"] is None
    assert report["projection"]["hours"] > 0 and report["projection"]["epochs"] == 20
    assert len(report["goals"]) == 5 and all(g["pass"] is None for g in report["goals"])  # goals are for 7b
    assert "2 N T" in report["flop_formula"]


def test_markdown_lists_every_row(suite: dict) -> None:
    for text in (suite["md"], suite["stdout"]):
        for row in suite["json"]["results"].values():
            assert f"| {row['label']} |" in text, row["label"]
        for goal in suite["json"]["goals"]:
            assert f"| {goal['goal']} |" in text
        assert "Projection: 20 epochs x 3,182 steps of 4" in text


@pytest.mark.parametrize("kind", ["lavin", "flamingo"])
def test_flop_formula_matches_flop_counter(kind: str) -> None:
    """Eager LM attention, SDPA's math path and no fused MHA make every matmul visible to FlopCounterMode; it then
    counts what ran: non-causal LM attention (the suite counts the causal half) and the first CLIP adapter without
    an input gradient and the routers (the suite counts 6 N T for every trainable weight but the one-token routers):
    0.04 % at this size."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    spec = gpu_suite.SIZES["tiny"]
    with tempfile.TemporaryDirectory() as tmp:
        words = gpu_suite.make_tokenizer(Path(tmp) / "tokenizer.model", spec["vocab"])
        model = gpu_suite.build(kind, spec, Path(tmp), torch.device("cpu"), "float32").train()
    lm = model.llm if kind == "lavin" else model.lang_encoder
    lm.config._attn_implementation = "eager"
    batch = (gpu_suite.lavin_batch(model, spec, words, spec["batch"], True) if kind == "lavin"
             else gpu_suite.flamingo_batch(model, spec, words, True))
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(batch)["loss"].backward()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    formula = (gpu_suite.lavin_flops if kind == "lavin" else gpu_suite.flamingo_flops)(model, batch)
    lengths = batch["attention_mask"].sum(1)
    per_pair = 12 * lm.config.hidden_size * lm.config.num_hidden_layers
    non_causal = formula + per_pair * int((lengths * lengths - lengths * (lengths + 1) // 2).sum())
    assert non_causal == pytest.approx(counter.get_total_flops(), rel=1e-3)


def test_a_failed_row_or_build_is_recorded_and_the_rest_still_run() -> None:
    def out_of_memory(model: object) -> dict:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    results: dict = {}
    rows = [("a", "A", out_of_memory), ("b", "B", lambda m: {"s_per_step": 1.0})]
    gpu_suite.run_model(results, lambda: "model", rows)
    gpu_suite.run_model(results, lambda: 1 / 0, [("c", "C", lambda m: {"s_per_step": 1.0})])
    assert results["a"] == {"label": "A", "error": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"}
    assert results["b"] == {"label": "B", "s_per_step": 1.0, "error": None}
    assert results["c"] == {"label": "C", "error": "model build failed: ZeroDivisionError: division by zero"}
    proj = gpu_suite.projection(results)
    meta = {"size": "7b", "gpu": "NVIDIA H100 80GB HBM3", "device": "cuda", "date": "d", "torch": "t",
            "transformers": "t", "open_clip": "o", "cuda": "c", "peak_tflops": 989.0, "steps": 1, "warmup": 0}
    report = {"meta": meta,
              "results": results, "projection": proj, "goals": gpu_suite.goals(results, proj, "7b")}
    table = gpu_suite.markdown(report)
    assert "| A | - | - | - | - | - | - | RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB |" in table
    assert proj["hours"] is None and all(g["pass"] is None for g in report["goals"])  # nothing measured: no verdict
