"""pyproject.toml: a clean install prints no deprecation warning of the project's own making.

setuptools deprecated ``project.license`` as a TOML table (PEP 639): the license is an
SPDX expression, which needs setuptools 77 or later to build. Building the package here
would mean downloading setuptools into an isolated environment, so this checks the two
lines that decide it; the full check is
``python3 -m venv v && v/bin/pip install -v -e . 2>&1 | grep -i deprecat`` (no output).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def test_license_is_an_spdx_expression_not_a_table() -> None:
    assert PYPROJECT["project"]["license"] == "MIT"


def test_the_build_requires_a_setuptools_that_reads_spdx_licenses() -> None:
    [setuptools] = [r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    match = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", setuptools.replace(" ", ""))
    assert match and int(match.group(1)) >= 77, setuptools
