"""Step "segment" against synthetic ground truth, plus its building blocks and errors.

Ground truth: the synth's :class:`~synctalk.synth.rig.HeadRig` animates the default photo's
person matte over a **static background we choose** (a smooth colour field crossed by
thin lines, so the plate has texture and differs from the photo). The true person alpha
of each frame is rendered by a copy of the rig whose photo is white and whose background
is black, so it draws ``alpha·255`` through the same per-triangle warps; only the mouth
interior (painted over the face, where the matte is 1 anyway) is set to 1 afterwards.
The landmarks are the rig's projected ones (z = 0), i.e. a perfect tracker.
"""
from __future__ import annotations

import copy
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_prep import segment as sg
from synctalk.errors import InputError, ModelFileError, SyncTalkError
from synctalk.synth.face import FACE_OVAL, crop_head_and_shoulders, load_source_face, person_matte
from synctalk.synth.generate import FOCAL_PER_SIDE
from synctalk.synth.motion import euler_to_matrix, head_motion
from synctalk.synth.rig import LIPS_LOWER, LIPS_UPPER, MOUTH_INNER_LOOP, FrameState, HeadRig

SIZE = 256
N_FRAMES = 100
OUTPUT_DIRS = {"masks": "png", "face_masks": "png", "torso": "png", "targets": "jpg"}


@dataclass
class Truth:
    subject: Path
    background: np.ndarray   # [S, S, 3] uint8
    alpha: np.ndarray        # [N, S, S] float32 in [0, 1]
    landmarks: np.ndarray    # [N, 478, 3] float32 px
    info: dict


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Static plate: a blue-grey gradient, low-frequency colour noise and a few light lines."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    ramp = (0.6 * xx + 0.4 * yy)[..., None]
    bg = np.array([60.0, 120.0, 165.0]) + np.array([60.0, 50.0, 30.0]) * ramp
    bg += cv2.resize(rng.normal(0, 18, (6, 6, 3)).astype(np.float32), (size, size),
                     interpolation=cv2.INTER_CUBIC)
    for _ in range(12):
        p0, p1 = (tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2))
        colour = tuple(float(v) for v in rng.uniform(150, 230, 3))
        cv2.line(bg, p0, p1, colour, max(1, size // 128), cv2.LINE_AA)
    return np.clip(bg, 0, 255).astype(np.uint8)


def make_synth_subject(root: Path, size: int, n: int, seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Write ``frames/`` and ``track.npz`` of a synthetic subject into ``root``.

    Returns:
        ``(background [S, S, 3] uint8, alpha [N, S, S] float32, landmarks [N, 478, 3])``.
    """
    rng = np.random.default_rng(seed)
    face = crop_head_and_shoulders(load_source_face(), size)
    background = _background(size, rng)
    rig = HeadRig(face, person_matte(face), background, FOCAL_PER_SIDE * size)
    matte_rig = copy.copy(rig)
    matte_rig.src_rgb = np.full_like(rig.src_rgb, 255.0)
    matte_rig.background = np.zeros_like(rig.background)
    angles, shift = head_motion(n, 25.0, rng, 2.0)
    opening = 0.5 + 0.5 * np.sin(np.arange(n) * 0.7)
    (root / "frames").mkdir(parents=True)
    alphas, landmarks = [], []
    for i in range(n):
        state = FrameState(float(opening[i]), 1.0, 0.0, euler_to_matrix(*angles[i]), shift[i])
        rgb, lm = rig.render(state)
        alpha = matte_rig.render(state)[0][..., 0].astype(np.float32) / 255.0
        mouth = np.zeros((size, size), np.uint8)
        cv2.fillPoly(mouth, [np.round(lm[MOUTH_INNER_LOOP]).astype(np.int32)], 1)
        alpha[cv2.dilate(mouth, np.ones((3, 3), np.uint8)) > 0] = 1.0
        cv2.imwrite(str(root / "frames" / f"{i:06d}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        alphas.append(alpha)
        landmarks.append(np.concatenate([lm, np.zeros((len(lm), 1))], 1))
    landmarks = np.asarray(landmarks, np.float32)
    np.savez(root / "track.npz", landmarks=landmarks, valid=np.ones(n, bool))
    return background, np.asarray(alphas), landmarks


@pytest.fixture(scope="module")
def truth(tmp_path_factory) -> Truth:
    root = tmp_path_factory.mktemp("segment") / "subject"
    root.mkdir()
    background, alpha, landmarks = make_synth_subject(root, SIZE, N_FRAMES)
    info = sg.run(root, {})
    return Truth(root, background, alpha, landmarks, info)


def _read(path: Path) -> np.ndarray:
    """An output image as stored (labels, masks) or as RGB / RGBA."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return img


def _labels(t: Truth, i: int) -> np.ndarray:
    return _read(t.subject / "masks" / f"{i:06d}.png")


def _polygon(points: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(points[:, :2]).astype(np.int32)], 1)
    return mask > 0


FRAMES_CHECKED = range(0, N_FRAMES, 9)


# ---------------------------------------------------------------------------- the step
def test_writes_exactly_n_files_per_directory_and_nothing_else(truth):
    names = {p.name for p in truth.subject.iterdir()}
    assert names == {"frames", "track.npz", "background.png", "background_seen.png",
                     "mouth_boxes.npy", *OUTPUT_DIRS}, "temporary files left behind"
    for folder, ext in OUTPUT_DIRS.items():
        files = sorted(p.name for p in (truth.subject / folder).iterdir())
        assert files == [f"{i:06d}.{ext}" for i in range(N_FRAMES)], folder
    info = truth.info
    assert info["frames"] == N_FRAMES and info["segmenter"] == "difference"
    assert 0.2 < info["plate_coverage"] < 0.8 and 0.3 < info["person_area"] < 0.9
    assert info["seconds_per_frame"] > 0 and info["landmarks_filled"] == 0


def test_plate_matches_true_background_where_it_was_visible(truth):
    plate = _read(truth.subject / "background.png")
    seen_png = _read(truth.subject / "background_seen.png")
    assert plate.shape == (SIZE, SIZE, 3) and set(np.unique(seen_png)) <= {0, 255}
    seen = seen_png > 0
    # Pixels the true matte shows as background in at least 3 frames can be recovered;
    # those always covered by the (partly static) person cannot.
    visible = (truth.alpha < 0.5).sum(0) >= 3
    err = np.abs(plate.astype(np.float32) - truth.background).mean(2)
    assert err[seen & visible].mean() < 4.0
    assert (seen & visible).sum() >= 0.8 * visible.sum()
    assert (seen & ~visible).sum() < 0.06 * seen.sum()
    # Unseen pixels are inpainted, not left black or white.
    assert 40 < plate[~seen].mean() < 220


def test_person_mask_matches_true_matte(truth):
    ious = []
    for i in range(N_FRAMES):
        ours = _labels(truth, i) > 0
        true = truth.alpha[i] >= 0.5
        ious.append((ours & true).sum() / (ours | true).sum())
    assert min(ious) >= 0.9 and np.mean(ious) >= 0.93


def test_face_mask_is_inside_the_person_and_covers_the_face_oval(truth):
    for i in FRAMES_CHECKED:
        face = _read(truth.subject / "face_masks" / f"{i:06d}.png")
        labels = _labels(truth, i)
        assert set(np.unique(face)) <= {0, 255}
        assert np.all(labels[face > 0] == sg.HEAD)
        oval = _polygon(truth.landmarks[i, FACE_OVAL], SIZE)
        assert (face[oval] > 0).mean() > 0.85
        assert (face > 0).sum() <= oval.sum()
        # Eyes and lips are inside the face mask.
        for idx in ([33, 133, 362, 263], LIPS_UPPER + LIPS_LOWER):
            xy = np.round(truth.landmarks[i, idx, :2]).astype(int)
            assert np.all(face[xy[:, 1], xy[:, 0]] > 0)


def test_head_is_above_the_jaw_and_torso_below(truth):
    for i in FRAMES_CHECKED:
        labels = _labels(truth, i)
        lm = truth.landmarks[i]
        chin_y = lm[152, 1]
        face_h = lm[152, 1] - lm[10, 1]
        rows = np.arange(SIZE)[:, None]
        assert not np.any((labels == sg.HEAD) & (rows > chin_y + 0.05 * face_h))
        oval = cv2.erode(_polygon(lm[FACE_OVAL], SIZE).astype(np.uint8), np.ones((3, 3))) > 0
        assert np.all(labels[oval] == sg.HEAD)
        body = (labels == sg.TORSO) | (labels == sg.NECK)
        assert not np.any(body & (rows < lm[[234, 454], 1].min()))
        # The bottom rows under the chin are torso, and there is neck skin under the chin.
        assert (labels[-3:, int(lm[152, 0])] == sg.TORSO).all()
        assert (labels == sg.NECK).sum() > 0.002 * SIZE * SIZE


def test_mouth_boxes_contain_the_lips(truth):
    boxes = np.load(truth.subject / "mouth_boxes.npy")
    assert boxes.shape == (N_FRAMES, 4) and boxes.dtype == np.int32
    lips = truth.landmarks[:, LIPS_UPPER + LIPS_LOWER + MOUTH_INNER_LOOP, :2]
    assert np.all(boxes[:, :2, None] <= np.moveaxis(lips, 2, 1).min(2)[..., None])
    assert np.all(boxes[:, 2:] > lips.max(1))
    assert np.all(boxes >= 0) and np.all(boxes <= SIZE)
    mouth_w = lips[..., 0].max(1) - lips[..., 0].min(1)
    assert np.all(boxes[:, 2] - boxes[:, 0] < 2.0 * mouth_w)


def test_targets_are_the_frame_on_the_person_and_the_plate_elsewhere(truth):
    plate = _read(truth.subject / "background.png").astype(np.float32)
    for i in FRAMES_CHECKED:
        frame = _read(truth.subject / "frames" / f"{i:06d}.jpg").astype(np.float32)
        target = _read(truth.subject / "targets" / f"{i:06d}.jpg").astype(np.float32)
        labels = _labels(truth, i)
        inner = cv2.erode((labels > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        outer = cv2.erode((labels == 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        assert np.abs(target - frame)[inner].mean() < 2.0        # JPEG re-encoding only
        assert np.abs(target - plate)[outer].mean() < 2.0


def test_torso_images_hold_the_body_without_the_head(truth):
    for i in FRAMES_CHECKED:
        torso = _read(truth.subject / "torso" / f"{i:06d}.png")
        frame = _read(truth.subject / "frames" / f"{i:06d}.jpg")
        labels = _labels(truth, i)
        assert torso.shape == (SIZE, SIZE, 4)
        alpha = torso[..., 3]
        assert np.all(torso[alpha == 0, :3] == 0)
        body = cv2.erode((labels >= sg.NECK).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        assert (alpha[body] == 255).mean() > 0.99 and alpha[body].min() >= 240
        assert np.array_equal(torso[body, :3], frame[body])
        # The head is removed except for the neck continued upward behind the chin.
        head = labels == sg.HEAD
        filled = head & (alpha > 0)
        assert 0 < filled.sum() < 0.3 * head.sum()
        nose_y = truth.landmarks[i, 1, 1]
        assert filled.any(1).nonzero()[0].min() > nose_y
        assert not np.any(alpha[_polygon(truth.landmarks[i, FACE_OVAL], SIZE)
                                & (np.arange(SIZE)[:, None] < nose_y)])


def test_contact_sheet(truth):
    sheet = sg.contact_sheet(truth.subject, [0, 50], tile=64)
    assert sheet.shape == (128, 320, 3) and sheet.dtype == np.uint8
    with pytest.raises(InputError):
        sg.contact_sheet(truth.subject, [N_FRAMES], tile=64)


def test_memory_stays_below_the_size_of_the_clip(tmp_path):
    """The plate holds a bounded sample of frames; the per-frame pass streams."""
    root = tmp_path / "subject"
    root.mkdir()
    n = 60
    make_synth_subject(root, SIZE, n, seed=1)
    clip_bytes = n * SIZE * SIZE * 3
    tracemalloc.start()
    try:
        info = sg.run(root, {"plate_memory_mb": 2})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info["plate_frames"] == 2 * 2 ** 20 // (5 * SIZE * SIZE)
    assert peak < clip_bytes, f"peak {peak / 2**20:.1f} MiB ≥ clip {clip_bytes / 2**20:.1f} MiB"
    assert len(list((root / "torso").iterdir())) == n


def test_frames_segmented_in_parallel_match_a_serial_run(truth, tmp_path, monkeypatch):
    """Frames are segmented on several threads (plate and per-frame pass); the outputs are
    byte-identical to one thread's."""
    import shutil

    root = tmp_path / "subject"
    shutil.copytree(truth.subject / "frames", root / "frames")
    shutil.copy(truth.subject / "track.npz", root / "track.npz")
    monkeypatch.setattr(sg, "WORKERS", 1)
    sg.run(root, {})
    for folder, ext in {**OUTPUT_DIRS, ".": "png"}.items():
        for path in sorted((truth.subject / folder).glob(f"*.{ext}")):
            assert path.read_bytes() == (root / folder / path.name).read_bytes(), path


def test_parallel_map_keeps_order_and_cancels_after_an_error():
    assert list(sg.parallel_map(lambda i: i * i, range(30), workers=3)) == [i * i for i in range(30)]
    assert list(sg.parallel_map(lambda i: -i, range(5), workers=1)) == [0, -1, -2, -3, -4]
    started = []

    def work(i: int) -> int:
        started.append(i)
        if i == 3:
            raise ValueError("frame 3 is bad")
        return i

    with pytest.raises(ValueError, match="frame 3"):
        list(sg.parallel_map(work, range(1000), workers=2, ahead=2))
    assert len(started) < 20  # the rest was never started


# ---------------------------------------------------------------------------- errors
def test_errors_are_clear_and_leave_nothing_behind(tmp_path, truth):
    with pytest.raises(InputError, match="track step"):
        sg.run(tmp_path, {})
    with pytest.raises(InputError, match="unknown segment parameter"):
        sg.run(truth.subject, {"treshold_min": 3})
    root = tmp_path / "gappy"
    (root / "frames").mkdir(parents=True)
    np.savez(root / "track.npz", landmarks=truth.landmarks[:3], valid=np.ones(3, bool))
    with pytest.raises(InputError, match="frames are missing"):
        sg.run(root, {})
    assert sorted(p.name for p in root.iterdir()) == ["frames", "track.npz"]


@pytest.mark.parametrize("kind", ["missing", "directory", "not_a_model"])
def test_selfie_segmenter_path_errors(tmp_path, truth, kind):
    path = tmp_path / "selfie_multiclass_256x256.tflite"
    if kind == "directory":
        path.mkdir()
    elif kind == "not_a_model":
        path.write_bytes(b"this is not a tflite flatbuffer")
    with pytest.raises(ModelFileError) as e:
        sg.run(truth.subject, {"selfie_segmenter": str(path)})
    assert isinstance(e.value, SyncTalkError) and str(path) in str(e.value)


# ---------------------------------------------------------------------------- pieces
def test_masked_median_matches_numpy():
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 256, (9, 7, 5, 3), dtype=np.uint8)
    excluded = rng.random((9, 7, 5)) < 0.4
    excluded[:, 0, 0] = True
    med, count = sg.masked_median(stack, excluded, chunk_bytes=2 * 5 * 3 * (2 * 9 + 32))
    assert np.array_equal(count, (~excluded).sum(0))
    for y in range(7):
        for x in range(5):
            vals = np.sort(stack[~excluded[:, y, x], y, x], axis=0)
            if len(vals):
                assert np.array_equal(med[y, x], vals[(len(vals) - 1) // 2])


def test_fill_missing_landmarks_takes_the_nearest_tracked_frame():
    lm = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 478, 3), np.float32)
    lm[[0, 2, 3]] = np.nan
    filled, n = sg.fill_missing_landmarks(lm)
    assert n == 3 and np.array_equal(filled[:, 0, 0], [1, 1, 1, 4, 4, 5])
    with pytest.raises(InputError, match="no frame"):
        sg.fill_missing_landmarks(np.full((2, 478, 3), np.nan, np.float32))


def test_guided_filter_upsamples_a_coarse_mask_onto_the_guide_edge():
    guide = np.zeros((64, 64), np.float32)
    guide[:, 30:] = 1.0
    coarse = np.zeros((32, 32), np.float32)
    coarse[:, 13:] = 1.0                       # half resolution, edge 4 px left of the guide's
    out = sg.guided_filter(guide, coarse, radius=8, eps=1e-4)
    plain = cv2.resize(coarse, (64, 64), interpolation=cv2.INTER_LINEAR)
    assert out.shape == (64, 64)
    assert out[0, 30] - out[0, 29] > 0.4 > plain[0, 30] - plain[0, 29]   # a step at the guide edge
    assert np.all(out[:, 30:] > 0.95) and np.all(out[:, :12] < 0.1)


def test_fill_holes_keeps_bottom_open_regions_filled():
    mask = np.zeros((20, 20), np.uint8)
    mask[5:, 5:15] = 1
    mask[8:12, 8:12] = 0                       # a hole
    mask[15:, 9:11] = 0                        # a notch open to the bottom edge only
    out = sg.fill_holes(mask)
    assert out[10, 10] == 1 and out[18, 10] == 1 and out[0, 0] == 0 and out[10, 2] == 0


# ---------------------------------------------------------------------------- real clip
def test_real_clip_smoke(tmp_path, shared_data, face_landmarker_path):
    """Two seconds of a real presenter: sensible plate, labels in the right places."""
    from data_prep.face_tracking import track_video
    import imageio.v2 as imageio

    clip = shared_data / "clips" / "german_20s_25fps.mp4"
    n = 50
    root = tmp_path / "real"
    (root / "frames").mkdir(parents=True)
    reader = imageio.get_reader(str(clip), "ffmpeg")
    for i, frame in enumerate(reader):
        if i >= n:
            break
        cv2.imwrite(str(root / "frames" / f"{i:06d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    reader.close()
    track = track_video(clip, face_landmarker_path, max_frames=n)
    np.savez(root / "track.npz", landmarks=track.landmarks, valid=track.detected)
    info = sg.run(root, {})
    assert info["plate_coverage"] > 0.3 and 0.3 < info["person_area"] < 0.8
    for i in (0, n - 1):
        labels = _read(root / "masks" / f"{i:06d}.png")
        lm = track.landmarks[i]
        oval = _polygon(lm[FACE_OVAL], labels.shape[0]).astype(np.uint8)
        assert np.all(labels[cv2.erode(oval, np.ones((3, 3))) > 0] == sg.HEAD)
        assert labels[-2, labels.shape[1] // 2] == sg.TORSO          # shirt/tie at the bottom
        assert labels[5, 5] == sg.BACKGROUND and labels[5, -5] == sg.BACKGROUND
