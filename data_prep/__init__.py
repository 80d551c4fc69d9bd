"""Preprocessing: a talking-head video becomes a subject directory (`synctalk prep`)."""
