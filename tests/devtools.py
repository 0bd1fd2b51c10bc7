"""Tools from outside PyPI that some checks run: kubectl (its built-in kustomize), promtool, the AsyncAPI
JSON schema. `make test` installs the last two into the venv (see the Makefile); kubectl comes with the
machine. In CI (CI set) a missing tool fails the test that needs it; elsewhere that test is skipped, saying
what is missing.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest

VENV_SHARE = Path(sys.prefix) / "share" / "imagepipe-dev"


def missing(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must have it")
    pytest.skip(reason)


def executable(name: str, install_hint: str) -> Path:
    """`name` beside this interpreter (installed into the venv) or on PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return beside_python
    found = shutil.which(name)
    if found is None:
        missing(f"{name} is not installed ({install_hint})")
    return Path(found)


def data_file(name: str, install_hint: str) -> Path:
    path = VENV_SHARE / name
    if not path.exists():
        missing(f"{path} is missing ({install_hint})")
    return path
