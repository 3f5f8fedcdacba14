#!/usr/bin/env bash
# Install the open-flamingo 2.0.1 reference into its own directory, for tests/test_flamingo_parity.py.
#
# open-flamingo pins torch 2.0.1, so it is installed with --no-deps into a separate target directory together with the
# few packages its `generate` needs at the versions it was released against (transformers 4.36.2 and friends; accelerate
# too, so that the test venv's newer accelerate, which needs a newer huggingface_hub, is never imported there). The
# parity test runs it in a subprocess with PYTHONPATH=<dir>, so these old versions never mix with vlmkit's.
# open_clip_torch is pinned to 2.16.0: that release returns the vision tokens BEFORE ln_post, the behaviour the released
# OpenFlamingo weights were trained on (open_clip 3.x applies ln_post first).
#
# Usage: tests/reference/install_open_flamingo.sh [DIR]   (default: $VLMKIT_REFERENCE_DIR or .reference/open_flamingo)
# Idempotent: does nothing when DIR already holds this exact package set.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="${1:-${VLMKIT_REFERENCE_DIR:-$REPO_ROOT/.reference/open_flamingo}}"
DEFAULT_PYTHON=python
[[ -x "$REPO_ROOT/.venv/bin/python" ]] && DEFAULT_PYTHON="$REPO_ROOT/.venv/bin/python"
PYTHON="${PYTHON:-$DEFAULT_PYTHON}"  # the interpreter the tests run with (it provides torch and torchvision)

PACKAGES=(
  open-flamingo==2.0.1
  transformers==4.36.2
  tokenizers==0.15.2
  huggingface_hub==0.20.3
  open_clip_torch==2.16.0
  einops==0.7.0
  einops-exts==0.0.4
  requests==2.31.0
  urllib3==2.2.1
  certifi==2024.2.2
  charset-normalizer==3.3.2
  accelerate==0.25.0
)
MARKER="$DIR/.vlmkit-installed"
WANT="${PACKAGES[*]}"

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$WANT" ]]; then
  echo "open-flamingo reference already installed in $DIR"
  exit 0
fi

mkdir -p "$DIR"
"$PYTHON" -m pip install --quiet --no-deps --upgrade --target "$DIR" "${PACKAGES[@]}"
# Check that the reference imports with the interpreter that will run it (torch/torchvision come from that interpreter).
PYTHONPATH="$DIR" "$PYTHON" -c "import transformers, open_flamingo.src.flamingo; from open_clip.version import __version__ as oc; print('reference ok: transformers', transformers.__version__, 'open_clip', oc)"
echo "$WANT" > "$MARKER"
