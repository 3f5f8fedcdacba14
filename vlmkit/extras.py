"""Optional dependencies: which ``pip install "vlmkit[EXTRA]"`` brings which feature.

The default install serves the quickstarts and the LaVIN/OpenFlamingo workflows (training, evaluation, all metrics);
heavier or rarer parts sit behind extras (setup.py ``extras_require``; README § Install). Using a feature whose extra is
missing stops with one line that names the extra.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from vlmkit.errors import ConfigError

#: extra → (modules it provides, what it is for). Keep in step with setup.py's extras_require.
EXTRAS = {
    "quant": (("bitsandbytes", "accelerate"), "8-/4-bit models and 8-bit/paged optimizers"),
    "shards": (("webdataset", "braceexpand"), "webdataset tar shards"),
    "wandb": (("wandb",), "the Weights & Biases logging hook"),
    "chat": (("gradio",), "the web chat (vlmkit chat --web)"),
}


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or stop with one line: ``<feature> needs <module>: pip install "vlmkit[<extra>]"``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"{feature} needs the '{module}' package, which is not installed: "
                          f"pip install \"vlmkit[{extra}]\" ({e})") from e
