"""Shared fixtures: a sentencepiece tokenizer trained in-process (LLaMA's id layout: unk 0, bos 1, eos 2, no pad)."""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest

# The image-check manifests of this test session live in a folder of their own (inherited by subprocesses), not in the
# user's ~/.cache/vlmkit.
os.environ.setdefault("VLMKIT_CACHE_DIR", tempfile.mkdtemp(prefix="vlmkit-test-cache-"))

CORPUS_WORDS = (
    "the answer is a b c d e because image context question options response lecture solution "
    "red green blue yellow circle square triangle which color shape is shown in picture what of "
    "following animal plant word sentence map state capital north south east west number one two three "
    "output short caption a photo dog cat on table"
).split()


def train_tokenizer(path: Path, vocab_size: int = 512, seed: int = 0) -> Path:
    """Train a small BPE sentencepiece model (vlmkit's own trainer, LLaMA's ids) on a fixed corpus; write it to ``path``."""
    from vlmkit.data.synthetic import train_sentencepiece

    rng = random.Random(seed)
    sentences = [" ".join(rng.choice(CORPUS_WORDS) for _ in range(12)) + " (A) (B) 0 1 2 3 4 5 6 7 8 9 . , : ? \\n"
                 for _ in range(2000)]
    path.parent.mkdir(parents=True, exist_ok=True)
    return train_sentencepiece(sentences, path, vocab_size)


@pytest.fixture(scope="session")
def spm_tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to a tokenizer.model usable wherever LLaMA's tokenizer.model is expected."""
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model")


# ---------------------------------------------------------------------------------------------------------------------
# Running the real command-line tools (the same commands the README gives).
import subprocess  # noqa: E402
import sys  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_tool(args: list[str], cwd: Path | None = None, env: dict | None = None, timeout: int = 600,
             torchrun: int = 0) -> subprocess.CompletedProcess:
    """Run ``tools/<script>`` (or ``python -m ...``) as a user would; with ``torchrun=N`` under N CPU ranks (gloo)."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                "OMP_NUM_THREADS": "1" if torchrun else os.environ.get("OMP_NUM_THREADS", "2"), **(env or {})}
    cmd = [sys.executable]
    if torchrun:
        cmd += ["-m", "torch.distributed.run", "--nproc_per_node", str(torchrun), "--master_port", str(free_port())]
    cmd += args
    return subprocess.run(cmd, cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def assert_one_error_line(res: subprocess.CompletedProcess, *needles: str) -> str:
    """Bad input's contract: exit status 2, no traceback, one ``error: ...`` line on stderr containing ``needles``."""
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The README quickstart, run once: generated data + tiny LLaMA, then training and test evaluation."""
    root = tmp_path_factory.mktemp("quickstart")
    data, out = root / "sqa_tiny", root / "run"
    prep = run_tool([str(REPO / "tools/prepare_data.py"), "synthetic-scienceqa", "--out", str(data)])
    assert prep.returncode == 0, prep.stderr
    env = {"VLMKIT_QUICKSTART_ROOT": str(data)}
    train = run_tool([str(REPO / "tools/train.py"), "--cfg-path", str(REPO / "projects/quickstart/lavin_sqa_tiny.yaml"),
                      "--options", f"run.output_dir={out}"], env=env, timeout=900)
    assert train.returncode == 0, train.stderr[-3000:]
    return {"data": data, "out": out, "env": env, "stdout": train.stdout, "stderr": train.stderr}


@pytest.fixture(scope="session")
def fewshot_flamingo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny OpenFlamingo (projects/quickstart/flamingo_vqav2_tiny.yaml) fine-tuned 3 epochs on generated VQAv2
    (100 train images, 6 val images), so that few-shot scores are non-zero and depend on the demos. Shared by the
    few-shot test modules; each writes its outputs under a root of its own."""
    root = tmp_path_factory.mktemp("fewshot_flamingo")
    data = root / "data"
    res = run_tool([str(REPO / "tools/prepare_data.py"), "synthetic-vqav2", "--out", str(data),
                    "--n-train-images", "100", "--n-val-images", "6"])
    assert res.returncode == 0, res.stderr
    env = {"VLMKIT_QUICKSTART_VQAV2": str(data)}
    res = run_tool([str(REPO / "tools/train.py"), "--cfg-path", str(REPO / "projects/quickstart/flamingo_vqav2_tiny.yaml"),
                    "--options", f"run.output_dir={root / 'train'}", "run.epochs=3"], env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return {"data": data, "env": env, "weights": str(root / "train" / "model.safetensors")}
