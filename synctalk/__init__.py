"""synctalk: audio-driven talking-head synthesis (prep → train → render → eval)."""

__version__ = "0.1.0"

from synctalk.errors import SyncTalkError  # noqa: E402

__all__ = ["SyncTalkError", "__version__"]
