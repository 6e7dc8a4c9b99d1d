"""docs/architecture.md stays true: every module of the package is named there (or, for the one-file-per-option
folders such as samplers/, its folder), and every module it names exists."""

import re

from conftest import REPO

DOC = REPO / "docs" / "architecture.md"


def test_every_module_is_described_and_every_named_module_exists():
    text = DOC.read_text()
    package = REPO / "diffuse"
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    named = set(re.findall(r"`((?:[a-z_]+/)?[a-z_]+\.py)`", text))
    folders = set(re.findall(r"`([a-z_]+/)`", text))
    for module in modules:  # a subpackage's modules may be named with their folder or on their own
        folder = module.rpartition("/")[0] + "/"
        assert module in named or module.split("/")[-1] in named or folder in folders, \
            f"{module} is not described in {DOC.name}"
    for name in named:
        candidates = [REPO / name, package / name, *package.rglob(name)]
        assert any(c.is_file() for c in candidates), f"{DOC.name} names {name}, which does not exist"
