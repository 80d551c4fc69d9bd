"""One module per ``synctalk`` subcommand; each exposes ``register(subparsers)``."""
