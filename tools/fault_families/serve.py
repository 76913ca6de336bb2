"""27.7: `grefel serve` answers each request for its own sake.

Each case starts a real `python -m grefel serve` (PyTriton's tritonserver) in a child process on
free local ports, with the mini ONNX model of `tools/fault_corpus.py` (probs = softmax of the
three channel means: every answer can be checked in closed form), sends HTTP requests as a
client would (valid and invalid ones at once, malformed bodies, clients that hang up) and always
stops the server (SIGTERM, then SIGKILL) in a `finally`.

A case's Procs: the server's own (its exit status after SIGTERM and its output) and, last, a
synthetic Proc of the client: one JSON line per HTTP answer (status and body) on stdout, so a
traceback in any answer is seen by `classify`. Its exit status is 0 when the answers were
received; for the cases that send one invalid request (expect "error") it is 1 with one
`Error: HTTP <status>: <message>` line, as a command-line client would print the refusal.
`check` then verifies every answer: valid ones equal the closed form and, bit for bit, the same
request's answer when sent alone; invalid ones a 4xx with one line naming what is wrong.
The other cases run `grefel serve` itself (a taken port, clashing ports): one `Error:` line,
within seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from grefel.contract import INPUT_SHAPE
from tools.fault_campaign import ROOT, Case, Proc, grefel

FAMILY = "27.7 serve isolates requests"
SIDE = "serve"
ITEM = "27.7"
READY_TIMEOUT_S = 90.0
CLASSES = ("red", "green", "blue")  # tools.fault_corpus.MINI_CLASSES

Answer = Tuple[int, str]  # HTTP status, body


# -- the server --------------------------------------------------------------------------------


def _free_ports(n: int) -> List[int]:
    """n distinct ports that were free a moment ago (bound to port 0 at once, then closed)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Server:
    """`python -m grefel serve` with the mini model on free ports; `http` is its HTTP port."""

    def __init__(self, work: Path, model: Path, extra: Sequence[str] = ()) -> None:
        self.http, grpc, metrics = _free_ports(3)
        self.log = work / "server.out"
        self.argv = [sys.executable, "-m", "grefel", "serve", "-w", str(model), "--threads", "1",
                     "--http-port", str(self.http), "--grpc-port", str(grpc), "--metrics-port",
                     str(metrics), "--out", str(work / "run"), "--exit-timeout", "5", *extra]
        self.start = time.perf_counter()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=ROOT)

    def url(self, model: str = "grefel") -> str:
        return f"http://127.0.0.1:{self.http}/v2/models/{model}/infer"

    def wait_ready(self) -> bool:
        """Polls GET /v2/health/ready until 200 (True) or the server exits / times out."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"http://127.0.0.1:{self.http}/v2/health/ready", timeout=5) as r:
                if r.status == 200:
                    return True
            time.sleep(0.1)
        return False

    def stop(self) -> Proc:
        """SIGTERM (SIGKILL after 20 s): the server's Proc, its output and exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return Proc(self.argv, None, self.log.read_text(errors="replace"), "",
                            time.perf_counter() - self.start)
        return Proc(self.argv, self.proc.returncode, self.log.read_text(errors="replace"), "",
                    time.perf_counter() - self.start)


@contextlib.contextmanager
def _serving(work: Path, model: Path, procs: List[Proc],
             extra: Sequence[str] = ()) -> Iterator[Optional[Server]]:
    """A ready server (None if it never got ready), always stopped; its Proc joins `procs`."""
    server = Server(work, model, extra)
    try:
        yield server if server.wait_ready() else None
    finally:
        procs.insert(0, server.stop())  # the client's Proc stays last: it counts


# -- the client --------------------------------------------------------------------------------


def _post(url: str, body: bytes, content_type: str = "application/json",
          timeout: float = 60.0, header_length: Optional[int] = None) -> Answer:
    """POST `body`; (HTTP status, text), status 0 when nothing answered. header_length: the
    JSON header's length of a body in Triton's binary-data extension."""
    headers = {"Content-Type": content_type}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except OSError as exc:
        return 0, f"no answer: {exc}"


def _tensor_body(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32",
                                   "data": [float(v) for v in x.ravel()]}]}).encode()


def _image_request(url: str, files: Sequence[bytes]) -> Answer:
    """One grefel_image request holding `files`, in Triton's binary-data extension (the JSON
    header names the input; the bytes follow, each prefixed by its 4-byte length)."""
    raw = b"".join(len(f).to_bytes(4, "little") + f for f in files)
    header = json.dumps({"inputs": [{"name": "image", "shape": [len(files), 1],
                                     "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": n, "parameters": {"binary_data": False}}
                                     for n in ("probs", "label", "face")]}).encode()
    return _post(url, header + raw, "application/octet-stream", header_length=len(header))


def _at_once(calls: Sequence[Callable[[], Answer]]) -> List[Answer]:
    """Every call from its own thread, started together (the dynamic batcher joins them)."""
    answers: List[Answer] = [(0, "not run")] * len(calls)
    gate = threading.Barrier(len(calls))

    def go(i: int) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            gate.wait(timeout=30)
        answers[i] = calls[i]()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return answers


def _client_proc(labels: Sequence[str], answers: Sequence[Answer], seconds: float,
                 refusal: bool = False) -> Proc:
    """The client's synthetic Proc: one JSON line per answer; with `refusal` (a case of one
    invalid request) exit 1 and one `Error:` line for a 4xx, as a CLI client would print."""
    lines = [json.dumps({"request": label, "status": status, "body": body[:2000]})
             for label, (status, body) in zip(labels, answers)]
    rc, err = 0, ""
    if refusal and answers and 400 <= answers[-1][0] < 500:
        rc, err = 1, f"Error: HTTP {answers[-1][0]}: {_message(answers[-1][1])}\n"
    return Proc(["http-client", *labels[:3]], rc, "\n".join(lines) + "\n", err, seconds)


def _message(body: str) -> str:
    try:
        return str(json.loads(body).get("error", body))
    except (ValueError, AttributeError):
        return body


def _answers(procs: List[Proc]) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in procs[-1].stdout.splitlines() if line.strip()]


# -- what a right answer is ---------------------------------------------------------------------


def _colour(i: int) -> np.ndarray:
    """Request i's image: a constant colour in [0, 1] (its channel means are exact)."""
    rgb = np.random.default_rng(1000 + i).random(3).astype(np.float32)
    return np.broadcast_to(rgb[None, :, None, None], (1, *INPUT_SHAPE)).astype(np.float32)


def _expected_probs(x: np.ndarray) -> np.ndarray:
    means = x.astype(np.float64).mean(axis=(2, 3))
    e = np.exp(means - means.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _outputs(body: str) -> Dict[str, List[Any]]:
    return {o["name"]: o["data"] for o in json.loads(body)["outputs"]}


def _wrong_valid(rec: Dict[str, Any], x: np.ndarray, alone: Optional[str] = None) -> str:
    """Why a valid request's answer is wrong ("" if right): 200, probs the closed form within
    1e-5 (ONNX Runtime's float32 means), the label its argmax, and bit-equal to `alone` (the
    same request sent alone)."""
    if rec["status"] != 200:
        return f"{rec['request']}: a valid request got HTTP {rec['status']}: {rec['body'][:200]}"
    out = _outputs(rec["body"])
    probs = np.asarray(out["probs"], dtype=np.float32).reshape(len(x), -1)
    want = _expected_probs(x)
    if np.abs(probs - want).max() > 1e-5:
        return f"{rec['request']}: probs {probs.tolist()} where {want.tolist()} is right"
    if out["label"] != [CLASSES[int(k)] for k in np.argmax(want, axis=1)]:
        return f"{rec['request']}: label {out['label']}"
    if alone is not None and _outputs(alone) != out:
        return f"{rec['request']}: its answer differs from its answer alone (batch-mates count)"
    return ""


def _wrong_refusal(rec: Dict[str, Any], words: Sequence[str]) -> str:
    """Why an invalid request's answer is wrong: a 4xx, one line naming the problem."""
    msg = _message(rec["body"])
    if not 400 <= rec["status"] < 500:
        return f"{rec['request']}: HTTP {rec['status']} ({msg[:200]}), expected a 4xx"
    if "\n" in msg.strip() or "Traceback" in msg:
        return f"{rec['request']}: an error of {len(msg.splitlines())} lines: {msg[:200]}"
    missing = [w for w in words if w.lower() not in msg.lower()]
    return f"{rec['request']}: the error {msg!r} does not name {missing}" if missing else ""


def _server_problem(procs: List[Proc]) -> str:
    """The server's Proc: it got ready and stopped cleanly on SIGTERM."""
    server = procs[0]
    if "serving " not in server.output:
        return f"the server never got ready: {server.output.strip()[-300:]}"
    if server.returncode != 0:
        return f"the server exited {server.returncode} on SIGTERM: {server.output[-300:]}"
    return ""


# -- the cases ----------------------------------------------------------------------------------


def _mixed_case(name: str, n_valid: int, invalid: Dict[str, np.ndarray],
                words: Dict[str, Sequence[str]], model: Path) -> Case:
    """n_valid valid requests and the `invalid` ones at once (a 20 ms batching window), after
    each valid request alone: every valid answer right and bit-equal to its answer alone,
    every invalid one a 4xx naming its problem."""
    def run(work: Path) -> List[Proc]:
        procs: List[Proc] = []
        with _serving(work, model, procs, ("--queue-delay-us", "20000")) as server:
            if server is None:
                return procs
            t = time.perf_counter()
            xs = [_colour(i) for i in range(n_valid)]
            alone = [_post(server.url(), _tensor_body(x)) for x in xs]
            labels = [f"valid {i}" for i in range(n_valid)] + list(invalid)
            calls = [lambda x=x: _post(server.url(), _tensor_body(x)) for x in xs]
            calls += [lambda x=x: _post(server.url(), _tensor_body(x)) for x in invalid.values()]
            answers = _at_once(calls)
            procs.append(_client_proc(labels + [f"alone {i}" for i in range(n_valid)],
                                      answers + alone, time.perf_counter() - t))
        return procs

    def check(procs: List[Proc], work: Path) -> str:
        problem = _server_problem(procs)
        if problem or len(procs) < 2:
            return problem or "no client answers"
        recs = _answers(procs)
        together, alone = recs[: n_valid + len(invalid)], recs[n_valid + len(invalid):]
        lost = [r for r in together[:n_valid] if r["status"] != 200]
        if lost:
            return (f"lost: {len(lost)} of {n_valid} valid requests failed beside invalid "
                    f"ones: HTTP {lost[0]['status']}: {lost[0]['body'][:200]}")
        for i, rec in enumerate(together[:n_valid]):
            why = (_wrong_valid(alone[i], _colour(i))
                   or _wrong_valid(rec, _colour(i), alone[i]["body"]))
            if why:
                return why
        for rec in together[n_valid:]:
            why = _wrong_refusal(rec, words[rec["request"]])
            if why:
                return why
        return ""

    return Case(name, SIDE, ITEM, "ok", run, check)


def _refusal_case(name: str, send: Callable[[Server], Answer], words: Sequence[str],
                  model: Path) -> Case:
    """One invalid request alone: a 4xx naming its problem (the client's `Error:` line), and
    the server answers a valid request right afterwards."""
    def run(work: Path) -> List[Proc]:
        procs: List[Proc] = []
        with _serving(work, model, procs) as server:
            if server is None:
                return procs
            t = time.perf_counter()
            bad = send(server)
            after = _post(server.url(), _tensor_body(_colour(0)))
            procs.append(_client_proc(["valid after", "invalid"], [after, bad],
                                      time.perf_counter() - t, refusal=True))
        return procs

    def check(procs: List[Proc], work: Path) -> str:
        problem = _server_problem(procs)
        if problem or len(procs) < 2:
            return problem or "no client answers"
        after, bad = _answers(procs)
        return _wrong_refusal(bad, words) or _wrong_valid(after, _colour(0))

    return Case(name, SIDE, ITEM, "error", run, check)


def _hangup(server: Server, body_part: bytes, declared: int) -> None:
    """A client that sends part of a request (`declared` bytes announced) and hangs up."""
    with socket.create_connection(("127.0.0.1", server.http), timeout=10) as s:
        s.sendall(b"POST /v2/models/grefel/infer HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\n"
                  + f"Content-Length: {declared}\r\n\r\n".encode() + body_part)


def _hangup_case(model: Path) -> Case:
    """Clients that hang up mid-body, and one that hangs up before reading its answer, among
    valid requests: the valid ones are answered right, the server lives on."""
    def run(work: Path) -> List[Proc]:
        procs: List[Proc] = []
        with _serving(work, model, procs) as server:
            if server is None:
                return procs
            t = time.perf_counter()
            body = _tensor_body(_colour(1))
            _hangup(server, body[:1000], len(body))  # mid-body
            _hangup(server, body, len(body))  # whole request, answer never read
            _hangup(server, b"", 10 * 2**20)  # headers only
            calls = [lambda i=i: _post(server.url(), _tensor_body(_colour(i))) for i in range(8)]
            answers = _at_once(calls)
            procs.append(_client_proc([f"valid {i}" for i in range(8)], answers,
                                      time.perf_counter() - t))
        return procs

    def check(procs: List[Proc], work: Path) -> str:
        problem = _server_problem(procs)
        if problem or len(procs) < 2:
            return problem or "no client answers"
        for i, rec in enumerate(_answers(procs)):
            why = _wrong_valid(rec, _colour(i))
            if why:
                return why
        return ""

    return Case("serve: clients hang up mid-request, then 8 valid at once", SIDE, ITEM, "ok",
                run, check)


# Malformed bodies: tritonserver's own HTTP front end answers them before any model sees them;
# it answers a body it cannot parse with 500 and one JSON line (its parser's message), which
# grefel cannot change (docs/reliability/serve.md). What must hold: one line, no traceback, the
# server answers the next valid request.
MALFORMED: Dict[str, Tuple[bytes, str]] = {
    "not JSON": (b"this is not JSON", "application/json"),
    "empty body": (b"", "application/json"),
    "text/plain content type": (b"hello", "text/plain"),
    "JSON without inputs": (b'{"outputs": []}', "application/json"),
    "inputs not a list": (b'{"inputs": 5}', "application/json"),
    "data shorter than shape": (json.dumps({"inputs": [{"name": "images",
                                                         "shape": [1, *INPUT_SHAPE],
                                                         "datatype": "FP32", "data": [0.5]}]}
                                           ).encode(), "application/json"),
    "huge body (80 MiB of junk)": (b"[" + b"0," * (40 * 2**20) + b"0]", "application/json"),
}


def _malformed_case(model: Path) -> Case:
    def run(work: Path) -> List[Proc]:
        procs: List[Proc] = []
        with _serving(work, model, procs) as server:
            if server is None:
                return procs
            t = time.perf_counter()
            answers = [_post(server.url(), body, ct) for body, ct in MALFORMED.values()]
            answers.append(_post(server.url(), _tensor_body(_colour(0))))
            procs.append(_client_proc([*MALFORMED, "valid after"], answers,
                                      time.perf_counter() - t))
        return procs

    def check(procs: List[Proc], work: Path) -> str:
        problem = _server_problem(procs)
        if problem or len(procs) < 2:
            return problem or "no client answers"
        *bad, after = _answers(procs)
        for rec in bad:
            msg = _message(rec["body"])
            if rec["status"] < 400 or not msg.strip():
                return f"{rec['request']}: HTTP {rec['status']} {msg[:200]!r}, expected an error"
            if "\n" in msg.strip():
                return f"{rec['request']}: an error of {len(msg.splitlines())} lines"
        return _wrong_valid(after, _colour(0))

    return Case("serve: malformed bodies (not JSON, empty, text/plain, short, 80 MiB)", SIDE,
                ITEM, "ok", run, check)


def _png(rgb: Tuple[int, int, int], size: Tuple[int, int] = (40, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, "PNG")
    return buf.getvalue()


def _image_case(model: Path) -> Case:
    """grefel_image (--aligned: the whole image is the face): 6 valid PNGs and 4 bad files
    (not an image, empty, a truncated PNG, a bomb-sized header) sent at once: the valid ones
    right (a red image is "red"), the bad ones a 4xx naming their problem."""
    from tools.fault_corpus import bomb_png

    colours = [(200, 10, 10), (10, 200, 10), (10, 10, 200), (220, 30, 30), (30, 220, 30),
               (128, 128, 128)]
    good = {f"png {c}": _png(c) for c in colours}
    whole = _png((200, 10, 10))
    bad = {"not an image": (b"plain text", ["not a decodable image"]),
           "empty": (b"", ["empty"]),
           "truncated PNG": (whole[: len(whole) // 2], ["item 0"]),
           "bomb header": (bomb_png(), ["pixels"])}

    def run(work: Path) -> List[Proc]:
        procs: List[Proc] = []
        with _serving(work, model, procs, ("--aligned", "--queue-delay-us", "20000")) as server:
            if server is None:
                return procs
            t = time.perf_counter()
            url = server.url("grefel_image")
            files = list(good.values()) + [b for b, _ in bad.values()]
            answers = _at_once([lambda f=f: _image_request(url, [f]) for f in files])
            procs.append(_client_proc([*good, *bad], answers, time.perf_counter() - t))
        return procs

    def check(procs: List[Proc], work: Path) -> str:
        problem = _server_problem(procs)
        if problem or len(procs) < 2:
            return problem or "no client answers"
        recs = _answers(procs)
        for rec, rgb in zip(recs, colours):
            if rec["status"] != 200:
                return f"lost: {rec['request']}: a valid image got HTTP {rec['status']}: " \
                       f"{rec['body'][:200]}"
            out = _outputs(rec["body"])
            want = _expected_probs(np.asarray(rgb, np.float64)[None, :, None, None] / 255.0)
            if np.abs(np.asarray(out["probs"]) - want.ravel()).max() > 1e-5:
                return f"{rec['request']}: probs {out['probs']} where {want.tolist()} is right"
        for rec in recs[len(colours):]:
            why = _wrong_refusal(rec, bad[rec["request"]][1])
            if why:
                return why
        return ""

    return Case("serve: grefel_image, 6 valid images and 4 bad files at once", SIDE, ITEM,
                "ok", run, check)


def _port_taken_case(model: Path) -> Case:
    """The issue's example: the HTTP port already taken gave a traceback, then the error after
    71 s. One line naming the port and the option, within seconds, before any model loads."""
    def run(work: Path) -> List[Proc]:
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen(1)
            port = holder.getsockname()[1]
            grpc, metrics = _free_ports(2)
            return [grefel("serve", "-w", model, "--http-port", port, "--grpc-port", grpc,
                           "--metrics-port", metrics, "--out", work / "run", timeout=120)]

    def check(procs: List[Proc], work: Path) -> str:
        line = (procs[-1].error_lines() or [""])[0]
        if "--http-port" not in line or "in use" not in line:
            return f"the error does not name the taken port's option: {line!r}"
        return "" if procs[-1].seconds < 30 else f"the error came after {procs[-1].seconds:.0f} s"

    return Case("serve: HTTP port already taken", SIDE, ITEM, "error", run, check)


def _grpc_port_taken_case(model: Path) -> Case:
    def run(work: Path) -> List[Proc]:
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen(1)
            http, metrics = _free_ports(2)
            return [grefel("serve", "-w", model, "--http-port", http, "--grpc-port",
                           holder.getsockname()[1], "--metrics-port", metrics, "--out",
                           work / "run", timeout=120)]

    return Case("serve: gRPC port already taken", SIDE, ITEM, "error", run,
                lambda procs, work: "" if "--grpc-port" in procs[-1].output
                else "the error does not name --grpc-port")


def _same_port_case(model: Path) -> Case:
    def run(work: Path) -> List[Proc]:
        (port,) = _free_ports(1)
        return [grefel("serve", "-w", model, "--http-port", port, "--metrics-port", port,
                       "--out", work / "run", timeout=120)]

    return Case("serve: --metrics-port equal to --http-port", SIDE, ITEM, "error", run,
                lambda procs, work: "" if "--metrics-port" in procs[-1].output
                else "the error does not name --metrics-port")


def cases(scratch: Path) -> List[Case]:
    from tools.fault_corpus import mini_onnx

    scratch.mkdir(parents=True, exist_ok=True)
    model = mini_onnx(scratch / "mini.onnx")
    over = _colour(900) * 255.0  # uint8 scale: the out-of-range request
    nan = _colour(901).copy()
    nan[0, 1, 5, 5] = np.nan
    inf = _colour(902).copy()
    inf[0, 2, 0, 0] = np.inf
    negative = _colour(903) - 0.5
    out = [_port_taken_case(model), _grpc_port_taken_case(model), _same_port_case(model)]
    try:  # the serve extra (PyTriton): without it grefel serve refuses at start (tested)
        import pytriton.triton  # noqa: F401
    except ImportError:
        return out
    out += [
        _mixed_case("serve: 40 valid requests and 1 out of range at once (the issue's)", 40,
                    {"uint8 scale": over}, {"uint8 scale": ["images", "[0, 1]"]}, model),
        _malformed_case(model),
        _image_case(model),
    ]
    # each a server start of its own (~7 s): the campaign runs them, CI the three above
    out += [replace(case, ci=False) for case in (
        _mixed_case("serve: 12 valid, NaN, inf and negative requests at once", 12,
                    {"NaN": nan, "inf": inf, "negative": negative},
                    {"NaN": ["NaN"], "inf": ["inf"], "negative": ["[0, 1]"]}, model),
        _refusal_case("serve: one request out of range (uint8 scale)",
                      lambda s: _post(s.url(), _tensor_body(over)), ["images", "[0, 1]"], model),
        _refusal_case("serve: wrong shape (3 x 64 x 64)",
                      lambda s: _post(s.url(), _tensor_body(np.zeros((1, 3, 64, 64),
                                                                     np.float32))),
                      ["shape"], model),
        _refusal_case("serve: undecodable image bytes",
                      lambda s: _image_request(s.url("grefel_image"), [b"GIF89a junk"]),
                      ["not a decodable image"], model),
        _hangup_case(model),
    )]
    return out
