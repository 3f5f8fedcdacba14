"""Compare `pip freeze` (stdin) with a constraints file: print each package whose installed version differs.

    pip freeze | python .ci/compare_constraints.py constraints/latest.txt          # report drift (exit 0)
    pip freeze | python .ci/compare_constraints.py constraints/lowest.txt --exact  # every pin must hold (exit 1 if not)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path


def pins(lines: list[str]) -> dict[str, str]:
    """name → version of every ``name==version`` line (names normalised as pip does)."""
    found = {}
    for line in lines:
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if match:
            found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return found


def main() -> int:
    wanted = pins(Path(sys.argv[1]).read_text().splitlines())
    installed = pins(sys.stdin.read().splitlines())
    differ = [(name, want, installed.get(name, "not installed")) for name, want in sorted(wanted.items())
              if installed.get(name) != want]
    for name, want, got in differ:
        print(f"  {name}: {got} (recorded {want})")
    if not differ:
        print(f"  all {len(wanted)} pins of {sys.argv[1]} hold")
    return 1 if differ and "--exact" in sys.argv[2:] else 0


if __name__ == "__main__":
    sys.exit(main())
