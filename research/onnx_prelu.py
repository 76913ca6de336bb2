"""ONNX Runtime CPU time of one PReLU, as `PRelu` and as export/prelu.py's two branch-free
forms, on inputs of three sign patterns, side by side in one run.

    python -m research.onnx_prelu --threads 1 --iters 50 --out research/results/onnx_prelu

One [1, 64, 112, 112] tensor (the paper preset's largest PReLU input), slopes drawn in
[0.1, 0.4]. Each form is an ONNX graph of its own (the branch-free ones made by
`export.prelu.to_branch_free` from the `PRelu` one), run in turn on each input after 3 warm-up
calls; the median of `--iters` timed calls is recorded with the 1-minute load average, and each
form's output is compared exactly with `PRelu`'s.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from grefel.contract import INPUT_SIZE

__all__ = ["main", "run"]

SHAPE = (1, 64, INPUT_SIZE, INPUT_SIZE)  # the input layer's map: 64 channels at input size


def _graphs() -> Dict[str, Any]:
    from onnx import TensorProto, helper, numpy_helper

    from export.prelu import to_branch_free

    slope = np.random.default_rng(1).uniform(0.1, 0.4, (SHAPE[1], 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("PRelu", ["x", "a"], ["y"], name="prelu")], "prelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(SHAPE))],
        [numpy_helper.from_array(slope, "a")])
    forms = {}
    for name, max_form in (("PRelu", None), ("Relu + a * Min(x, 0)", False),
                           ("Max(x, a * x)", True)):
        forms[name] = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        if max_form is not None:
            to_branch_free(forms[name], max_form=max_form)
    return forms


def _inputs() -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    normal = rng.standard_normal(SHAPE).astype(np.float32)
    per_channel = np.sign(rng.standard_normal((1, SHAPE[1], 1, 1))).astype(np.float32)
    return {"random signs": normal, "one sign per channel": np.abs(normal) * per_channel,
            "all positive": np.abs(normal)}


def run(threads: int, iters: int) -> Dict[str, Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sessions = {name: ort.InferenceSession(m.SerializeToString(), opts,
                                           providers=["CPUExecutionProvider"])
                for name, m in _graphs().items()}
    rows: List[Dict[str, Any]] = []
    for signs, x in _inputs().items():
        outputs = {}
        for form, session in sessions.items():
            for _ in range(3):
                outputs[form] = session.run(None, {"x": x})[0]
            times = []
            for _ in range(iters):
                t0 = time.perf_counter()
                session.run(None, {"x": x})
                times.append(time.perf_counter() - t0)
            rows.append({"input": signs, "form": form, "median_ms": 1000 * float(np.median(times)),
                         "load_1min": os.getloadavg()[0]})
        for row in rows[-len(sessions) + 1:]:
            row["equal_to_prelu"] = bool(np.array_equal(outputs[row["form"]], outputs["PRelu"]))
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "shape": list(SHAPE), "threads": threads,
            "iters": iters, "onnxruntime": ort.__version__, "cpu": platform.processor() or
            platform.machine(), "rows": rows}


def _markdown(record: Dict[str, Any], command: str) -> str:
    lines = [f"# ONNX Runtime CPU: one PReLU {tuple(record['shape'])}, three forms "
             f"({record['date']})", "", f"Command: `{command}`", "",
             f"onnxruntime {record['onnxruntime']}, {record['threads']} thread(s), median of "
             f"{record['iters']} calls.", "",
             "| input | form | median ms | load (1 min) | output equal to PRelu |",
             "|---|---|---:|---:|---|"]
    for r in record["rows"]:
        equal = "" if "equal_to_prelu" not in r else ("yes" if r["equal_to_prelu"] else "NO")
        lines.append(f"| {r['input']} | {r['form']} | {r['median_ms']:.2f} | "
                     f"{r['load_1min']:.2f} | {equal} |")
    return "\n".join(lines) + "\n"


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("research/results/onnx_prelu"))
    args = parser.parse_args(argv)
    from benchmarks.report import write_json_and_markdown

    record = run(args.threads, args.iters)
    command = (f"python -m research.onnx_prelu --threads {args.threads} --iters {args.iters} "
               f"--out {args.out}")
    write_json_and_markdown(args.out.with_suffix(".json"), args.out.with_suffix(".md"), record,
                            _markdown(record, command))
    print(_markdown(record, command))


if __name__ == "__main__":
    main()
