from setuptools import find_packages, setup

RUNTIME = [
    "torch>=2.1",
    "torchvision",
    "omegaconf>=2.3",
    "open_clip_torch>=2.20",
    "transformers>=5.0",
    "einops",
    "sentencepiece",
    "protobuf",
    "accelerate",
    "safetensors",
    "bitsandbytes",
    "peft>=0.10",
    "webdataset",
    "pycocoevalcap",
    "tqdm",
    "tensorboard",
    "matplotlib",
    "pillow",
    "numpy",
]

setup(
    name="vlmkit",
    version="0.1.0",
    description="Parameter-efficient fine-tuning and evaluation of vision-language models (LaVIN, OpenFlamingo)",
    packages=find_packages(include=["vlmkit", "vlmkit.*"]),
    python_requires=">=3.10",
    install_requires=RUNTIME,
    extras_require={"test": ["pytest>=7", "pytest-timeout"]},
)
