"""Load third-party PyTorch checkpoints without executing anything pickled in them.

A pickle is a program: every global it names is imported and called while it loads, which is
how a checkpoint can run code. grefel never lets that happen (docs/weights.md):

1. `torch.load(path, map_location="cpu", weights_only=True)`: PyTorch's own restricted
   unpickler. Plain state dicts (face.evoLVe IR-50, POSTER V2 `ir50.pth`, MobileFaceNet) load here.
2. Files that name other globals (POSTER V2's full checkpoints pickle `__main__.RecorderMeter`
   objects holding numpy arrays and scalars): where the installed torch has
   `torch.serialization.safe_globals` and `get_unsafe_globals_in_checkpoint` (2.5 and later),
   the globals the file names are listed statically and each is allow-listed as an inert
   stand-in (`Inert`, registered under the name the file uses), and the file is read again by
   torch's own weights-only unpickler. No real class or function of those names is ever looked
   up; building a stand-in only records its arguments and state.
3. Everything torch's unpickler cannot read that way goes through `Unpickler` (below): torch
   older than 2.5 (the supported floor, pyproject `torch>=2.1`, has neither API), legacy
   (non-zip) `torch.save` files and raw pickles (`get_unsafe_globals_in_checkpoint` reads zip
   archives only), files naming a module that torch blocks outright (`os`, `posix`, `nt`,
   `sys`: torch refuses the whole file, we keep the call as inert data), and pickles that add
   items to a stand-in (torch only fills real dicts and lists). Its `find_class` returns a real
   object for a short allow-list only (the tensor rebuild functions, `torch.Size`,
   `OrderedDict`, torch dtypes; storage classes are resolved by `torch.load` itself before our
   `find_class` is asked). Every other global becomes the same inert placeholder class
   (`Inert`): calling it, building it or setting its state only records the arguments. So a
   `__reduce__` that names `os.system` or any function yields a placeholder holding the
   arguments, and the function is never looked up, let alone called. A raw pickle's tensor
   storages (pickled as `torch.storage._load_from_bytes(bytes)`, which would call an
   unrestricted `torch.load`) are rebuilt by `_load_storage_bytes`, which recurses into this
   same safe path.

TorchScript archives are refused: `torch.load` would hand them to `torch.jit.load`.

This module is itself the `pickle_module` handed to `torch.load` (it has `Unpickler` and `load`).
"""

from __future__ import annotations

import io
import pickle
import sys
import threading
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, Type, Union

import torch

from grefel.errors import GrefelError

__all__ = ["Inert", "SafeLoadResult", "Unpickler", "UnsafeFileError", "load", "safe_load"]

PathLike = Union[str, Path]


class UnsafeFileError(GrefelError, ValueError):
    """A file that cannot be read safely (TorchScript, corrupt, not a pickle)."""


class Inert:
    """Placeholder for a pickled global that is not on the allow-list; it never runs anything.

    `_pickled_as` names what the file asked for (e.g. "__main__.RecorderMeter"). Constructor
    arguments, `__setstate__` state and container items are kept only as data.
    """

    _pickled_as = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:
        obj = object.__new__(cls)
        obj.__dict__.update(_args=args, _kwargs=kwargs, _state=None, _items=[])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls cls(*args)
        """Nothing to do: `__new__` already recorded the arguments."""

    def __setstate__(self, state: Any) -> None:  # BUILD
        self.__dict__["_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEM(S) on a dict subclass
        self.__dict__["_items"].append((key, value))

    def append(self, value: Any) -> None:  # APPEND(S) on a list subclass
        self.__dict__["_items"].append(value)

    def extend(self, values: Any) -> None:
        self.__dict__["_items"].extend(values)

    def __repr__(self) -> str:
        return f"<inert placeholder for {self._pickled_as}>"


class SafeLoadResult(NamedTuple):
    """What `safe_load` read, how, and which globals it replaced by placeholders."""

    obj: Any
    # "torch.load(weights_only=True)" | "restricted torch.load(weights_only=True) with inert
    # stand-ins" | "restricted torch.load" | "restricted pickle"
    method: str
    placeholders: Tuple[str, ...]  # sorted names of the globals that became `Inert`


_TLS = threading.local()  # placeholders seen by the current `safe_load` call


def _placeholder(module: str, name: str) -> Type[Inert]:
    """An `Inert` subclass standing for `module.name` (created fresh; no import happens)."""
    full = f"{module}.{name}"
    seen = getattr(_TLS, "seen", None)
    if seen is not None:
        seen.add(full)
    return type(str(name), (Inert,), {"_pickled_as": full, "__module__": "grefel.unpickle"})


def _load_storage_bytes(data: bytes) -> Any:
    """Stand-in for `torch.storage._load_from_bytes`: the nested torch.save, loaded safely."""
    if not isinstance(data, (bytes, bytearray)):
        return _placeholder("torch.storage", "_load_from_bytes")(data)
    return _load_bytes(bytes(data))


def _allowed() -> Dict[str, Callable[..., Any]]:
    """The only globals a restricted load resolves to real objects (all rebuild plain data)."""
    return {
        "collections.OrderedDict": OrderedDict,
        "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
        "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
        "torch.Size": torch.Size,
        "torch.storage._load_from_bytes": _load_storage_bytes,
    }


class Unpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose `find_class` never imports: allow-list or `Inert` placeholder."""

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        allowed = _allowed()
        if full in allowed:
            return allowed[full]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)  # e.g. torch.float32: a constant, not a callable
        return _placeholder(module, name)


def load(file: Any, **kwargs: Any) -> Any:
    """`pickle.load` with `Unpickler` (torch.load reads legacy-format headers through this)."""
    return Unpickler(file, **kwargs).load()


def _this_module() -> Any:
    return sys.modules[__name__]


def _restricted_torch_load(f: Any) -> Any:
    return torch.load(f, map_location="cpu", pickle_module=_this_module(), weights_only=False)


def _load_bytes(data: bytes) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return _restricted_torch_load(io.BytesIO(data))


# Modules whose globals torch's weights-only unpickler refuses even when allow-listed.
_TORCH_BLOCKED = ("sys", "os", "posix", "nt")


def _torch_with_stand_ins(path: Path) -> Optional[Any]:
    """Step 2: torch's weights-only load with every unsafe global allow-listed as an `Inert`
    stand-in; None where this torch or this file cannot be read that way (then step 3)."""
    ser = torch.serialization
    if not (hasattr(ser, "safe_globals") and hasattr(ser, "get_unsafe_globals_in_checkpoint")):
        return None  # torch < 2.5
    try:
        names = sorted(ser.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # not a zip torch.save archive (legacy format, raw pickle, corrupt)
        return None
    if any(n.split(".")[0] in _TORCH_BLOCKED for n in names):
        return None
    stand_ins = [(_placeholder(*n.rsplit(".", 1)), n) for n in names if "." in n]
    try:
        with ser.safe_globals(stand_ins), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # e.g. SETITEMS on a stand-in, a global pushed dynamically
        _TLS.seen = set()
        return None


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in archive.namelist())


def _restricted(path: Path) -> Tuple[Any, str]:
    """Step 2/3: restricted torch.load, or for a non-torch pickle the raw restricted pickle."""
    try:
        return _restricted_torch_load(str(path)), "restricted torch.load"
    except RuntimeError as exc:
        if "magic number" not in str(exc) or zipfile.is_zipfile(path):
            raise
    with open(path, "rb") as f:
        return Unpickler(f, encoding="utf-8").load(), "restricted pickle"


def safe_load(path: PathLike) -> SafeLoadResult:
    """Read a checkpoint to CPU without executing any code pickled in it.

    Raises:
        UnsafeFileError: TorchScript archive, or a file neither loader can read (message names
            the file and both errors).
    """
    path = Path(path)
    if _is_torchscript(path):
        raise UnsafeFileError(
            f"{path}: a TorchScript archive (torch.jit.save), not a checkpoint of weights; "
            "loading it would run its code"
        )
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4" notes on raw pickles
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        return SafeLoadResult(obj, "torch.load(weights_only=True)", ())
    except Exception as first:  # weights-only refusal, or a raw pickle / legacy oddity
        first_error = f"{type(first).__name__}: {str(first).split('. ')[0]}"
    _TLS.seen = set()
    try:
        obj = _torch_with_stand_ins(path)
        if obj is not None:
            return SafeLoadResult(obj, "restricted torch.load(weights_only=True) with inert "
                                  "stand-ins", tuple(sorted(_TLS.seen)))
        obj, method = _restricted(path)
        return SafeLoadResult(obj, method, tuple(sorted(_TLS.seen)))
    except Exception as exc:
        raise UnsafeFileError(
            f"{path}: cannot read as a PyTorch checkpoint (weights-only load: {first_error}; "
            f"restricted load: {type(exc).__name__}: {exc})"
        ) from None
    finally:
        _TLS.seen = None

