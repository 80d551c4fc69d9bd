"""Thin wrapper kept for old notes: ``python scripts/bench_ave.py ARGS`` is
``synctalk bench ave --json ARGS`` (see :mod:`synctalk.bench.ave`)."""
import sys

from synctalk.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "ave", "--json", *sys.argv[1:]]))
