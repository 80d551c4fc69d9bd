"""Regenerate ``synctalk/synth/assets/grace_hopper_landmarks.json``.

The synthetic talking head warps a face photo along its MediaPipe face mesh. For the
default photo (``grace_hopper.jpg``, public domain, shipped inside matplotlib) the 478
landmarks are computed once with this script and committed, so that ``synctalk synth``
needs no MediaPipe model at run time.

    python scripts/make_synth_landmarks.py --face-landmarker PATH/face_landmarker.task
"""
import argparse
from pathlib import Path

import cv2

from data_prep.face_tracking import FaceLandmarker
from synctalk.fsutil import sha256_file, write_json_atomic
from synctalk.synth.face import ASSETS, default_photo_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--face-landmarker", required=True)
    args = ap.parse_args()
    photo = default_photo_path()
    rgb = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    with FaceLandmarker(args.face_landmarker, video=False) as fl:
        faces = fl.detect(rgb)
    assert len(faces) == 1, "expected exactly one face in the default photo"
    out = {
        "photo": photo.name,
        "photo_sha256": sha256_file(photo),
        "width": rgb.shape[1],
        "height": rgb.shape[0],
        "units": "pixels of the photo; z is MediaPipe's relative depth scaled by the width",
        "landmarks": [[round(float(v), 2) for v in p] for p in faces[0].landmarks],
    }
    write_json_atomic(Path(ASSETS) / "grace_hopper_landmarks.json", out, indent=None)
    print("wrote", Path(ASSETS) / "grace_hopper_landmarks.json")


if __name__ == "__main__":
    main()
