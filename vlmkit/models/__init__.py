"""Models: LaVIN (``lavin.py``) and OpenFlamingo (``flamingo/``), their shared backbones (``llama.py``, ``clip.py``) and
trainable parts (``adapters.py``), the model contract (``base.py``) and every reliance on transformers' calling details
(``hf_compat.py``). Each model registers in ``MODELS`` when its module is imported, which the first ``MODELS.get`` of
its name does (``vlmkit.registry.BUILTINS``): naming or listing a model imports nothing."""
