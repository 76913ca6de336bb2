"""ONNX Runtime backend: an `.onnx` file, on the CUDA provider when ONNX Runtime has it.

Class names come from the model's metadata (`grefel.class_names`, written by `grefel export`),
else from a grefel sidecar `NAME.json` beside it (`grefel.contract.sidecar_classes`: an engine
or checkpoint sidecar, format checked), else generic names with a warning. A fixed-batch graph
(`grefel export --static`) takes any number of images: they run in chunks of its batch, the last
chunk zero-padded (a sample's outputs never depend on the others), as the TensorRT backend does.

With ONNX Runtime >= 1.21 the weights are memory-mapped out of the file instead of copied onto
the heap (`grefel.runtime.ort_mapped`: the paper preset's peak RSS ~500 -> ~340 MiB, outputs
bit-equal), out of a private copy that nothing can truncate while the command runs; older
versions, or a file the skeleton cannot be made for, load the file as before.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np

from grefel import contract
from grefel._lazy import require
from grefel.runtime.base import Backend, BackendError, Outputs, check_outputs, generic_classes
from grefel.runtime.ort_mapped import mapped_model, private_copy

__all__ = ["MAPPED_SINCE", "OrtBackend"]

# The session option naming the external-data folder of a model given as bytes (onnxruntime
# PR #23557, release 1.21): older versions would look for the weights in the working directory.
MAPPED_SINCE = (1, 21)
FOLDER_OPTION = "session.model_external_initializers_file_folder_path"

log = logging.getLogger(__name__)


class OrtBackend(Backend):
    """An ONNX model in ONNX Runtime.

    Args:
        path: the .onnx file (input `images`, outputs probs / primary / confidence).
        device: "cpu", "cuda" or None for CUDA when the CUDA provider is installed.
        threads: intra-op threads (None: ONNX Runtime's default, all cores).
        low_memory: graph optimisations up to ORT_ENABLE_EXTENDED instead of ORT_ENABLE_ALL:
            no layout transformation to the blocked NCHWc convolution kernels and their
            re-laid copy of the convolution weights (`grefel predict --batch 1` on the paper
            preset: peak RSS 345 -> 296 MiB with the weights mapped; outputs equal to 3e-7,
            CPU convolutions 2-3x slower).
    """

    name = "onnx"

    def __init__(
        self,
        path: Path,
        device: Optional[str] = None,
        threads: Optional[int] = None,
        low_memory: bool = False,
    ) -> None:
        super().__init__(path)
        self._want_device = device
        self._threads = threads
        self.low_memory = low_memory
        self._session: Any = None

    def _providers(self, ort: Any) -> Tuple[str, ...]:
        available = ort.get_available_providers()
        want_cuda = self._want_device in (None, "cuda")
        if want_cuda and "CUDAExecutionProvider" in available:
            self.device = "cuda"
            return ("CUDAExecutionProvider", "CPUExecutionProvider")
        if self._want_device == "cuda":
            raise BackendError(
                f"{self.path}: ONNX Runtime has no CUDA provider here ({available}); "
                "install onnxruntime-gpu or use --device cpu"
            )
        self.device = "cpu"
        return ("CPUExecutionProvider",)

    def _session_options(self, ort: Any) -> Any:
        opts = ort.SessionOptions()
        level = "ORT_ENABLE_EXTENDED" if self.low_memory else "ORT_ENABLE_ALL"
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        if self._threads:
            opts.intra_op_num_threads = self._threads
        opts.log_severity_level = 3
        return opts

    def _open(self) -> None:
        ort = require("onnxruntime")
        if not Path(self.path).is_file():
            raise BackendError(f"{self.path}: no such ONNX file")
        providers = list(self._providers(ort))
        self.mapped_bytes = 0  # weights ONNX Runtime maps out of the file (0: copied)
        self._session = None
        if _version(ort) >= MAPPED_SINCE:
            self._open_mapped(ort, providers)
        if self._session is None:
            try:
                self._session = ort.InferenceSession(
                    str(self.path), self._session_options(ort), providers=providers
                )
            except Exception as exc:  # onnxruntime raises its own exception types for bad files
                raise BackendError(f"{self.path}: not a loadable ONNX model ({exc})") from None
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise BackendError(f"{self.path}: expected one input, got {len(inputs)}")
        self._input = inputs[0].name
        shape = list(inputs[0].shape or [])
        if len(shape) != 4 or [d if isinstance(d, int) else None for d in shape[1:]] != list(
            contract.INPUT_SHAPE
        ):
            want = ", ".join(map(str, contract.INPUT_SHAPE))
            raise BackendError(f"{self.path}: not a grefel model: its input {self._input!r} is "
                               f"{tuple(shape)}, grefel feeds (N, {want}) RGB in [0, 1]")
        batch_dim = inputs[0].shape[0] if inputs[0].shape else None
        self.fixed_batch: Optional[int] = batch_dim if isinstance(batch_dim, int) else None
        self._outputs = [o.name for o in self._session.get_outputs()]
        try:
            check_outputs(dict.fromkeys(self._outputs))
        except BackendError as exc:
            raise BackendError(f"{self.path}: not a grefel model: {exc}") from None
        self.classes = self._read_classes()

    def _open_mapped(self, ort: Any, providers: list) -> None:
        """The session with its weights mapped out of a private copy of the file (never the file
        itself: a `cp` over it while the command runs would kill it with SIGBUS,
        grefel.runtime.ort_mapped); no session when the skeleton cannot be made or is refused."""
        try:
            with private_copy(Path(self.path)) as copy:
                mapped = mapped_model(copy)
                if mapped is None:
                    return
                opts = self._session_options(ort)
                opts.add_session_config_entry(FOLDER_OPTION, str(copy.parent))
                self._session = ort.InferenceSession(mapped[0], opts, providers=providers)
                self.mapped_bytes = mapped[1]
        except OSError as exc:  # no room for the copy: the file is loaded onto the heap
            log.debug("%s: no private copy (%s); loading the file", self.path, exc)
        except Exception as exc:  # noqa: BLE001 - the file itself is loaded next
            log.debug("%s: mapped load refused (%s); loading the file", self.path, exc)

    def _read_classes(self) -> Tuple[str, ...]:
        """Class names as given (checked by `Backend.__enter__` against the output width)."""
        width = self._session.get_outputs()[self._outputs.index("probs")].shape[-1]
        self.output_width = width if isinstance(width, int) and width > 0 else None
        meta = self._session.get_modelmeta().custom_metadata_map
        if "grefel.class_names" in meta:
            try:
                return json.loads(meta["grefel.class_names"])
            except ValueError as exc:
                raise BackendError(f"{self.path}: its grefel.class_names metadata is not JSON "
                                   f"({exc}); re-export the model with `grefel export`") from None
        try:
            classes = contract.sidecar_classes(Path(self.path).with_suffix(".json"))
        except contract.SidecarError as exc:
            raise BackendError(str(exc)) from None
        if classes:
            return classes
        if self.output_width is None:
            raise BackendError(f"{self.path}: no class names in its metadata or a sidecar, and "
                               "its class dimension is symbolic; re-export it with `grefel "
                               "export`")
        log.warning("%s: no class names in metadata or sidecar; using class0..", self.path)
        return generic_classes(self.output_width)

    def _close(self) -> None:
        self._session = None

    def _infer(self, batch: np.ndarray) -> Outputs:
        if self.fixed_batch is None:
            return self._run(batch)
        step, parts = self.fixed_batch, []
        for i in range(0, len(batch), step):
            chunk = batch[i : i + step]
            if len(chunk) < step:
                pad = np.zeros((step - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            parts.append(self._run(chunk))
        n = len(batch)
        return {k: np.concatenate([p[k] for p in parts])[:n] for k in self._outputs}

    def _run(self, batch: np.ndarray) -> Outputs:
        try:
            values = self._session.run(self._outputs, {self._input: batch})
        except Exception as exc:  # onnxruntime's own exception types (shape, kernel errors)
            raise BackendError(f"{self.path}: ONNX Runtime failed on a batch of "
                               f"{len(batch)} ({str(exc).splitlines()[0][:200]})") from None
        return {n: np.asarray(v, dtype=np.float32) for n, v in zip(self._outputs, values)}


def _version(ort: Any) -> Tuple[int, ...]:
    """onnxruntime's (major, minor) version; (0,) when it cannot be read."""
    try:
        return tuple(int(part) for part in str(ort.__version__).split(".")[:2])
    except ValueError:
        return (0,)
