"""Install shim. All metadata lives in pyproject.toml.

Installing never compiles anything: the native ops in ``cuda_ext/`` are built lazily
on first use (see ``synctalk.ops``).
"""
from setuptools import setup

setup()
