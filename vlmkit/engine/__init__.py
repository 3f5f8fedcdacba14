"""Training and evaluation engine: trainer + hooks, schedulers, optimizers, checkpoint files, and the runner.

Entry points: :func:`vlmkit.engine.entrypoints.train` and :func:`vlmkit.engine.entrypoints.evaluate` (called by
tools/train.py and tools/evaluate.py). Submodules are imported on use so that ``import vlmkit.engine.schedulers`` (a
registry builtin) stays light.
"""
