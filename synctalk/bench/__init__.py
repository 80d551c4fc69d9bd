"""Benchmarks behind ``synctalk bench`` (see :mod:`synctalk.commands.bench`)."""
