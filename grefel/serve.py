"""`grefel serve`: the model on NVIDIA Triton Inference Server, through PyTriton.

PyTriton (grefel's serve extra, docs/install.md) starts the real `tritonserver` binary that its
wheel bundles; each model below is a Triton Python-backend model whose `execute` is answered by a
callable in this process, on one of the runtime backends (`grefel.runtime.open_backend`: an
`.engine`, `.onnx` or `.safetensors`). Two models:

    grefel        images  float32 [N, 3, 112, 112], RGB in [0, 1] (grefel.contract's input)
    grefel_image  image   BYTES [N, 1], one encoded image file per sample (JPEG, PNG, ...):
                  decoded by grefel.contract.decode_image_bytes (EXIF, modes, the pixel limit),
                  then `grefel predict`'s path for a still image, grefel.pipeline.Pipeline with
                  the same options and defaults (`detector`, `det_size`, `min_face`, `align`,
                  `margin`, `aligned`): the faces are detected, the first (the detector's best:
                  BlazeFace's top score, Haar's largest) is aligned onto the 5-point template
                  when it has keypoints (else square-cropped), resized and classified by
                  `Pipeline.finish`. Each image on its own (no tracking, no smoothing across
                  requests): the answer is `grefel predict`'s first record for the same file
                  (one `grefel.pipeline.FaceResult`). `aligned` (`--aligned`): the images are
                  face crops, the whole image is classified.

Both answer, per sample: `probs` (C) = L_final (eq. 19), `primary` (C) = l (eq. 9),
`confidence` (1) = C_f (eq. 10), `label` (1, BYTES: the class of the largest prob) and `classes`
(C, BYTES: the class names in output order); `grefel_image` adds `face` (1, BOOL: a face was
found) and `box` (4, INT32: x1, y1, x2, y2 of the face's box in the decoded image). No face, no
expression: where `face` is false, nothing was classified and the record's nulls are written as
a tensor can hold them: `probs`, `primary` and `confidence` NaN, `label` empty, `box` 0, 0, 0, 0.

Triton's dynamic batcher joins the requests (up to `max_batch` samples, waiting at most
`queue_delay_us` for more); every sample's outputs are computed from its own input only.

Request isolation (`answer_each`): Triton itself rejects a request of the wrong shape, dtype or
input name. Every request of a batch is then checked on its own (values outside [0, 1], NaN/inf;
empty, undecodable or too large image bytes) before the valid ones are joined into one backend
call; an invalid request gets its own error (HTTP 400, gRPC INVALID_ARGUMENT, one line saying what
is wrong), its batch-mates their answers. Should the joined call still fail, each valid request is
run again on its own, so a request fails only for its own sake; an unexpected error is answered in
one line (HTTP 500) and logged with its traceback to `serve.log` beside tritonserver's log. The
PyTriton 0.7 proxy answers a batch as one (one exception fails every request, its message a
traceback), so the proxy file that PyTriton writes into the model repository is patched at start
(`patch_proxy`): a response carrying ERROR_KEY becomes that request's own Triton error, and any
other error message is cut to its last line.

Readiness: tritonserver loads both models before it opens its ports, so the first 200 of
`GET /v2/health/ready` (strict readiness: every model ready; the probe to use) means both models
answer. PyTriton's default start opens the ports with an empty repository, then loads the models
through the repository API: its ready came seconds before the models, and a request sent then got
"unknown model". Here PyTriton writes the models into a local repository before tritonserver starts
(`TritonLifecyclePolicy(local_model_store=True)`) and tritonserver loads them at startup
(`--load-model=*`, before its endpoints start). The in-process callables are connected by
PyTriton just after (`Model.setup`); a request that comes in between waits for them and is
answered, it is not refused.

SIGTERM or SIGINT: tritonserver stops taking requests, answers those in flight (waiting up to
`exit_timeout_s`), then the backends close.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from grefel import contract
from grefel._lazy import MissingDependency, require
from grefel.config import INFERENCE_THREADS, FaceAlignment
from grefel.errors import GrefelError, first_line
from grefel.fileio import display_path
from grefel.pipeline import FaceResult, Pipeline, face_pipeline
from grefel.ranges import Range, check_ranges, setting
from grefel.runtime import Backend, open_backend

__all__ = [
    "ERROR_KEY",
    "IMAGE_MODEL",
    "MODEL",
    "RequestError",
    "ServeError",
    "ServeOptions",
    "answer_each",
    "check_environment",
    "check_ports",
    "image_pipeline",
    "patch_proxy",
    "serve",
]

MODEL = "grefel"  # the tensor model
IMAGE_MODEL = "grefel_image"  # the encoded-bytes model
SERVE_HINT = "pip install '.[serve]' in a clone of grefel (docs/install.md)"

log = logging.getLogger(__name__)


class ServeError(GrefelError, RuntimeError):
    """An environment or option `grefel serve` cannot run with; the message says what to do."""


PORT = Range(kind=int, min=1, max=65535)  # a TCP port to listen on


class RequestError(GrefelError, ValueError):
    """One request is invalid (its values, its image bytes); the message says what is wrong and
    is the client's answer (HTTP 400), the request's batch-mates are answered."""


@dataclass(frozen=True)
class ServeOptions:
    """`grefel serve`'s settings (its options are generated from these fields); grefel_image
    finds and prepares faces by `face`, the FaceAlignment predict and training share."""

    max_batch: int = setting(8, min=1, help="Most samples per backend call (Triton "
                                            "max_batch_size).")
    queue_delay_us: int = setting(2000, min=0, help="Dynamic batching: longest wait for more "
                                                    "requests, microseconds.")
    instances: int = setting(1, min=1, help="Model instances (one backend each) per model.")
    host: str = setting("127.0.0.1", help="Bind address (0.0.0.0: every interface).")
    http_port: int = setting(8000, like=PORT, help="HTTP port.")
    grpc_port: int = setting(8001, like=PORT, help="gRPC port.")
    metrics_port: int = setting(8002, like=PORT, help="Prometheus metrics port.")
    # ONNX Runtime / PyTorch device (None: CUDA when present); the CLI's --device auto|cpu|cuda
    device: Optional[str] = setting(None, cli=False, help="ONNX Runtime / PyTorch device.")
    threads: Optional[int] = setting(None, like=INFERENCE_THREADS,
                                     help="CPU threads per backend and per face detector.")
    exit_timeout_s: int = setting(30, min=0, option="--exit-timeout",
                                  help="On SIGTERM, seconds to wait for in-flight requests.")
    face: FaceAlignment = setting(default_factory=FaceAlignment,
                                  help="How grefel_image finds and prepares faces.")
    aligned: bool = setting(
        False, help="grefel_image: the images are face crops: no face detection, the whole "
                    "image is classified (without it, an image without a face gets face false, "
                    "NaN probs and an empty label).")
    # tritonserver's log (None: on stdout, as `grefel serve -v`); the CLI's --out / -v
    log_file: Optional[Path] = setting(None, cli=False, help="tritonserver's log file.")

    def __post_init__(self) -> None:
        check_ranges(self)
        object.__setattr__(self, "face", FaceAlignment.coerce(self.face))


def image_pipeline(backend: Backend, opts: ServeOptions) -> Pipeline:
    """The Pipeline that prepares grefel_image's faces: the one `grefel predict` builds for
    still images with the same FaceAlignment (each image detected on its own, no tracks)."""
    return face_pipeline(backend, opts.face, video=False, aligned=opts.aligned,
                         threads=opts.threads)


def check_environment() -> Any:
    """The pytriton module, or ServeError with one line saying what to install.

    PyTriton 0.7's bundled Triton Python-backend stub reads tensors wrongly under numpy 2 (the
    wheel requires numpy<2), so numpy 2 is refused here rather than served wrongly.
    """
    major = int(np.__version__.split(".")[0])
    if major >= 2:
        raise ServeError(
            f"grefel serve needs numpy<2 (numpy {np.__version__} is installed; PyTriton 0.7's "
            f"Triton Python-backend stub misreads tensors under numpy 2): {SERVE_HINT} in a "
            "fresh venv, or pip install 'numpy<2'"
        )
    try:
        return require("pytriton.triton")
    except MissingDependency as exc:
        raise ServeError(f"grefel serve needs PyTriton ({exc.__cause__}): {SERVE_HINT}") from None


def _libpython_first() -> Optional[str]:
    """Put the running interpreter's own libpython first on LD_LIBRARY_PATH (inherited by
    tritonserver and its Python-backend stubs), returning its folder.

    The bundled stub links `libpython3.X.so.1.0` and runs this interpreter's standard library;
    the dynamic linker would otherwise pick the system's libpython (e.g. Debian's 3.11.2 under
    a pyenv 3.11.7), whose C modules do not match that library (seen here: the stub dies with
    "'_thread.RLock' object has no attribute '_recursion_count'" while loading the model).
    """
    import os
    import sysconfig

    libdir, name = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not libdir or not name or not (Path(libdir) / str(name)).is_file():
        return None  # a static interpreter: the stub uses the system's libpython
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if current.split(":")[0] != libdir:
        os.environ["LD_LIBRARY_PATH"] = libdir + (":" + current if current else "")
    return str(libdir)


def _check_range(images: np.ndarray) -> None:
    """RequestError unless `images` are finite and in grefel's input range."""
    lo, hi = contract.INPUT_RANGE
    if not np.isfinite(images).all():
        raise RequestError(f"`{contract.INPUT_NAME}` contains NaN or inf; grefel takes RGB in "
                           f"[{lo:g}, {hi:g}] (uint8 / 255)")
    if images.size and (float(images.min()) < lo or float(images.max()) > hi):
        raise RequestError(
            f"`{contract.INPUT_NAME}` values span [{float(images.min()):.4g}, "
            f"{float(images.max()):.4g}]; grefel takes RGB in [{lo:g}, {hi:g}] (uint8 / 255)"
        )


MAX_IMAGE_BYTES = 64 * 2**20  # one encoded image file of a grefel_image request
ERROR_KEY = "__grefel_error__"  # a response of [code, message]: that request's own error


def _error_response(code: str, message: str) -> Dict[str, np.ndarray]:
    """The response of a request answered with an error: the patched proxy (patch_proxy) turns
    it into a Triton error, `code` INVALID_ARG (HTTP 400) or INTERNAL (HTTP 500)."""
    return {ERROR_KEY: np.array([code.encode(), message.encode("utf-8", "replace")],
                                dtype=np.object_)}


def _internal_error(exc: BaseException, where: str) -> Dict[str, np.ndarray]:
    """An unexpected error of one request: logged with its traceback, answered in one line."""
    log.error("a request failed: %s", "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
    return _error_response("INTERNAL", f"internal error of grefel serve ({first_line(exc)}); "
                                       f"its traceback is in {where}")


def answer_each(requests: Sequence[Any], prepare: Callable[[Any], Any],
                run: Callable[[List[Any]], List[Dict[str, np.ndarray]]],
                log_where: str = "grefel serve's log") -> List[Dict[str, np.ndarray]]:
    """One answer per request of a batch, each depending on its own request only.

    `prepare(request)` checks one request and returns what `run` takes (RequestError: the
    request is invalid, answered with that message as HTTP 400); `run(prepared)` computes the
    valid ones in one call, one output dict each. If that call fails, each valid request is
    run again on its own, so a request fails only for its own sake (an unexpected error: one
    line, HTTP 500, its traceback logged). A PyTriton batch is answered as one, so nothing here
    may raise: one exception would fail every request of the batch.
    """
    answers: List[Optional[Dict[str, np.ndarray]]] = [None] * len(requests)
    valid: List[Tuple[int, Any]] = []
    for i, request in enumerate(requests):
        try:
            valid.append((i, prepare(request)))
        except RequestError as exc:
            answers[i] = _error_response("INVALID_ARG", str(exc))
        except Exception as exc:  # a bug or an environment fault: this request only
            answers[i] = _internal_error(exc, log_where)
    try:
        outputs = run([p for _, p in valid]) if valid else []
        if len(outputs) != len(valid):
            raise RuntimeError(f"{len(outputs)} answers to {len(valid)} requests")
    except Exception:  # the joined call failed: each request on its own
        outputs = []
        for _, prepared in valid:
            try:
                outputs.append(run([prepared])[0])
            except RequestError as exc:
                outputs.append(_error_response("INVALID_ARG", str(exc)))
            except Exception as exc:
                outputs.append(_internal_error(exc, log_where))
    for (i, _), out in zip(valid, outputs):
        answers[i] = out
    return [a if a is not None else _error_response("INTERNAL", "no answer") for a in answers]


def _label_arrays(probs: np.ndarray, classes: Sequence[str]) -> Dict[str, np.ndarray]:
    names = np.array([c.encode("utf-8") for c in classes], dtype=np.object_)
    top = np.argmax(probs, axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    return {
        "label": names[top].reshape(-1, 1),
        "classes": np.tile(names, (len(probs), 1)),
    }


class _Instance:
    """One model instance: its own opened backend (and, for grefel_image, its own Pipeline)."""

    def __init__(self, backend: Backend, pipeline: Optional[Pipeline] = None,
                 log_where: str = "grefel serve's log") -> None:
        self.backend, self.pipeline = backend, pipeline
        self.lock = threading.Lock()
        self.log_where = log_where  # where an unexpected error's traceback is (its answer says)

    def _outputs(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        with self.lock:
            out = self.backend.infer(batch)
        probs = out["probs"].astype(np.float32)
        return {
            "probs": probs,
            "primary": out["primary"].astype(np.float32),
            "confidence": out["confidence"].astype(np.float32).reshape(-1, 1),
            **_label_arrays(probs, self.backend.classes),
        }

    @staticmethod
    def _split(outputs: Dict[str, np.ndarray], sizes: List[int]) -> List[Dict[str, np.ndarray]]:
        parts, start = [], 0
        for n in sizes:
            parts.append({k: v[start : start + n] for k, v in outputs.items()})
            start += n
        return parts

    @staticmethod
    def _prepare_images(request: Any) -> np.ndarray:
        images = np.asarray(request[contract.INPUT_NAME], dtype=np.float32)
        _check_range(images)
        return images

    def _run_images(self, arrays: List[np.ndarray]) -> List[Dict[str, np.ndarray]]:
        return self._split(self._outputs(np.concatenate(arrays)), [len(a) for a in arrays])

    def infer_images(self, requests: List[Any]) -> List[Dict[str, np.ndarray]]:
        """Requests of `grefel` (each `images` [n, 3, 112, 112]) -> one output dict each (or
        that request's error: answer_each)."""
        return answer_each(requests, self._prepare_images, self._run_images, self.log_where)

    def _prepare_encoded(self, request: Any) -> List[Any]:
        """One grefel_image request -> its images' first faces, prepared (Pipeline.prepare:
        decode, detect, align or crop, resize); RequestError for bytes that are no image."""
        assert self.pipeline is not None, "a grefel_image instance has a pipeline"
        items = np.asarray(request["image"], dtype=np.object_).reshape(-1)
        decoded = []
        for j, item in enumerate(items):
            name = f"`image` item {j}"
            if not isinstance(item, (bytes, bytearray, np.bytes_)):
                raise RequestError(f"{name} is {type(item).__name__}, expected the bytes of an "
                                   "image file")
            if len(item) > MAX_IMAGE_BYTES:
                raise RequestError(f"{name}: {len(item) / 2**20:.1f} MiB; grefel serve takes "
                                   f"image files up to {MAX_IMAGE_BYTES // 2**20} MiB "
                                   "(downscale or recompress it)")
            try:
                decoded.append((name, contract.decode_image_bytes(bytes(item), name=name)))
            except contract.ImageError as exc:
                raise RequestError(str(exc)) from None
        return [self.pipeline.prepare(image, source=name, boxes=None, keypoints=None).first()
                for name, image in decoded]

    def _run_encoded(self, prepared: List[List[Any]]) -> List[Dict[str, np.ndarray]]:
        assert self.pipeline is not None, "a grefel_image instance has a pipeline"
        preps = [p for request in prepared for p in request]
        with self.lock:
            results = self.pipeline.finish(preps)
        answers = [faces[0] for faces in results]
        return self._split(_image_outputs(answers, self.backend.classes),
                           [len(request) for request in prepared])

    def infer_encoded(self, requests: List[Any]) -> List[Dict[str, np.ndarray]]:
        """Requests of `grefel_image` (each `image` [n, 1] BYTES) -> one output dict each (or
        that request's error: answer_each): each image's first face prepared on its own, the
        valid requests' faces classified in one Pipeline.finish, as `grefel predict` does."""
        return answer_each(requests, self._prepare_encoded, self._run_encoded, self.log_where)


def _image_outputs(results: Sequence[FaceResult], classes: Sequence[str]) -> Dict[str, np.ndarray]:
    """grefel_image's output tensors of one FaceResult per image: the record of
    `FaceResult.record` as tensors, its nulls (no face) as NaN, "" and a 0-size box."""
    n, c = len(results), len(classes)
    probs = np.full((n, c), np.nan, dtype=np.float32)
    primary, confidence = probs.copy(), np.full((n, 1), np.nan, dtype=np.float32)
    box = np.zeros((n, 4), dtype=np.int32)
    for i, r in enumerate(results):
        if r.probs is not None and r.primary is not None and r.confidence is not None:
            probs[i] = [r.probs[k] for k in classes]
            primary[i] = [r.primary[k] for k in classes]
            confidence[i, 0] = r.confidence
        if r.box is not None:
            box[i] = r.box
    names = np.array([k.encode("utf-8") for k in classes], dtype=np.object_)
    return {
        "probs": probs,
        "primary": primary,
        "confidence": confidence,
        "label": np.array([(r.label or "").encode("utf-8") for r in results],
                          dtype=np.object_).reshape(-1, 1),
        "classes": np.tile(names, (n, 1)),
        "face": np.array([r.face for r in results], dtype=np.bool_).reshape(-1, 1),
        "box": box,
    }


PORT_OPTIONS = (("http_port", "--http-port"), ("grpc_port", "--grpc-port"),
                ("metrics_port", "--metrics-port"))


def check_ports(opts: ServeOptions) -> None:
    """ServeError, naming the option, unless every port can be listened on at `opts.host`.

    Checked by binding each port for a moment, before any model is loaded: tritonserver finds
    a taken port only after its start, and PyTriton reported it with a traceback after a
    minute's wait. (A port taken between this check and tritonserver's start is still
    reported in one line, by serve.)
    """
    seen: Dict[int, str] = {}
    for field, option in PORT_OPTIONS:
        port = getattr(opts, field)
        if port in seen:
            raise ServeError(f"{option} {port}: the same port as {seen[port]}; give each of "
                             "--http-port, --grpc-port and --metrics-port its own")
        seen[port] = option
        try:
            infos = socket.getaddrinfo(opts.host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise ServeError(f"--host {opts.host}: not an address of this machine "
                             f"({exc.strerror}); 127.0.0.1 (this machine only) or 0.0.0.0 "
                             "(every interface)") from None
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            # as a server would (tritonserver too): a port in TIME_WAIT is free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ServeError(
                        f"{option} {port}: port {port} on {opts.host} is already in use (another "
                        f"grefel serve or server?); stop it or choose a free port, e.g. "
                        f"{option} {_free_port_hint(opts.host, port)}") from None
                if exc.errno == errno.EACCES:
                    raise ServeError(f"{option} {port}: not allowed to listen on port {port} "
                                     "(ports below 1024 need root); choose one above 1024"
                                     ) from None
                raise ServeError(f"--host {opts.host}: cannot listen on {opts.host}:{port} "
                                 f"({exc.strerror or exc}); 127.0.0.1 or 0.0.0.0") from None


def _free_port_hint(host: str, taken: int) -> int:
    """A port near `taken` that is free now (a suggestion only)."""
    for port in range(taken + 10, min(taken + 200, 65535), 10):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("" if ":" in host else host, port))
            except OSError:
                continue
            return port
    return taken + 10


# The proxy model that PyTriton 0.7 copies into the model repository (pytriton/proxy/model.py)
# answers every request of a batch with one error (a traceback) when any fails. These two
# changes of that copy give each request its own answer (answer_each) and cut any other error
# message to one line. Each `old` must be found once, or grefel serve refuses to start.
_PROXY_PATCHES = (
    (
        "def _wrap_response(response: Response, requested_outputs_names, model_outputs_dict):\n",
        "def _wrap_response(response: Response, requested_outputs_names, model_outputs_dict):\n"
        f"    if response.data is not None and {ERROR_KEY!r} in response.data:  # grefel serve\n"
        f"        code, message = (bytes(v).decode('utf-8', 'replace')\n"
        f"                         for v in response.data[{ERROR_KEY!r}].reshape(-1)[:2])\n"
        "        kind = getattr(pb_utils.TritonError, code, pb_utils.TritonError.INTERNAL)\n"
        "        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, kind))\n",
    ),
    (
        'raise pb_utils.TritonModelException(f"Model execute error: {msg}") from None',
        "raise pb_utils.TritonModelException(_grefel_one_line(msg)) from None",
    ),
)
_PROXY_ONE_LINE = '''

def _grefel_one_line(text):
    """grefel serve: an error message in one line, its traceback's last (the error itself)."""
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("Traceback", "At:", "File "))
             and not line.endswith("execute")]
    last = lines[-1] if lines else "unknown error"
    for prefix in ("c_python_backend_utils.TritonModelException: ", "TritonModelException: "):
        last = last[len(prefix):] if last.startswith(prefix) else last
    return "grefel serve failed to answer: " + last
'''


def patch_proxy(model_py: Path) -> None:
    """Apply _PROXY_PATCHES to one model's copy of PyTriton's proxy (`MODEL/1/model.py` in the
    model repository, written by `Triton.bind`); ServeError if this PyTriton's proxy differs."""
    text = model_py.read_text()
    for old, new in _PROXY_PATCHES:
        if text.count(old) != 1:
            raise ServeError(f"this PyTriton ({model_py}) is not the 0.7 that grefel serve knows: "
                             f"{SERVE_HINT}")
        text = text.replace(old, new)
    model_py.write_text(text + _PROXY_ONE_LINE)


def _tensors(pytriton_config: Any, num_classes: int, encoded: bool) -> Tuple[list, list]:
    Tensor = pytriton_config.Tensor
    inputs = (
        [Tensor(name="image", dtype=np.bytes_, shape=(1,))]
        if encoded
        else [Tensor(name=contract.INPUT_NAME, dtype=np.float32, shape=contract.INPUT_SHAPE)]
    )
    outputs = [
        Tensor(name="probs", dtype=np.float32, shape=(num_classes,)),
        Tensor(name="primary", dtype=np.float32, shape=(num_classes,)),
        Tensor(name="confidence", dtype=np.float32, shape=(1,)),
        Tensor(name="label", dtype=np.bytes_, shape=(1,)),
        Tensor(name="classes", dtype=np.bytes_, shape=(num_classes,)),
    ]
    if encoded:
        outputs += [
            Tensor(name="face", dtype=np.bool_, shape=(1,)),
            Tensor(name="box", dtype=np.int32, shape=(4,)),
        ]
    return inputs, outputs


def serve(
    weights: Path,
    opts: ServeOptions = ServeOptions(),
    on_ready: Callable[[str], None] = print,
    stop: Optional[threading.Event] = None,
) -> None:
    """Serve `weights` until SIGTERM / SIGINT (or `stop` is set); see the module docstring.
    `on_ready` gets one line saying where tritonserver's log is (`opts.log_file`, once the
    checks pass) and one when every model answers.

    Raises ServeError (environment, options) or BackendError (the model file) before serving.
    """
    check_ports(opts)  # before anything slow: a taken port is one line at once
    check_environment()
    from pytriton import model_config as pmc
    from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy
    from pytriton.utils.workspace import Workspace

    for name in ("pytriton", "tritonclient"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _libpython_first()
    stop = stop or threading.Event()
    backends: List[Backend] = []
    error_log = _error_log(opts.log_file)
    log_where = display_path(error_log.baseFilename) if error_log else "grefel serve's output"
    try:
        for _ in range(opts.instances * 2):  # one backend per instance of each model
            backends.append(
                open_backend(weights, device=opts.device, threads=opts.threads).__enter__()
            )
        classes = backends[0].classes
        tensor_instances = [_Instance(b, log_where=log_where) for b in backends[: opts.instances]]
        pipelines = [image_pipeline(b, opts) for b in backends[opts.instances :]]
        image_instances = [_Instance(b, p, log_where)
                           for b, p in zip(backends[opts.instances :], pipelines)]
        config = TritonConfig(
            http_address=opts.host,
            http_port=opts.http_port,
            grpc_address=opts.host,
            grpc_port=opts.grpc_port,
            metrics_port=opts.metrics_port,
            metrics_address=opts.host,
            exit_timeout_secs=opts.exit_timeout_s,
            allow_gpu_metrics=False,
            strict_readiness=True,  # /v2/health/ready: every model ready (Triton's default)
            log_file=opts.log_file,  # tritonserver's --log-file; None: its stdout
        )
        model_config = pmc.ModelConfig(
            max_batch_size=opts.max_batch,
            batcher=pmc.DynamicBatcher(max_queue_delay_microseconds=opts.queue_delay_us),
        )
        # The models go into a local repository that tritonserver loads before it listens, so
        # its first ready is honest (module docstring); PyTriton's default loads them after.
        workspace = Workspace()  # its model-store: the repository that tritonserver loads
        triton = Triton(config=config, workspace=workspace,
                        triton_lifecycle_policy=TritonLifecyclePolicy(
                            launch_triton_on_startup=True, local_model_store=True))
        for model, instances, encoded in (
            (MODEL, tensor_instances, False),
            (IMAGE_MODEL, image_instances, True),
        ):
            inputs, outputs = _tensors(pmc, len(classes), encoded)
            funcs = [i.infer_encoded if encoded else i.infer_images for i in instances]
            # not strict: an invalid request's answer is ERROR_KEY, not the model's outputs
            triton.bind(model_name=model, infer_func=funcs, inputs=inputs, outputs=outputs,
                        config=model_config, strict=False)
            patch_proxy(workspace.model_store_path / model / "1" / "model.py")
        if opts.log_file is not None:
            on_ready(f"tritonserver's log: {display_path(opts.log_file)} (-v: on stdout "
                     "instead)")
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM,
                                                                         signal.SIGINT)}
        try:
            try:
                triton.run()
            except Exception as exc:  # PyTriton's errors and TimeoutError: one line
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ServeError(
                    f"tritonserver did not start ({first}); are ports {opts.http_port}, "
                    f"{opts.grpc_port} and {opts.metrics_port} free on {opts.host}? "
                    "(--http-port / --grpc-port / --metrics-port)"
                ) from None
            on_ready(
                f"serving {weights} ({backends[0].describe()}, {len(classes)} classes) as "
                f"models {MODEL!r} and {IMAGE_MODEL!r}: HTTP {opts.host}:{opts.http_port}, "
                f"gRPC {opts.host}:{opts.grpc_port}, metrics "
                f"http://{opts.host}:{opts.metrics_port}/metrics; max batch {opts.max_batch}, "
                f"queue delay {opts.queue_delay_us} us, {opts.instances} instance(s); "
                f"{IMAGE_MODEL!r} faces: detector {pipelines[0].detector_name}"
            )
            while not stop.is_set() and triton.is_alive():
                stop.wait(0.5)
            if not stop.is_set():
                where = "above" if opts.log_file is None else f"in {opts.log_file}"
                raise ServeError(f"tritonserver exited on its own (see its log {where})")
        finally:
            triton.stop()  # tritonserver drains in-flight requests, then the proxies stop
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        for backend in backends:
            backend.close()
        if error_log is not None:
            log.removeHandler(error_log)
            error_log.close()


def _error_log(tritonserver_log: Optional[Path]) -> Optional[logging.FileHandler]:
    """`serve.log` beside tritonserver's log, where grefel serve writes the traceback of each
    unexpected error that it answered in one line (None with -v: on stderr, Python's default)."""
    if tritonserver_log is None:
        return None
    handler = logging.FileHandler(tritonserver_log.with_name("serve.log"), delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return handler
