"""The run folder of `grefel train`: its one owner, what `--resume` may change, and the
resumable state file.

    OUT/.lock          the owner: pid, host and start time of the `grefel train` that holds
                       the folder (an exclusive `flock` on this file, held for the run's
                       lifetime; the file is removed when the run ends)
    OUT/config.json    the configs the run trains with; `resumed` lists every --resume and the
                       options it changed
    OUT/last.state.pt  the resumable state (grefel.train.write_state), read back with
                       torch.load(weights_only=True)

One owner: a second `grefel train` into a folder whose lock is held stops with an error naming
the owner. The kernel drops an `flock` when its process dies, so the lock file of a killed run
(SIGKILL, a power cut) is stale by construction: the next run takes it over and says whose it
was. Where the file system has no `flock`, the recorded pid is checked instead (same host).

What `--resume` may change: `RESUME_MAY_CHANGE` (where the run executes and for how many
epochs); every other data, train or model setting fixes what the run means and a change is
refused with the list of differences. Options that `grefel train --resume` is not given keep the
run's values (grefel.train.configs_from_options).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from grefel.errors import GrefelError
from grefel.fileio import RUN_MARKER, claim_run_folder, pid_alive, run_owner

__all__ = [
    "LOCK_NAME",
    "RESUME_MAY_CHANGE",
    "RUN_FILES",
    "STATE_FORMAT",
    "RunLock",
    "TrainingError",
    "data_differences",
    "data_fingerprint",
    "flat_settings",
    "lock_run_folder",
    "read_run_config",
    "resume_differences",
]

STATE_FORMAT = "grefel-train-state/1"
LOCK_NAME = ".lock"
# What a run writes into its folder (grefel.train's docstring): no input may be one of them.
RUN_FILES = ("config.json", "metrics.csv", "metrics.json", "tensorboard", "last.safetensors",
             "last.json", "best.safetensors", "best.json", "warmup.json", "alignment.json",
             "init.json", "last.state.pt")

# The settings a --resume may change, with why that is safe. Everything else is refused.
RESUME_MAY_CHANGE: Dict[str, str] = {
    "train.epochs": "train on to more epochs (the LR decays per epoch, whatever the total)",
    "train.device": "the device it runs on (the same run; not bitwise the same numbers; CPU -> "
                    "CUDA turns --amp's mixed precision on, from a fresh loss scale)",
    "train.threads": "torch CPU threads",
    "data.workers": "DataLoader worker processes",
    "data.strict": "stop on an unreadable image instead of skipping it",
    "data.align_cache": "where the aligned face crops are cached (keyed by image and settings)",
}
# Not compared: the folder itself, and the flag that asks for the resume.
_NOT_COMPARED = ("train.out", "train.resume")
_PATHS = ("data.root", "train.pretrained_ir50", "train.pretrained_mobilefacenet")


class TrainingError(GrefelError, RuntimeError):
    """A run that cannot go on; the message says why and what was kept."""


# --- the owner -----------------------------------------------------------------------------------


@dataclass
class RunLock:
    """The held lock of a run folder; `release()` when the run ends."""

    path: Path
    fd: int
    previous: Optional[Dict[str, Any]] = None  # the stale owner it took over, if any
    created: Tuple[Path, ...] = ()  # the folders taking the lock created, deepest first
    marked: bool = False  # taking the lock wrote the folder's RUN_MARKER

    def release(self) -> None:
        """Remove the lock file, then the folders the lock created if they are still empty: a
        run that stopped before writing anything (a bad --data, --device) leaves no folder."""
        if self.fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):  # removed while held: a run waiting on
            os.unlink(self.path)  # this file then sees it is gone and retries (samestat)
        os.close(self.fd)
        self.fd = -1
        marker = self.path.parent / RUN_MARKER
        with contextlib.suppress(OSError):  # the mark of a run that wrote nothing goes too
            if self.marked and os.listdir(marker.parent) == [RUN_MARKER]:
                marker.unlink()
        for folder in self.created:
            try:
                folder.rmdir()  # only an empty folder goes; a run's files keep theirs
            except OSError:
                break


def _owner_text(owner: Optional[Dict[str, Any]]) -> str:
    if not owner:
        return "owner unknown: the lock file is empty"
    return (f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}")


def _read_owner(fd: int) -> Optional[Dict[str, Any]]:
    raw = os.pread(fd, 4096, 0)
    try:
        owner = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return owner if isinstance(owner, dict) else None


def _alive_here(owner: Optional[Dict[str, Any]]) -> bool:
    """Whether the owner is a live process of this host (for file systems without flock)."""
    if not owner or owner.get("host") != socket.gethostname():
        return bool(owner)  # another host's owner cannot be checked: assume it is alive
    try:
        return pid_alive(int(owner["pid"]))
    except (KeyError, TypeError, ValueError):  # an owner record without a pid: assume alive
        return True


def _flock(fd: int) -> bool:
    """Exclusive non-blocking flock: True if taken, False if another process holds it (an
    OSError ENOLCK / EOPNOTSUPP where the file system has no flock)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_run_folder(out: Path, attempts: int = 5) -> RunLock:
    """Take OUT/.lock for this process (creating OUT); TrainingError if another run holds it."""
    created = tuple(p for p in (out, *out.parents) if not p.exists())  # deepest first
    marked = not out.exists() or run_owner(out) is None  # this run writes the owner's mark
    claim_run_folder(out, "train")  # a run folder has one owner (grefel.fileio.RUN_MARKER)
    path = out / LOCK_NAME
    for _ in range(attempts):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            taken = _flock(fd)
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            taken = not _alive_here(_read_owner(fd))  # no flock here: trust the recorded pid
        if not taken:
            owner = _read_owner(fd)
            os.close(fd)
            raise TrainingError(
                f"{out} is in use by another grefel train ({_owner_text(owner)}; lock file "
                f"{path}); wait for it to end or choose another --out")
        try:  # the owner may have ended and removed the file between our open and flock
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is None or not os.path.samestat(os.fstat(fd), current):
            os.close(fd)
            continue
        previous = _read_owner(fd)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": "grefel train",
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                      timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        return RunLock(path, fd, previous, created, marked)
    raise TrainingError(f"{path}: could not take the run folder's lock ({attempts} attempts; "
                        "other runs keep starting and ending in it)")


# --- what a resume may change ---------------------------------------------------------------------


def read_run_config(out: Path) -> Dict[str, Any]:
    """OUT/config.json of an earlier run; TrainingError naming the file if it cannot be read."""
    path = out / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise TrainingError(f"--resume: {path} does not exist; nothing to resume") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainingError(f"--resume: {path} cannot be read ({exc})") from None
    if not isinstance(config, dict) or not all(
            isinstance(config.get(k), dict) for k in ("model", "data", "train")):
        raise TrainingError(f"--resume: {path} is not a grefel run config (model, data, train)")
    return config


def _same(key: str, before: Any, now: Any) -> bool:
    if key in _PATHS and before and now:
        return os.path.realpath(str(before)) == os.path.realpath(str(now))
    return before == now


def resume_differences(
    saved: Dict[str, Any], now: Dict[str, Any]
) -> Tuple[List[str], Dict[str, List[Any]]]:
    """Compare the run's config.json with the configs of a --resume.

    Returns (refused, allowed): refused lines "KEY: run VALUE, now VALUE" for every setting
    that fixes what the run means, and {KEY: [before, now]} for the RESUME_MAY_CHANGE ones.
    """
    now = json.loads(json.dumps(now))  # tuples as lists, like the saved file
    refused: List[str] = []
    allowed: Dict[str, List[Any]] = {}
    for scope in ("model", "data", "train"):
        before, after = flat_settings(saved.get(scope, {})), flat_settings(now.get(scope, {}))
        for name in sorted(set(before) | set(after)):
            key = f"{scope}.{name}"
            b, a = before.get(name), after.get(name)
            if key in _NOT_COMPARED or _same(key, b, a):
                continue
            if key in RESUME_MAY_CHANGE:
                allowed[key] = [b, a]
            else:
                refused.append(f"{key}: run {b!r}, now {a!r}")
    if saved.get("world_size", 1) != now.get("world_size", 1):
        refused.append(f"world_size (processes): run {saved.get('world_size', 1)}, now "
                       f"{now.get('world_size', 1)}")
    return refused, allowed


def flat_settings(config: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """A config dict with its nested settings (`data.face`) as dotted keys (`face.min_face`),
    so a difference names the one setting that changed."""
    out: Dict[str, Any] = {}
    for name, value in config.items():
        if isinstance(value, dict):
            out.update(flat_settings(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def resume_help() -> str:
    """The --resume rule in one sentence, from RESUME_MAY_CHANGE (for --help and errors)."""
    names = ", ".join(k.split(".", 1)[1] for k in RESUME_MAY_CHANGE)
    return (f"Continue the run in --out. Options not given keep the run's values; only {names} "
            "may change, any other change is refused.")


# --- the data a run started on -------------------------------------------------------------------

FINGERPRINT_COVERS = ("the class list; per split the image count, the count per class and a "
                      "SHA-256 over every sample's path (relative to the data folder), label, "
                      "group and file size (not the image bytes)")


def data_fingerprint(root: Any, classes: Sequence[str],
                     splits: Dict[str, Sequence[Any]]) -> Dict[str, Any]:
    """What `--resume` checks the data against (`FINGERPRINT_COVERS`), kept in config.json.

    Regenerating a dataset in place (another `grefel data synth`, a relabelled CSV, images added
    or removed) leaves the path that config.json compares the same; this catches it. Image bytes
    are not hashed (reading every image would cost about an epoch): an image replaced by another
    of the same size under the same name is not seen. Row order is not part of it (the same
    samples listed in another order are the same data).
    """
    fingerprint: Dict[str, Any] = {"covers": FINGERPRINT_COVERS, "classes": list(classes),
                                   "splits": {}}
    for split, samples in splits.items():
        per_class = [0] * len(classes)
        lines = []
        for s in samples:
            per_class[s.label] += 1
            try:
                size = os.stat(s.path).st_size
            except OSError:  # an image stored in a table row (FILE.csv#ROW)
                size = -1
            rel = os.path.relpath(s.path, root) if os.path.isabs(s.path) else s.path
            lines.append(f"{rel}\0{s.label}\0{s.group}\0{size}\n")
        digest = hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()
        fingerprint["splits"][split] = {"images": len(samples), "per_class": per_class,
                                        "sha256": digest}
    return fingerprint


def data_differences(before: Dict[str, Any], now: Dict[str, Any]) -> List[str]:
    """What changed between two `data_fingerprint`s, in words ([] when nothing did)."""
    if before.get("classes") != now.get("classes"):
        return [f"classes {before.get('classes')} -> {now.get('classes')}"]
    names = now.get("classes") or []
    changes = []
    old_splits, new_splits = before.get("splits", {}), now.get("splits", {})
    for split in sorted(set(old_splits) | set(new_splits)):
        b, a = old_splits.get(split), new_splits.get(split)
        if b is None or a is None:
            changes.append(f"split {split!r} {'added' if b is None else 'gone'}")
        elif b.get("sha256") == a.get("sha256"):
            continue
        elif b.get("images") != a.get("images"):
            changes.append(f"split {split!r}: {b.get('images')} -> {a.get('images')} images")
        elif b.get("per_class") != a.get("per_class"):
            moved = [f"{name} {x} -> {y}" for name, x, y in
                     zip(names, b.get("per_class", []), a.get("per_class", [])) if x != y]
            changes.append(f"split {split!r}: images per class {', '.join(moved)}")
        else:
            changes.append(f"split {split!r}: the same {a.get('images')} images per class, but "
                           "other paths, labels, groups or file sizes")
    return changes


# --- the resumable state file ---------------------------------------------------------------------


def write_state(run: Any, rngs: List[Dict[str, Any]]) -> None:
    """OUT/last.state.pt of a `grefel.train.Run`, atomically: model, optimizer, scheduler, AMP
    scaler, epoch, sampler, every rank's RNG states, best metric and the metric history."""
    import io

    import torch

    from grefel.fileio import atomic_write_bytes
    from grefel.finite import require_finite

    model = {k: v.detach().cpu() for k, v in run.raw.state_dict().items()}
    optimizer = run.optimizer.state_dict()
    # the check of every model writer (NonFiniteError): a state that would resume into NaN is
    # never written over the last good one
    require_finite({"model": model, "optimizer": optimizer["state"]},
                   f"{run.out / 'last.state.pt'}: the training state",
                   "not written (nothing non-finite is saved)")
    state = {
        "format": STATE_FORMAT,
        "epoch": run.epoch,
        "model": model,
        "optimizer": optimizer,
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "sampler": getattr(run.sampler, "state_dict", lambda: {"epoch": run.epoch})(),
        "rng": rngs,
        "best": dict(run.best),
        "history": list(run.history),
        "world_size": run.world,
        "warmed_up": run.warmed_up,
    }
    buffer = io.BytesIO()  # in memory first: a full disk is an OSError naming the file, not
    torch.save(state, buffer)  # torch's "unexpected pos" RuntimeError
    atomic_write_bytes(run.out / "last.state.pt", buffer.getvalue())


def load_state(run: Any) -> None:
    """Restore a `grefel.train.Run` from OUT/last.state.pt (everything `write_state` wrote).

    The file is read with torch.load(weights_only=True): plain tensors and types only, so a
    pickle that would run code is refused, never executed.
    """
    import torch

    from grefel.checkpoint import misfit
    from grefel.train_utils import set_rng_state

    path = run.out / "last.state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated, foreign or malicious file: say which and why
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(f"{path}: cannot read the training state ({first})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingError(f"{path}: not a grefel training state ({STATE_FORMAT})")
    problems = misfit(run.raw.state_dict(), state.get("model") or {})
    if problems:
        raise TrainingError(f"{path}: the saved model does not fit this config ({problems})")
    from grefel.finite import require_finite

    # the same check as the writer's: a state with NaN/inf would only train on in NaN
    optimizer = state.get("optimizer")
    require_finite({"model": state["model"], "optimizer": optimizer.get("state", {})
                    if isinstance(optimizer, dict) else {}},
                   str(path), "a broken training state that cannot be resumed; start a new run "
                   "(with a lower --lr) in another --out", error=TrainingError)
    try:
        run.raw.load_state_dict(state["model"], strict=True)
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] or not run.scaler.is_enabled():
            run.scaler.load_state_dict(state["scaler"])
        # else: a run without AMP (CPU) resumed on CUDA with AMP: a fresh loss scale, as any
        # AMP run starts with (config.json's `resumed` records amp)
        if hasattr(run.sampler, "load_state_dict"):
            run.sampler.load_state_dict(state["sampler"])
        rngs = state["rng"]
        set_rng_state(rngs[run.rank] if len(rngs) == run.world else rngs[0])
        run.epoch, run.best, run.history = int(state["epoch"]), state["best"], state["history"]
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise TrainingError(f"{path}: an incomplete or damaged training state "
                            f"({type(exc).__name__}: {exc})") from None
    run.warmed_up = bool(state.get("warmed_up", False))
