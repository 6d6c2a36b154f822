"""pyproject.toml and environment.yml list the same dependencies with the same floors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
# PyPI name -> conda-forge name(s); an extra becomes the package that provides it.
CONDA_NAMES = {
    "redis": ["redis-py"],
    "fakeredis[lua]": ["fakeredis", "lupa"],
    "prometheus-client": ["prometheus_client"],
    "mkdocstrings[python]": ["mkdocstrings", "mkdocstrings-python"],
    "psycopg[binary]": ["psycopg"],
}


def _pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    wanted: dict[str, str] = {}
    for text in reqs:
        req = Requirement(text)
        key = req.name.lower() + (f"[{','.join(sorted(req.extras))}]" if req.extras else "")
        names = CONDA_NAMES.get(key, [req.name.lower()])
        for conda_name in names:  # the package that provides an extra carries no floor of its own
            wanted[conda_name] = str(req.specifier) if conda_name == names[0] else ""
    return wanted


def _conda_requirements() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    have: dict[str, str] = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            assert dep["pip"][-1] == "-e .", "the pip section ends by installing statekit itself"
            for text in dep["pip"][:-1]:  # what conda-forge does not carry comes from PyPI
                req = Requirement(text)
                have[req.name.lower()] = str(req.specifier)
            continue
        if dep.split("=")[0] in ("python", "pip"):
            continue
        req = Requirement(dep)
        have[req.name.lower()] = str(req.specifier)
    return have


def test_environment_matches_pyproject():
    assert _conda_requirements() == _pyproject_requirements()


def test_environment_pins_python_311():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
