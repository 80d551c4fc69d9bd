"""The talking-head NeRF: data, fields, occupancy, rendering, training and inference.

* :mod:`~synctalk.nerf.config` — :class:`TrainConfig` and the YAML presets (``configs/train_*.yaml``);
* :mod:`~synctalk.nerf.geometry` — cameras, rays and the world (mm) → head-box normalisation;
* :mod:`~synctalk.nerf.data` — a prepared subject as training data, and the ray sampler;
* :mod:`~synctalk.nerf.field` — the head field (tri-plane grid, audio/blendshape region attention);
* :mod:`~synctalk.nerf.torso` — the 2-D torso field;
* :mod:`~synctalk.nerf.occupancy` — the occupancy grid the marcher samples;
* :mod:`~synctalk.nerf.renderer` — ray marching and compositing over the torso/background;
* :mod:`~synctalk.nerf.model` — the model module and the model directory layout;
* :mod:`~synctalk.nerf.trainer` — the stages, checkpoints and exact resume (``synctalk train``);
* :mod:`~synctalk.nerf.inference` — :class:`~synctalk.nerf.inference.TalkingHead`, what
  ``synctalk render`` and ``eval`` use.

The hot ops (grid encoding, ray marching, compositing, density-grid update) come from
:mod:`synctalk.ops`, whose backend (``torch`` reference or ``native``) is chosen per run.
"""
