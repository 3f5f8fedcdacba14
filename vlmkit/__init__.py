"""vlmkit: parameter-efficient fine-tuning and evaluation of vision-language models (LaVIN, OpenFlamingo)."""
from vlmkit.registry import DATASETS, HOOKS, MODELS, PROCESSORS, SCHEDULERS, TASKS

__version__ = "0.1.0"
__all__ = ["MODELS", "TASKS", "DATASETS", "PROCESSORS", "SCHEDULERS", "HOOKS", "__version__"]
