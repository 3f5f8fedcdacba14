"""``python -m vlmkit ...`` = the ``vlmkit`` command."""
from vlmkit.cli import console

console()
