"""Face detectors side by side on real photos found in installed packages (issue 14), and on a
folder of one-face photos.

    python -m research.detectors --out research/results
    python -m research.detectors --one-face DIR --sample 500 --seed 0

Photos: scikit-image's `skimage/data` (astronaut, camera, ... and `lfw_subset.npy`: 100 LFW
faces and 100 non-faces, 25 x 25 grey) and Debian's opencv-doc examples
(/usr/share/doc/opencv-doc/examples/data). The faces of each photo were boxed by hand
(research/data/face_photos.json); every other photo of those folders counts as holding no
face. A detection matches a face at IoU >= 0.3 (detectors box faces differently); an unmatched
detection is a false positive. LFW crops are enlarged 4x (bicubic) into a 192 px grey frame: a
face crop is found when a detection covers its centre, a non-face crop gets a false positive for
any detection. Times: median of 3 runs per photo, with the machine's load beside them.

`--variants` adds other rules for `auto` (grefel.runtime.detectors.AutoDetector's arguments):
the short-range model's faces unconfirmed at thresholds 0.5 to 0.9, and the confirmation with
another zoom-out or score, each run for real beside the chosen rule.

`--one-face DIR`: a folder (recursive) of photos that each hold one face covering the photo's
centre (tight face crops such as LFW's or muxspace/facial_expressions'); `--sample N` of them
drawn with `--seed` from the sorted file list (every one with `--sample 0`). The face is found
when a detection's box covers the centre; every other detection is a false positive. One run
per photo (time: the median over photos).

The BlazeFace models are the files inside grefel (grefel/runtime/models), run by the first
available of ai-edge-litert, tflite-runtime and OpenCV DNN (`--runtime` to choose).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from benchmarks.report import write_json_and_markdown
from grefel.contract import ImageError, decode_image
from grefel.runtime import detectors as D

__all__ = ["evaluate", "evaluate_one_face", "one_face_sample", "photo_set"]

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
    """Recall and false positives on the photos (rows: those with a face or a detection) and
    on the LFW crops."""
    tp = fn = fp = fp_photos = first_wrong = n_photos = 0
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
        n_photos += 1
        if truth or faces:
            rows.append({"photo": name, "size": list(image.shape[:2]), "faces": len(truth),
                         "found": [list(f.box) for f in faces],
                         "scores": [round(f.score, 3) for f in faces], "ms": round(t, 2)})
    result: Dict[str, Any] = {
        "photos": n_photos,
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


def one_face_sample(folder: Path, n: int, seed: int) -> List[Path]:
    """`n` image files of `folder` (recursive; all with n = 0), drawn with `seed` from the
    sorted list, in sorted order."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    if not files:
        raise SystemExit(f"{folder}: no images ({', '.join(sorted(SUFFIXES))})")
    if n and n < len(files):
        files = sorted(random.Random(seed).sample(files, n))
    return files


def evaluate_one_face(det: Any, files: Sequence[Path], root: Path) -> Dict[str, Any]:
    """Faces found (a detection covering the photo's centre) and false positives (every other
    detection) on photos of one face each; the photos missed (paths under `root`) and those
    with a false positive (with every detection)."""
    found = fp = unreadable = 0
    ms: List[float] = []
    missed, wrong_rows = [], []
    for path in files:
        try:
            image = decode_image(path)
        except ImageError:
            unreadable += 1
            continue
        faces, t = _timed(det, image, repeat=1)
        ms.append(t)
        h, w = image.shape[:2]
        hit = [f.box[0] <= w / 2 <= f.box[2] and f.box[1] <= h / 2 <= f.box[3] for f in faces]
        wrong = len(faces) - (1 if any(hit) else 0)
        found += any(hit)
        fp += wrong
        name = path.relative_to(root).as_posix()
        if not any(hit):
            missed.append(name)
        if wrong:
            wrong_rows.append({"photo": name, "size": [h, w], "found": [list(f.box) for f in faces],
                               "scores": [round(f.score, 3) for f in faces]})
    n = len(files) - unreadable
    return {"images": n, "unreadable": unreadable, "found": found,
            "recall": round(found / max(n, 1), 3), "false_positives": fp,
            "images_with_false_positives": len(wrong_rows),
            "ms_median": round(statistics.median(ms), 2) if ms else None,
            "missed": missed, "false_positive_rows": wrong_rows}


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


# Other rules for `auto` (AutoDetector's keyword arguments), measured with --variants
VARIANTS: Dict[str, Dict[str, Any]] = {
    "full, else short >= 0.5": {"zoom_out": None},
    "full, else short >= 0.7": {"zoom_out": None, "short_min_score": 0.7},
    "full, else short >= 0.8": {"zoom_out": None, "short_min_score": 0.8},
    "full, else short >= 0.9": {"zoom_out": None, "short_min_score": 0.9},
    "auto with zoom-out 1.5": {"zoom_out": 1.5},
    "auto with zoom-out 3": {"zoom_out": 3.0},
    "auto with confirm score 0.4": {"confirm_score": 0.4},
    "auto with confirm score 0.6": {"confirm_score": 0.6},
}


def _detectors(names: Sequence[str], runtime: str, threads: Optional[int],
               variants: bool = False) -> Dict[str, Any]:
    interp = D.OpenCVTFLite if runtime == "opencv" else None
    dets: Dict[str, Any] = {}
    for name in names:
        if name == "haar":
            dets[name] = D.HaarDetector()
        elif name == "auto":
            dets[name] = D.AutoDetector(threads=threads, interpreter=interp)
        else:
            dets[name] = D.BlazeFaceDetector(name, threads=threads, interpreter=interp)
    for name, kwargs in (VARIANTS.items() if variants else []):
        dets[name] = D.AutoDetector(threads=threads, interpreter=interp, **kwargs)
    return dets


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("research/results"))
    ap.add_argument("--runtime", choices=["auto", "opencv"], default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--detectors", default="auto,blazeface-full,blazeface,haar",
                    help="comma-separated grefel.runtime.detectors.DETECTORS names")
    ap.add_argument("--variants", action="store_true", help="also other rules for auto")
    ap.add_argument("--one-face", type=Path, help="a folder of photos of one centred face each")
    ap.add_argument("--sample", type=int, default=500, help="photos drawn from --one-face (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="the seed of --sample's draw")
    args = ap.parse_args(argv)
    names = [n for n in args.detectors.split(",") if n]
    bad = [n for n in names if n not in D.DETECTORS]
    if bad or not names:
        ap.error(f"--detectors: unknown {bad}; names of {', '.join(D.DETECTORS)}")
    if args.one_face is not None and not args.one_face.is_dir():
        ap.error(f"--one-face: {args.one_face} is not a folder")

    import cv2

    if args.threads:
        cv2.setNumThreads(args.threads)
    dets = _detectors(names, args.runtime, args.threads, variants=args.variants)
    interp = (D.OpenCVTFLite if args.runtime == "opencv" else D.tflite_interpreter)(
        D.blazeface_model_path(), args.threads)
    runtime = f"{type(interp).__module__}.{type(interp).__name__}"
    photos = photo_set()
    sk = _skimage_data()
    lfw = np.load(sk / "lfw_subset.npy") if sk and (sk / "lfw_subset.npy").is_file() else None
    load_before = _load()
    results = {name: evaluate(det, photos, lfw) for name, det in dets.items()}
    one_face = None
    if args.one_face is not None:
        files = one_face_sample(args.one_face, args.sample, args.seed)
        one_face = {"folder": str(args.one_face), "sample": args.sample, "seed": args.seed,
                    "detectors": {name: evaluate_one_face(det, files, args.one_face)
                                  for name, det in dets.items()}}
    haar_xml = Path(cv2.data.haarcascades) / D.HaarDetector.CASCADE
    sizes = {
        "haar_xml_bytes": haar_xml.stat().st_size,
        "blazeface_tflite_bytes": _du([D.blazeface_model_path("blazeface")]),
        "blazeface_full_tflite_bytes": _du([D.blazeface_model_path("blazeface-full")]),
        "ai_edge_litert_installed_bytes": _dist_size("ai-edge-litert"),
    }
    record = {
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python -m research.detectors",
                             *map(shlex.quote, argv if argv is not None else sys.argv[1:])]),
        "opencv": cv2.__version__,
        "tflite_runtime": runtime,
        "threads": args.threads,
        "auto": {"zoom_out": D.AUTO_ZOOM_OUT, "confirm_score": D.AUTO_CONFIRM_SCORE,
                 "confirm_iou": D.AUTO_CONFIRM_IOU},
        "load_before": load_before,
        "load_after": _load(),
        "sizes": sizes,
        "detectors": results,
        "one_face": one_face,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"detectors_{time.strftime('%Y%m%d-%H%M%S')}"
    lines = _markdown(record)
    write_json_and_markdown(stem.with_suffix(".json"), stem.with_suffix(".md"), record,
                            "\n".join(lines) + "\n")
    print("\n".join(line for line in lines if line.startswith(("|", "#", "`"))))
    print(f"wrote {stem}.json and .md")


def _markdown(record: Dict[str, Any]) -> List[str]:
    """The record as Markdown: the command, the tables, then the photos with a face or a
    detection and the one-face photos missed or with a false positive."""
    results, load = record["detectors"], record["load_before"]
    lines = [f"# Face detectors on real photos ({record['created_utc']})", "",
             f"`{record['command']}`", "",
             f"OpenCV {record['opencv']}; TFLite runtime {record['tflite_runtime']}; threads "
             f"{record['threads']}; load {load['load_1min']} before, "
             f"{record['load_after']['load_1min']} after ({load['cores']} cores, shared). "
             f"auto: {record['auto']}.", "",
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
    one = record["one_face"]
    if one:
        lines += ["", f"One-face photos: {one['folder']}, sample {one['sample']}, seed "
                  f"{one['seed']} (found: a detection covers the photo's centre).", "",
                  "| detector | photos | found | recall | false pos. | photos w/ FP | ms median |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in one["detectors"].items():
            lines.append(f"| {name} | {r['images']} | {r['found']} | {r['recall']} | "
                         f"{r['false_positives']} | {r['images_with_false_positives']} | "
                         f"{r['ms_median']} |")
    lines += ["", "Sizes (bytes): " + ", ".join(f"{k} {v}" for k, v in record["sizes"].items()),
              "", "Photos with a face or a detection:", ""]
    for name, r in results.items():
        for row in r["rows"]:
            if row["faces"] or row["found"]:
                lines.append(f"- {name} {row['photo']}: {row['faces']} face(s), found "
                             f"{row['found']} scores {row['scores']}")
    if one:
        lines += ["", "One-face photos: the false positives of each detector, and the photos "
                  "`auto` missed (every detector's misses are in the JSON):", ""]
        for name, r in one["detectors"].items():
            for row in r["false_positive_rows"]:
                lines.append(f"- {name} {row['photo']} {row['size']}: found {row['found']} "
                             f"scores {row['scores']}")
        if "auto" in one["detectors"]:
            lines.append(f"- auto missed: {', '.join(one['detectors']['auto']['missed'])}")
    return lines


if __name__ == "__main__":
    main()
