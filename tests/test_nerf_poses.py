"""Per-frame pose corrections (synctalk.nerf.poses): the geometry of a correction, its
gradients, and the exact no-op of an uncorrected frame."""
from __future__ import annotations

import numpy as np
import torch

from synctalk.nerf.geometry import HeadBox, box_cameras, project_points
from synctalk.nerf.poses import RADIUS_MM, PoseRefinement, correct_cameras

BOX = HeadBox((2.0, -5.0, 60.0), (1 / 90.0, 1 / 120.0, 1 / 110.0))
K = torch.tensor([[500.0, 0.0, 128.0], [0.0, 500.0, 128.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _c2w(yaw_deg: float, dist_mm: float = 600.0) -> np.ndarray:
    """A camera looking at the world origin from ``dist_mm`` in front (−z), turned by yaw."""
    a = np.deg2rad(yaw_deg)
    r = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    c2w = np.eye(4)
    c2w[:3, :3] = r
    c2w[:3, 3] = -dist_mm * r[:, 2]
    return c2w


def _rodrigues(w: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(w).as_matrix()


def test_a_correction_moves_the_head_rigidly_before_the_pose():
    # the corrected camera sees a world point X where the original camera sees T(δ)·X
    c2w = np.stack([_c2w(5.0), _c2w(-12.0)])
    o, rot = (t.double() for t in box_cameras(c2w, BOX))
    delta = torch.tensor([[0.02, -0.05, 0.01, 0.03, -0.02, 0.05],
                          [-0.04, 0.01, 0.03, -0.01, 0.04, 0.0]], dtype=torch.float64)
    o2, rot2 = correct_cameras(o, rot, delta, BOX)
    x = np.array([[0.0, 0.0, 0.0], [40.0, -60.0, 30.0], [-70.0, 20.0, 90.0]])  # world mm
    for b in range(2):
        w = delta[b].numpy()
        moved = x @ _rodrigues(w[:3]).T + w[3:] * RADIUS_MM
        seen = project_points(torch.from_numpy(BOX.world_to_box(x)), o2[b:b + 1], rot2[b:b + 1], K)
        want = project_points(torch.from_numpy(BOX.world_to_box(moved)), o[b:b + 1], rot[b:b + 1], K)
        assert torch.allclose(seen[..., :2], want[..., :2], atol=1e-6)


def test_zero_correction_is_the_identity_and_uncorrected_frames_are_untouched():
    c2w = np.stack([_c2w(3.0), _c2w(20.0), _c2w(-7.0)])
    o, rot = box_cameras(c2w, BOX)
    o2, rot2 = correct_cameras(o.double(), rot.double(), torch.zeros(3, 6, dtype=torch.float64), BOX)
    assert torch.allclose(o2, o.double(), atol=1e-9) and torch.allclose(rot2, rot.double(), atol=1e-12)
    ref = PoseRefinement(3)
    frames = torch.tensor([0, 2])
    same_o, same_rot = ref.cameras(frames, o[frames], rot[frames], BOX, grad=False)
    assert torch.equal(same_o, o[frames]) and torch.equal(same_rot, rot[frames])
    with torch.no_grad():
        ref.delta[2, 1] = 0.01
    moved_o, _ = ref.cameras(frames, o[frames], rot[frames], BOX, grad=False)
    assert torch.allclose(moved_o[0], o[0], atol=1e-4) and not torch.allclose(moved_o[1], o[2], atol=1e-3)


def test_gradients_reach_the_corrections():
    c2w = np.stack([_c2w(4.0), _c2w(-9.0)])
    o, rot = (t.double() for t in box_cameras(c2w, BOX))

    def f(delta):
        return correct_cameras(o, rot, delta, BOX)

    delta = (torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
             * 0.05).requires_grad_()
    assert torch.autograd.gradcheck(f, (delta,))
    ref = PoseRefinement(4)
    co, cr = ref.cameras(torch.tensor([1, 3]), o.float(), rot.float(), BOX)
    (co.sum() + cr.sum()).backward()
    g = ref.delta.grad
    assert g[[0, 2]].abs().sum() == 0 and (g[[1, 3]].abs().sum(1) > 0).all()


def test_magnitude_reports_degrees_and_millimetres():
    ref = PoseRefinement(2)
    with torch.no_grad():
        ref.delta[0] = torch.tensor([np.deg2rad(3.0), 0, 0, 0, 0.02, 0])
    m = ref.magnitude(torch.tensor([0]))
    assert abs(m["rot_deg"] - 3.0) < 1e-5 and abs(m["trans_mm"] - 0.02 * RADIUS_MM) < 1e-5  # float32
    assert ref.magnitude(torch.tensor([], dtype=torch.long)) == {"rot_deg": 0.0, "trans_mm": 0.0}
