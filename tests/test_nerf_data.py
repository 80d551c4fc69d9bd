"""Subject loading for training: validation, head-box normalisation, rays, sampling."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from synctalk.errors import InputError
from synctalk.nerf.data import HEAD, RaySampler, SubjectData, check_subject, in_boxes
from synctalk.nerf.geometry import AABB, pixel_rays
from synctalk.ops.raymarch import ray_aabb


@pytest.fixture(scope="module")
def data(nerf_subject):
    return SubjectData.load(nerf_subject, images=True)


def test_missing_prep_steps_are_named_with_the_command(nerf_subject, tmp_path):
    sub = tmp_path / "s"
    shutil.copytree(nerf_subject, sub, ignore=shutil.ignore_patterns("frames", "targets", "torso",
                                                                     "masks", "face_masks"))
    (sub / "frames").mkdir()
    for name in ("targets", "torso", "masks", "face_masks"):
        (sub / name).mkdir()
    manifest = json.loads((sub / "manifest.json").read_text())
    del manifest["steps"]["stabilize"]
    (sub / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"prep step 'stabilize' has not finished.*synctalk prep"):
        check_subject(sub)
    manifest["steps"]["stabilize"] = {"status": "done"}
    (sub / "manifest.json").write_text(json.dumps(manifest))
    (sub / "poses.npz").unlink()
    with pytest.raises(InputError, match=r"poses\.npz.*'stabilize'"):
        check_subject(sub)
    with pytest.raises(InputError, match="not a subject directory"):
        check_subject(tmp_path)
    with pytest.raises(InputError, match="not found"):
        check_subject(tmp_path / "nope")


def test_size_larger_than_the_subject_is_refused(nerf_subject):
    with pytest.raises(InputError, match="larger than the subject's 128 px"):
        SubjectData.load(nerf_subject, 256, images=False)


def test_head_landmarks_sit_in_the_box(data, nerf_subject):
    poses = np.load(nerf_subject / "poses.npz")
    lo, hi = np.array(AABB[:3]), np.array(AABB[3:])
    for pts in (poses["template"], poses["landmark_points_3d"]):
        p = data.box.world_to_box(pts)
        assert (p > lo).all() and (p < hi).all()
    p = data.box.world_to_box(poses["template"])
    # the face fills the box sideways and vertically (anisotropic scale), not a corner of it
    assert np.ptp(p[:, 0]) > 0.8 and np.ptp(p[:, 2]) > 0.8
    # the face's front (nose tip, landmark 1) is towards the camera: box +y
    assert p[1, 1] > p[:, 1].mean()


def test_rays_through_head_pixels_hit_the_box(data):
    aabb = torch.tensor(AABB)
    missed = total = 0
    for f in range(0, data.n_frames, 10):
        ys, xs = torch.nonzero((data.labels[f] & 3) == HEAD, as_tuple=True)
        xy = torch.stack([xs, ys], 1)
        o, d = pixel_rays(data.cam_o, data.cam_rot, data.K, xy, torch.full((len(xy),), f))
        t_near, t_far = ray_aabb(o, d, aabb)
        missed += int((t_far <= t_near).sum())
        total += len(xy)
        # and the head pixels lie inside the frame's projected-box rectangle
        b = data.boxes["aabb"][f]
        inside = (xs >= b[0]) & (xs < b[2]) & (ys >= b[1]) & (ys < b[3])
        assert inside.float().mean() > 0.995
    assert total > 1000 and missed / total < 1e-3
    # a ray from the camera straight away from the head misses
    o, d = pixel_rays(data.cam_o, data.cam_rot, data.K, torch.tensor([[0, 0]]))
    t_near, t_far = ray_aabb(o, -d, aabb)
    assert bool(t_far <= t_near)


def test_smaller_size_scales_intrinsics_and_boxes(nerf_subject, data):
    half = SubjectData.load(nerf_subject, 64, images=False, box=data.box)
    torch.testing.assert_close(half.K[:2], data.K[:2] / 2)
    torch.testing.assert_close(half.cam_o, data.cam_o)
    assert half.background.shape == (64, 64, 3)
    diff = (half.boxes["aabb"].float() - data.boxes["aabb"].float() / 2).abs()
    assert float(diff.max()) <= 2.0


def test_ray_sampler_is_deterministic_and_uses_the_boxes(data):
    s = RaySampler(data, rays=600, frames_per_step=3, face_fraction=0.4, head_fraction=0.25,
                   mouth_fraction=0.1, lip_patch=16, lip_random_patches=1)
    a = s.head(torch.Generator().manual_seed(5))
    b = s.head(torch.Generator().manual_seed(5))
    assert torch.equal(a.frame, b.frame) and torch.equal(a.xy, b.xy)
    assert len(a.frame) == 600 and len(torch.unique(a.frame)) <= 3
    assert set(a.frame.tolist()) <= set(data.splits["train"])
    assert (a.xy >= 0).all() and (a.xy < data.size).all()
    in_face = in_boxes(data.boxes["face"], a).float().mean()
    in_mouth = in_boxes(s.mouth_area, a).float().mean()
    in_box = in_boxes(data.boxes["aabb"], a).float().mean()
    assert in_face >= 0.5 and in_mouth >= 0.1 and in_box == 1.0
    lip = s.lip(torch.Generator().manual_seed(1))
    n, h, w = lip.patches
    assert (n, h, w) == (2, 16, 16) and len(lip.xy) == n * h * w
    first = lip.xy[: h * w]
    assert (first.max(0).values - first.min(0).values).tolist() == [15, 15]
    m = data.boxes["mouth"][lip.frame[0]]
    centre = first.float().mean(0)
    assert abs(float(centre[0]) - float(m[0] + m[2]) / 2) <= 16 / 8 + 1
    t = s.torso(torch.Generator().manual_seed(2), 300)
    assert len(t.xy) == 300 and (t.xy < data.size).all()
