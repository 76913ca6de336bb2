"""End-to-end pipeline rows for `grefel bench --source VIDEO`: FPS and ms per stage.

Each row streams the video through `grefel.predict.stream_predictions` (the code
`grefel predict` runs: decode, detect, align, infer, post, records written to /dev/null) for one
model file, detector and `det_every`, and records frames, faces, end-to-end FPS and the mean
milliseconds per frame of each stage, with the machine's load beside them.

    python -m benchmarks.pipeline --make-video scratch/one_face_640x480.avi

writes the benchmark's video: 300 frames, 640 x 480, 30 FPS, MJPG, one real face (the
public-domain astronaut photo of benchmarks/data/astronaut.jpg, from scikit-image's sample
data) moving on a slow path across a still background.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["make_video", "pipeline_rows"]

ASTRONAUT = Path(__file__).resolve().parent / "data" / "astronaut.jpg"
BACKEND_OF = {".onnx": "onnx", ".engine": "tensorrt", ".plan": "tensorrt",
              ".safetensors": "torch"}


def pipeline_rows(
    weights: Sequence[Path],
    source: str,
    detectors: Sequence[str],
    det_every: Sequence[int],
    det_size: int = 640,
    threads: Optional[int] = None,
    max_frames: Optional[int] = None,
    backends: Optional[Sequence[str]] = None,
    progress: Any = None,
) -> List[Dict[str, Any]]:
    """One row per (weights, detector, det_every); a row that cannot run says why."""
    from grefel._lazy import MissingDependency
    from grefel.config import FaceAlignment
    from grefel.contract import INPUT_SHAPE
    from grefel.predict import PredictOptions, RecordWriter, stream_predictions
    from grefel.progress import Progress
    from grefel.runtime import BackendError, open_backend

    rows = []
    for path in weights:
        backend_name = BACKEND_OF.get(Path(path).suffix.lower(), "?")
        if backends is not None and {"tensorrt": "trt"}.get(backend_name, backend_name) \
                not in backends:
            continue
        for det in detectors:
            for every in det_every:
                row: Dict[str, Any] = {
                    "weights": Path(path).name, "backend": backend_name, "detector": det,
                    "det_every": every, "det_size": det_size, "threads": threads,
                    "source": str(source),
                }
                if progress:
                    progress(f"pipeline: {Path(path).name} {det} det_every={every} ...")
                try:
                    opts = PredictOptions(face=FaceAlignment(detector=det, det_size=det_size),
                                          det_every=every, threads=threads,
                                          max_frames=max_frames)
                    load0 = os.getloadavg()[0]
                    with open_backend(path, threads=threads) as backend, \
                            open(os.devnull, "w") as sink:
                        warm = np.zeros((1, *INPUT_SHAPE), np.float32)
                        backend.infer(warm)  # first-call setup is not a frame's time
                        summary = stream_predictions(
                            str(source), backend, RecordWriter(sink, "jsonl", backend.classes),
                            opts=opts,
                            progress=Progress(f"bench {Path(path).name} {det} det_every={every}",
                                              "frames", total=max_frames))
                    row.update(
                        status="ok", frames=summary.frames, faces=summary.faces,
                        no_face_frames=summary.no_face_frames, seconds=round(summary.seconds, 3),
                        fps=round(summary.fps, 2), stages_ms=summary.stages_ms,
                        detector_used=summary.detector,
                        load_1min=[round(load0, 2), round(os.getloadavg()[0], 2)],
                    )
                except (BackendError, MissingDependency, ValueError, OSError) as exc:
                    row.update(status="error", error=str(exc).splitlines()[0])
                rows.append(row)
    return rows


def pipeline_markdown(rows: Sequence[Dict[str, Any]]) -> List[str]:
    stages = ("decode", "detect", "align", "infer", "post")
    head = ["model", "backend", "detector", "det every", "det size", "frames", "faces", "FPS"]
    head += [f"{s} ms" for s in stages] + ["load 1 min (start, end)", "status"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ok = r.get("status") == "ok"
        cells = [r["weights"], r["backend"], r.get("detector_used") or r["detector"],
                 str(r["det_every"]), str(r["det_size"]),
                 str(r.get("frames", "-")), str(r.get("faces", "-")),
                 f"{r['fps']:.1f}" if ok else "-"]
        cells += [f"{r['stages_ms'][s]:.1f}" if ok else "-" for s in stages]
        cells += [str(r.get("load_1min", "-")), "ok" if ok else r.get("error", "error")]
        out.append("| " + " | ".join(cells) + " |")
    return out


def _face_image() -> np.ndarray:
    """The head and shoulders of the astronaut photo in benchmarks/data (public domain)."""
    from grefel.contract import decode_image

    return decode_image(ASTRONAUT)[40:220, 140:310]  # head and shoulders, 170 x 180


def make_video(path: Path, frames: int = 300, fps: float = 30.0) -> Path:
    """The benchmark video (module docstring)."""
    import cv2

    face = _face_image()
    fh, fw = face.shape[:2]
    yy, xx = np.mgrid[0:480, 0:640]
    background = np.stack([(xx * 0.2 + 60), (yy * 0.15 + 80), (xx * 0.05 + yy * 0.1 + 90)],
                          axis=2).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
    for i in range(frames):
        t = 2 * math.pi * i / frames
        x = int(320 - fw / 2 + 150 * math.sin(t))
        y = int(240 - fh / 2 + 80 * math.sin(2 * t))
        frame = background.copy()
        frame[y : y + fh, x : x + fw] = face
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description="Write the pipeline benchmark's video.")
    ap.add_argument("--make-video", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=300)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    make_video(args.make_video, frames=args.frames)
    print(f"wrote {args.make_video} ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
