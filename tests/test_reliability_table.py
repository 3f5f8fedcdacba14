"""docs/reliability.md is what vlmkit says: every case of tests/reliability_cases.py is run and its message checked,
and the table in the docs must equal the one generated from them (regenerate: python tests/reliability_cases.py >
docs/reliability.md)."""
from __future__ import annotations

import ast
import re

import pytest

import reliability_cases
from conftest import REPO


@pytest.fixture(scope="module")
def messages(tmp_path_factory):
    return reliability_cases.run_all(tmp_path_factory.mktemp("cases"))


def test_at_least_sixty_cases_in_every_area():
    areas = {c.area for c in reliability_cases.CASES}
    assert len(reliability_cases.CASES) >= 60
    assert areas == {"config", "data", "metrics", "checkpoints", "faults", "distributed", "output"}


def test_every_case_gives_its_message(messages):
    ran = [c for c in reliability_cases.CASES if c.kind != "test"]
    assert len(messages) == len(ran) >= 50
    for message in messages.values():
        assert "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("case", [c for c in reliability_cases.CASES if c.kind == "test"], ids=lambda c: c.what)
def test_rows_backed_by_a_test_name_a_test_that_asserts_the_text(case):
    path, name = case.run.split("::")
    source = (REPO / path).read_text()
    lines = source.splitlines()
    functions = {node.name: "\n".join(lines[min([d.lineno for d in node.decorator_list] + [node.lineno]) - 1:
                                             node.end_lineno])
                 for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)}  # with decorators
    assert name in functions, f"{case.run} does not exist"
    assert case.needle in functions[name], f"{case.run} does not assert {case.needle!r}"


def test_docs_table_is_the_generated_one():
    """Generated in a fresh process, as the docs command does (registries hold only the built-ins and the toys, not
    what other tests in this process registered)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(REPO / "tests" / "reliability_cases.py")], capture_output=True,
                          text=True, cwd=REPO / "tests", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = done.stdout
    actual = (REPO / "docs" / "reliability.md").read_text()
    assert actual == expected, "docs/reliability.md is stale: python tests/reliability_cases.py > docs/reliability.md"
    assert re.search(r"^\| 60 \|", actual, re.M)
