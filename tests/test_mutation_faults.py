"""The mutation check's faults still point at code (scripts/mutation_check.py).

A fault whose text no longer occurs exactly once in its file would make the check exit
without running (it did, after code moved): this keeps every fault aimed at real code.
"""

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "scripts" / "mutation_check.py")
mutation_check = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("mutation_check", mutation_check)  # dataclasses look their module up
_spec.loader.exec_module(mutation_check)


@pytest.mark.parametrize("fault", mutation_check.FAULTS, ids=lambda f: f.name)
def test_fault_text_occurs_exactly_once(fault):
    text = (ROOT / fault.path).read_text()
    assert text.count(fault.old) == 1, (f"{fault.name}: its text occurs {text.count(fault.old)} "
                                        f"times in {fault.path}; re-point it at the code")
    assert fault.old != fault.new


@pytest.mark.parametrize("fault", mutation_check.FAULTS, ids=lambda f: f.name)
def test_fault_tests_exist(fault):
    files = [a for a in fault.tests if a.endswith(".py") or ".py::" in a]
    assert files, f"{fault.name} names no test file"
    for name in files:
        assert (ROOT / name.split("::")[0]).is_file(), f"{fault.name}: {name} does not exist"


def test_fault_names_are_unique():
    names = [f.name for f in mutation_check.FAULTS]
    assert len(names) == len(set(names))
