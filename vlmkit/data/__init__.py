"""Dataset builders in the benchmarks' official layouts (registered in DATASETS) and synthetic generators.

``scienceqa`` (vlmkit.data.scienceqa), ``vqav2`` (vlmkit.data.vqav2), ``coco`` (vlmkit.data.coco); generated data in
``vlmkit.data.synthetic``. Builders register when their module is imported: on the first ``DATASETS.get`` of their
name (``vlmkit.registry.BUILTINS``), or by ``vlmkit.registry.load_builtins()``.
"""
