"""The examples in docstrings are part of the documentation: they must run."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import msewatch

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(msewatch.__path__, "msewatch.") if m.name != "msewatch.__main__"
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_examples_exist() -> None:
    finder = doctest.DocTestFinder()
    total = sum(
        len(t.examples) for name in MODULES for t in finder.find(importlib.import_module(name))
    )
    assert total >= 10
