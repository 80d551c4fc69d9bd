"""Hot ops of the renderer: pure-PyTorch references behind a backend dispatch.

Each dispatched op (:data:`OPS`) takes ``backend="auto"`` and runs the implementation chosen
by :mod:`synctalk.ops.backend`: the ``"torch"`` reference always exists; ``"native"`` (the
``cuda_ext`` kernels) is preferred once registered. DESIGN.md §4 is the contract.

* :mod:`~synctalk.ops.grid` — multi-resolution dense/hash grids, tri-plane encoding, encoders.
* :mod:`~synctalk.ops.raymarch` — ray–AABB, occupancy-grid marching into packed samples.
* :mod:`~synctalk.ops.composite` — volume compositing of packed samples.
* :mod:`~synctalk.ops.alive` — the inference loop over alive rays: next samples per ray,
  compositing step with early termination, compaction.
* :mod:`~synctalk.ops.density` — density-grid update, visibility, bitfields, Morton order.
"""
from synctalk.ops.alive import AliveState, StepSamples, compact, composite_step, march_next
from synctalk.ops.backend import (AUTO_ORDER, OPS, available, chosen, register_backend, register_loader,
                                  resolve)
from synctalk.ops.composite import composite, early_termination_mask, exclusive_segment_cumsum, segment_sum
from synctalk.ops.density import (cell_centers, cells_seen, dilate_occupancy, from_morton_order, morton3, morton3_decode,
                                  pack_bitfield, to_morton_order, unpack_bitfield, update_density_grid)
from synctalk.ops.grid import (HASH_PRIMES, TRIPLANE_AXES, GridEncoder, GridSpec, TriPlaneEncoder, grid_encode,
                               init_table, triplane_encode)
from synctalk.ops.raymarch import PackedSamples, march_rays, occupancy_index, ray_aabb, to_unit_cube

__all__ = [
    "AliveState", "StepSamples", "compact", "composite_step", "march_next",
    "AUTO_ORDER", "OPS", "available", "chosen", "register_backend", "register_loader", "resolve",
    "composite", "early_termination_mask", "exclusive_segment_cumsum", "segment_sum",
    "cell_centers", "cells_seen", "dilate_occupancy", "from_morton_order", "morton3", "morton3_decode", "pack_bitfield",
    "to_morton_order", "unpack_bitfield", "update_density_grid",
    "HASH_PRIMES", "TRIPLANE_AXES", "GridEncoder", "GridSpec", "TriPlaneEncoder", "grid_encode", "init_table",
    "triplane_encode",
    "PackedSamples", "march_rays", "occupancy_index", "ray_aabb", "to_unit_cube",
]

# The "native" backend (cuda_ext kernels): registers a lazy loader, builds on first use.
from synctalk.ops import native as _native  # noqa: E402  (after the ops it wraps)
from synctalk.ops.native import native_status  # noqa: E402
