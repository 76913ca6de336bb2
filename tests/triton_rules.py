"""A checker of a Triton model repository that follows the server's own rules, as Triton's core
(triton-inference-server/core, read at commit 73aad7c) applies them when it starts with
`--model-repository DIR` (and, by default, `--exit-on-error`: one model that fails to load
stops the server):

- every entry of DIR that is a directory is a model named by it, hidden ones included
  (filesystem/implementations/local.h, LocalFileSystem::GetDirectorySubdirs: readdir minus "."
  and "..", then IsDirectory, which follows symbolic links); files in DIR are ignored;
- the model's config.pbtxt is a ModelConfig in protobuf text format (ReadTextProto; here
  parsed with the ModelConfig message tritonclient ships, which rejects unknown fields), and
  its name must equal the folder's ("unexpected directory name ... directory name must equal
  model name", model_repository_manager.cc). Triton can auto-complete a missing config from the
  model file; a grefel repository always has one, and a folder without one is reported;
- version folders are the model folder's subdirectories whose name converts with std::stoll,
  without leading zeros, other than warmup / initial_state / configs; others are ignored
  (model_lifecycle.cc, VersionsToLoad); the version policy picks among them (default: the
  latest one), and none available fails the load ("no version is available");
- each version to load holds the platform's default model file (constants.h:
  model.plan for tensorrt_plan, model.onnx for onnxruntime_onnx) or default_model_filename;
- an output's label_filename must be a file in the model folder (model.cc, AddLabels).

`problems(DIR)` lists what would fail, one line each; an empty list means Triton would load
every model of DIR as far as the files can tell (not whether a plan deserializes).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional

DEFAULT_FILES = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx"}
SKIP_DIRS = ("warmup", "initial_state", "configs")  # kWarmupDataFolder, ... (constants.h)
_STOLL = re.compile(r"\s*[+-]?\d+")


def _version(name: str) -> Optional[int]:
    """std::stoll's reading of a version folder's name (a numeric prefix), None where Triton
    ignores the folder (no number, or a leading zero)."""
    if name in SKIP_DIRS or (len(name) > 1 and name[0] == "0"):
        return None
    match = _STOLL.match(name)
    return int(match.group()) if match else None


def model_problems(folder: Path) -> List[str]:
    """What keeps Triton from loading the model folder `folder`."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    name = folder.name
    config_path = folder / "config.pbtxt"
    if not config_path.is_file():
        return [f"{name}: no config.pbtxt (Triton takes every folder of the repository for a "
                "model)"]
    try:
        cfg = text_format.Parse(config_path.read_text(encoding="utf-8"),
                                model_config_pb2.ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        return [f"{name}: config.pbtxt does not parse ({exc})"]
    problems = []
    if cfg.name and cfg.name != name:
        problems.append(f"{name}: config name {cfg.name!r}: the directory name must equal the "
                        "model name")
    filename = cfg.default_model_filename or DEFAULT_FILES.get(cfg.platform)
    if filename is None:
        problems.append(f"{name}: platform {cfg.platform!r} / backend {cfg.backend!r} is not "
                        "one this checker knows")
    versions = sorted({v for d in folder.iterdir() if d.is_dir()
                       for v in [_version(d.name)] if v is not None}, reverse=True)
    policy = cfg.version_policy
    if policy.HasField("all"):
        chosen = versions
    elif policy.HasField("specific"):
        chosen = [v for v in policy.specific.versions if v in versions]
    else:
        chosen = versions[: policy.latest.num_versions or 1]
    if not chosen:
        problems.append(f"{name}: no version is available (no numeric version folder)")
    for v in chosen:
        folders = [d for d in folder.iterdir() if d.is_dir() and _version(d.name) == v]
        if filename and not any((d / filename).is_file() and (d / filename).stat().st_size
                                for d in folders):
            problems.append(f"{name}: version {v} has no {filename}")
    for out in cfg.output:
        if out.label_filename and not (folder / out.label_filename).is_file():
            problems.append(f"{name}: output {out.name}: no label file {out.label_filename}")
    return problems


def problems(repo: Path) -> List[str]:
    """Every problem of every model of the repository `repo` (empty: it loads)."""
    found: List[str] = []
    for entry in sorted(Path(repo).iterdir()):
        if entry.is_dir():  # hidden folders too: Triton skips none
            found += model_problems(entry)
    return found
