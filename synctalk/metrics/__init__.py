"""Evaluation metrics and reports.

* :mod:`~synctalk.metrics.image` — PSNR / SSIM (full frame and masked);
* :mod:`~synctalk.metrics.lipsync` — MediaPipe landmarks of frames, LMD, mouth opening and its
  agreement with a reference (correlation, spread ratio);
* :mod:`~synctalk.metrics.stability` — landmark jitter;
* :mod:`~synctalk.metrics.sync` — AVE sync confidence/offset of rendered frames;
* :mod:`~synctalk.metrics.report` — ``eval.json``, ``eval.md`` and PNG plots.
"""
