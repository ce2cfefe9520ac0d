"""Ship the top-level data folders inside the wheel.

``hardware/``, ``templates/`` and ``playbooks/`` stay at the top of the repository (their one source); a build
copies them into ``deploy/_shipped/`` so an installed toolkit finds them without a checkout
(``deploy.constants.DATA_ROOT``). Everything else about the package is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = ("hardware", "templates", "playbooks")


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "deploy" / "_shipped"
        for name in SHIPPED:
            source = HERE / name
            if source.is_dir():  # an sdist carries them through MANIFEST.in
                hidden = shutil.ignore_patterns(".*")
                shutil.copytree(source, target / name, dirs_exist_ok=True, ignore=hidden)


setup(cmdclass={"build_py": BuildPyWithData})
