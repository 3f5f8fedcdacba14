from setuptools import find_packages, setup

# Every range is what CI tests: the lower ends are pinned in constraints/lowest.txt (a second CI environment runs the
# generation-critical tests there), the upper ends are the newest releases a fresh install resolves today
# (constraints/latest.txt records the set of the last green CI). Upper bounds are minor versions for the ML stack,
# whose minor releases change behaviour (docs/compatibility.md). Raise a bound only together with a CI run at it.
RUNTIME = [
    "torch>=2.14,<2.15",
    "torchvision>=0.29,<0.30",
    "transformers>=5.0,<5.25",
    "tokenizers>=0.22,<0.24",
    "open_clip_torch>=3.0,<3.4",
    "peft>=0.18,<0.22",
    "safetensors>=0.5,<0.9",
    "omegaconf>=2.3,<2.5",
    "sentencepiece>=0.2,<0.3",
    "protobuf>=5,<8",
    "pycocoevalcap>=1.2,<1.3",
    "pycocotools>=2.0.8,<2.1",
    "tqdm>=4.66,<5",
    "tensorboard>=2.18,<3",
    "matplotlib>=3.9,<4",
    "pillow>=11,<14",
    "numpy>=2.1,<3",
]

# Optional parts (vlmkit/extras.py says which feature needs which; a missing one is a one-line error naming it).
EXTRAS = {
    "quant": ["bitsandbytes>=0.48,<0.51", "accelerate>=1.10,<1.16"],  # 8-/4-bit models, 8-bit and paged optimizers
    "shards": ["webdataset>=0.2.100,<1.1", "braceexpand>=0.1.7,<0.2"],  # webdataset tar shards
    "wandb": ["wandb>=0.25,<0.32"],  # the Weights & Biases logging hook
    "chat": ["gradio>=6.31,<6.32"],  # the web chat (vlmkit chat --web)
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})
# playwright drives the system's Chromium in tests/test_chat_web.py (never a downloaded browser)
EXTRAS["test"] = EXTRAS["all"] + ["pytest>=8,<10", "pytest-timeout>=2.3,<3", "playwright>=1.65,<1.66"]

setup(
    name="vlmkit",
    version="0.1.0",
    description="Parameter-efficient fine-tuning and evaluation of vision-language models (LaVIN, OpenFlamingo)",
    packages=find_packages(include=["vlmkit", "vlmkit.*"]),
    package_data={"vlmkit": ["configs/*.yaml", "configs/*/*.yaml"]},  # the defaults ship inside the package
    entry_points={"console_scripts": ["vlmkit = vlmkit.cli:console"]},
    python_requires=">=3.10",
    install_requires=RUNTIME,
    extras_require=EXTRAS,
)
