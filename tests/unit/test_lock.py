"""The lock files still meet every pin of pyproject.toml (``make lock-check``, part of
``make check``; offline): every requirement of pyproject.toml (runtime and extras) is
met by the pin in requirements.lock, the runtime's also by requirements.runtime.lock
(what the image installs), and both locks pin a package alike. A pin edited without
``make lock`` fails CI here instead of installing something else."""

import shutil
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from blueprint.topology import ROOT


def pins(lock: Path) -> dict[str, str]:
    """name → version of every ``name==version`` line pip-compile wrote."""
    lines = (line.split()[0] for line in lock.read_text().splitlines() if line[:1].isalnum())
    return {canonicalize_name(n): v for n, _, v in (line.partition("==") for line in lines)}


def lock_problems(root: Path = ROOT) -> list[str]:
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    full, runtime = pins(root / "requirements.lock"), pins(root / "requirements.runtime.lock")
    both = {"requirements.lock": full, "requirements.runtime.lock": runtime}
    wanted = [(Requirement(r), both) for r in project["dependencies"]]
    wanted += [
        (Requirement(r), {"requirements.lock": full})
        for extra in project["optional-dependencies"].values()
        for r in extra
        if canonicalize_name(Requirement(r).name) != project["name"]  # "polyglotmicro[mesh]"
    ]
    found = [
        f"{lock}: {name}=={pinned.get(name)}, pyproject.toml: {requirement}"
        for requirement, locks in wanted
        for lock, pinned in locks.items()
        if (name := canonicalize_name(requirement.name)) not in pinned
        or not requirement.specifier.contains(pinned[name], prereleases=True)
    ]
    return found + [
        f"requirements.runtime.lock: {name}=={version}, requirements.lock: {full.get(name)}"
        for name, version in runtime.items()
        if full.get(name) != version
    ]


def test_the_committed_locks_match_pyproject():
    assert lock_problems() == [], "the locks do not match pyproject.toml: run `make lock`"


def test_a_pin_changed_without_make_lock_is_reported(tmp_path):
    for name in ("pyproject.toml", "requirements.lock", "requirements.runtime.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    pyproject = tmp_path / "pyproject.toml"
    text = pyproject.read_text().replace('"asyncpg==0.32.0"', '"asyncpg==0.31.0"')
    pyproject.write_text(text.replace('"ruff==0.17.5"', '"ruff==0.17.4"'))  # a dev extra
    runtime = tmp_path / "requirements.runtime.lock"
    runtime.write_text(runtime.read_text().replace("\nuvloop==0.23.0 ", "\nuvloop==0.22.0 "))
    assert sorted(lock_problems(tmp_path)) == [
        "requirements.lock: asyncpg==0.32.0, pyproject.toml: asyncpg==0.31.0",
        "requirements.lock: ruff==0.17.5, pyproject.toml: ruff==0.17.4",
        "requirements.runtime.lock: asyncpg==0.32.0, pyproject.toml: asyncpg==0.31.0",
        "requirements.runtime.lock: uvloop==0.22.0, pyproject.toml: uvloop==0.23.0",
        "requirements.runtime.lock: uvloop==0.22.0, requirements.lock: 0.23.0",
    ]
