"""OpenFlamingo: model (model.py), building blocks (modules.py), loading from files (build.py), collation (collate.py)
and open-flamingo checkpoint interop (checkpoint.py). Importing this package registers ``arch: openflamingo``."""
from vlmkit.models.flamingo.build import END_OF_CHUNK_TOKEN, MEDIA_TOKEN, PAD_TOKEN, SpecialTokens
from vlmkit.models.flamingo.checkpoint import (OpenFlamingoLoadReport, load_openflamingo_checkpoint,
                                               load_openflamingo_state_dict, openflamingo_state_dict,
                                               save_openflamingo_checkpoint)
from vlmkit.models.flamingo.collate import FlamingoCollator
from vlmkit.models.flamingo.model import OpenFlamingo

__all__ = [
    "END_OF_CHUNK_TOKEN", "MEDIA_TOKEN", "PAD_TOKEN", "FlamingoCollator", "OpenFlamingo", "OpenFlamingoLoadReport",
    "SpecialTokens", "load_openflamingo_checkpoint", "load_openflamingo_state_dict", "openflamingo_state_dict",
    "save_openflamingo_checkpoint",
]
