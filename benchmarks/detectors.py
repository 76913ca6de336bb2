"""Face detectors side by side on real photos found in installed packages (issue 14).

    python -m benchmarks.detectors --out benchmarks/results

Photos: scikit-image's `skimage/data` (astronaut, camera, ... and `lfw_subset.npy`: 100 LFW
faces and 100 non-faces, 25 x 25 grey) and Debian's opencv-doc examples
(/usr/share/doc/opencv-doc/examples/data). The faces of each photo were boxed by hand
(benchmarks/data/face_photos.json); every other photo of those folders counts as holding no
face. A detection matches a face at IoU >= 0.3 (detectors box faces differently); an unmatched
detection is a false positive. LFW crops are enlarged 4x (bicubic) into a 192 px grey frame: a
face crop is found when a detection covers its centre, a non-face crop gets a false positive for
any detection. Times: median of 3 runs per photo, with the machine's load beside them.

The BlazeFace models are the files inside grefel (grefel/runtime/models), run by the first
available of ai-edge-litert, tflite-runtime and OpenCV DNN (`--runtime` to choose).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from grefel.contract import ImageError, decode_image
from grefel.fileio import atomic_write_json
from grefel.runtime import detectors as D

__all__ = ["evaluate", "photo_set"]

DATA = Path(__file__).with_name("data") / "face_photos.json"
OPENCV_DOC = Path("/usr/share/doc/opencv-doc/examples/data")
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif"}


def _skimage_data() -> Optional[Path]:
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("scikit-image")
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(str(dist.locate_file("skimage/data")))


def photo_set() -> List[Tuple[str, Path, List[List[int]]]]:
    """(name, path, face boxes) of every photo of the two folders (>= 64 px on its short side)."""
    truth = json.loads(DATA.read_text())["faces"]
    roots = {"scikit-image": _skimage_data(), "opencv-doc": OPENCV_DOC}
    out = []
    for pkg, root in roots.items():
        if root is None or not root.is_dir():
            continue
        for path in sorted(root.iterdir()):
            if path.suffix.lower() not in SUFFIXES:
                continue
            out.append((f"{pkg}:{path.name}", path, truth.get(f"{pkg}:{path.name}", [])))
    return out


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _timed(det: Any, image: np.ndarray, repeat: int = 3) -> Tuple[List[Any], float]:
    times, faces = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        faces = det.faces(image)
        times.append(time.perf_counter() - t0)
    return faces, 1000.0 * statistics.median(times)


def evaluate(det: Any, photos: Sequence[Tuple[str, Path, List[List[int]]]],
             lfw: Optional[np.ndarray]) -> Dict[str, Any]:
    tp = fn = fp = fp_photos = first_wrong = 0
    ms: List[float] = []
    rows = []
    for name, path, truth in photos:
        try:
            image = decode_image(path)
        except ImageError:
            continue
        if min(image.shape[:2]) < 64:
            continue
        faces, t = _timed(det, image)
        ms.append(t)
        matched = set()
        wrong = 0
        for f in faces:
            hit = next((i for i, g in enumerate(truth)
                        if i not in matched and _iou(f.box, g) >= 0.3), None)
            if hit is None:
                wrong += 1
            else:
                matched.add(hit)
        tp += len(matched)
        fn += len(truth) - len(matched)
        fp += wrong
        fp_photos += bool(wrong)
        if truth and faces and not any(_iou(faces[0].box, g) >= 0.3 for g in truth):
            first_wrong += 1
        rows.append({"photo": name, "size": list(image.shape[:2]), "faces": len(truth),
                     "found": [list(f.box) for f in faces],
                     "scores": [round(f.score, 3) for f in faces], "ms": round(t, 2)})
    result: Dict[str, Any] = {
        "photos": len(rows),
        "faces": tp + fn,
        "recall": round(tp / max(tp + fn, 1), 3),
        "true_positives": tp,
        "false_positives": fp,
        "photos_with_false_positives": fp_photos,
        "first_detection_not_a_face": first_wrong,
        "ms_median": round(statistics.median(ms), 2) if ms else None,
        "ms_mean": round(statistics.fmean(ms), 2) if ms else None,
        "rows": rows,
    }
    if lfw is not None:
        import cv2

        found = fps = 0
        lfw_ms = []
        for i, crop in enumerate(lfw):
            big = cv2.resize((crop * 255).astype(np.uint8), (100, 100),
                             interpolation=cv2.INTER_CUBIC)
            frame = np.full((192, 192), 128, np.uint8)
            frame[46:146, 46:146] = big
            faces, t = _timed(det, np.repeat(frame[:, :, None], 3, axis=2), repeat=1)
            lfw_ms.append(t)
            if i < 100:
                found += any(f.box[0] <= 96 <= f.box[2] and f.box[1] <= 96 <= f.box[3]
                             for f in faces)
            else:
                fps += bool(faces)
        result["lfw_subset"] = {"face_crops_found": found, "of_faces": 100,
                                "non_face_crops_with_detection": fps, "of_non_faces": 100,
                                "ms_median": round(statistics.median(lfw_ms), 2)}
    return result


def _load() -> Dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"load_1min": round(one, 2), "load_5min": round(five, 2), "cores": os.cpu_count() or 0}


def _du(paths: Sequence[Path]) -> int:
    total = 0
    for p in paths:
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total


def _dist_size(name: str) -> Optional[int]:
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    return sum(Path(str(dist.locate_file(f))).stat().st_size for f in (dist.files or [])
               if Path(str(dist.locate_file(f))).is_file())


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--runtime", choices=["auto", "opencv"], default="auto")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    import cv2

    if args.threads:
        cv2.setNumThreads(args.threads)
    interp = D.OpenCVTFLite if args.runtime == "opencv" else None
    dets: Dict[str, Any] = {"haar": D.HaarDetector()}
    for key in ("blazeface", "blazeface-full"):
        dets[key] = D.BlazeFaceDetector(key, threads=args.threads, interpreter=interp)
    runtime = type(dets["blazeface"]._interp).__module__ + "." + type(
        dets["blazeface"]._interp).__name__
    photos = photo_set()
    sk = _skimage_data()
    lfw = np.load(sk / "lfw_subset.npy") if sk and (sk / "lfw_subset.npy").is_file() else None
    load_before = _load()
    results = {name: evaluate(det, photos, lfw) for name, det in dets.items()}
    haar_xml = Path(cv2.data.haarcascades) / D.HaarDetector.CASCADE
    sizes = {
        "haar_xml_bytes": haar_xml.stat().st_size,
        "blazeface_tflite_bytes": _du([dets["blazeface"].model]),
        "blazeface_full_tflite_bytes": _du([dets["blazeface-full"].model]),
        "ai_edge_litert_installed_bytes": _dist_size("ai-edge-litert"),
    }
    record = {
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "opencv": cv2.__version__,
        "tflite_runtime": runtime,
        "threads": args.threads,
        "load_before": load_before,
        "load_after": _load(),
        "sizes": sizes,
        "detectors": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.out / f"detectors_{stamp}.json"
    atomic_write_json(path, record)
    lines = [f"# Face detectors on real photos ({record['created_utc']})", "",
             f"OpenCV {cv2.__version__}; TFLite runtime {runtime}; threads {args.threads}; "
             f"load {load_before['load_1min']} before, {record['load_after']['load_1min']} "
             f"after ({load_before['cores']} cores, shared).", "",
             "| detector | photos | faces | recall | false pos. | photos w/ FP | first box "
             "wrong | ms median | ms mean | LFW faces found | LFW non-faces w/ det. |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lf = r.get("lfw_subset") or {}
        lines.append(f"| {name} | {r['photos']} | {r['faces']} | {r['recall']} | "
                     f"{r['false_positives']} | {r['photos_with_false_positives']} | "
                     f"{r['first_detection_not_a_face']} | {r['ms_median']} | {r['ms_mean']} | "
                     f"{lf.get('face_crops_found', '-')}/100 | "
                     f"{lf.get('non_face_crops_with_detection', '-')}/100 |")
    lines += ["", "Sizes (bytes): " + ", ".join(f"{k} {v}" for k, v in sizes.items()), "",
              "Photos with a face or a detection:", ""]
    for name, r in results.items():
        for row in r["rows"]:
            if row["faces"] or row["found"]:
                lines.append(f"- {name} {row['photo']}: {row['faces']} face(s), found "
                             f"{row['found']} scores {row['scores']}")
    (args.out / f"detectors_{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:4 + 2 + len(results) + 1]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
