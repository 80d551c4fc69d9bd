"""Rendering a trained talking head: :mod:`~synctalk.render.offline` (audio file → mp4)."""
