"""Synthetic talking heads with exact ground truth (``synctalk synth``).

A face photo is animated along its MediaPipe face mesh: speech drives the jaw and lips,
blinks close the eyelids, and the head turns in 3-D. Every frame's mouth opening, blink,
head pose and key-landmark positions are known exactly, which the tests and the demo use
to measure the rest of the pipeline.
"""
