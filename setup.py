"""Packaging glue that pyproject.toml cannot express: the wheel carries the repository's
plugins/ as ``trio_mta/builtin_plugins`` and conf/ as ``trio_mta/templates`` (what ``trio-mta
init`` writes), so an installed trio-mta has its built-in plugins and configuration templates
without claiming the top-level import name ``plugins`` in site-packages. A source checkout
uses plugins/ and conf/ where they are (``hooks.builtin_plugin_dir``, ``ops.templates_dir``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        package = Path(self.build_lib) / "trio_mta"
        plugins = package / "builtin_plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        for source in sorted((ROOT / "plugins").glob("*.py")):
            shutil.copyfile(source, plugins / source.name)
        templates = package / "templates"
        (templates / "plugins").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "conf" / "trio-mta.toml", templates / "trio-mta.toml")
        for source in sorted((ROOT / "conf" / "plugins").glob("*.toml")):
            shutil.copyfile(source, templates / "plugins" / source.name)


setup(cmdclass={"build_py": BuildPy})
