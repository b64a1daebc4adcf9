"""Packaging beyond pyproject.toml: the repository's top-level ``callbacks/`` folder installs as
``loragen.callbacks`` (a top-level ``callbacks`` module in site-packages would collide with other projects')."""

from setuptools import find_namespace_packages, setup

# namespace discovery, as pyproject's `find` did: data folders (quickstart files, releases, task descriptions) ship too
setup(
    packages=[
        *find_namespace_packages(include=["loragen", "loragen.*"], exclude=["*.__pycache__"]),
        "loragen.callbacks",
    ],
    package_dir={"loragen.callbacks": "callbacks"},
)
