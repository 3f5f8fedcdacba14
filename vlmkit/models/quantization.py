"""The one 8-/4-bit path: frozen language-model weights quantized by transformers' ``BitsAndBytesConfig`` as they load.

Both LLaMA readers go through it: a Hugging Face directory (``from_pretrained(path, ...)``, OpenFlamingo and LaVIN's
``llama_format: hf``) and Meta's ``consolidated.*.pth`` (converted to HF names, then ``from_pretrained(None,
state_dict=...)``). transformers replaces the decoder's ``nn.Linear`` layers by bitsandbytes ``Linear8bitLt`` /
``Linear4bit`` (nf4) and keeps the output head in full precision, as LaVIN's reference quantizes ``llama.layers`` only.
Weights are quantized while they move to the device, so the full-precision model never has to fit there.
"""
from __future__ import annotations

from typing import Any

import torch

from vlmkit.errors import ConfigError
from vlmkit.extras import EXTRAS, require

QUANTIZATIONS = ("8bit", "4bit")


def quantized_load_options(bits: str, compute_dtype: torch.dtype, device: str | torch.device,
                           key: str = "model.quantization") -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that load the model quantized to ``bits`` directly onto ``device``."""
    if bits not in QUANTIZATIONS:
        raise ConfigError(f"{key} must be null, 8bit or 4bit, got {bits!r}")
    for module in EXTRAS["quant"][0]:  # transformers' own message for a missing one is a long traceback
        require(module, "quant", f"{key}={bits}")
    from transformers import BitsAndBytesConfig

    if bits == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
    return {"quantization_config": config, "device_map": {"": torch.device(device)}}
