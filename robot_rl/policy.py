"""The deployable policy: the actor's weights and everything needed to act with them, apart from the learner.

A policy folder holds two files::

    policy.safetensors   the actor's tensors (encoder + head), by their `state_dict` names
    policy.json          {"format": "robot_rl.policy", "format_version": 1, "actor": "TanhGaussianActor",
                          "spec": PolicySpec, "safetensors_sha256": ..., "info": {...}, "versions": {...}}

The robot side (`robot_rl.deploy`, `ros_nodes`) loads this and nothing else: critics, targets, temperatures and
optimisers stay in the learner's checkpoint (`robot_rl.checkpoints`). So that it stays loadable without the
training code, this module imports only torch, numpy, safetensors, the standard library and `robot_rl.networks`.

Weights are never unpickled (DESIGN.md, Learning): safetensors holds raw tensors and a JSON header, and the file's
sha256 recorded in the JSON is checked before the file is parsed, so a file that was swapped, truncated or
tampered with is refused before any of its bytes are interpreted.

The folder-writing and checked-reading helpers here are shared with `robot_rl.checkpoints`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from numpy.typing import NDArray
from torch import Tensor

from robot_rl.networks import ConvConfig, TanhGaussianActor

if TYPE_CHECKING:
    from robot_rl.algos.ensemble import EnsembleActor

POLICY_FORMAT = "robot_rl.policy"
"""The marker in policy.json that says the folder is one of ours."""
POLICY_FORMAT_VERSION = 1
"""Raised whenever the layout of the files changes; a loader refuses versions it does not know."""
POLICY_WEIGHTS = "policy.safetensors"
POLICY_JSON = "policy.json"
ACTOR_CLASS = "TanhGaussianActor"
ENSEMBLE_ACTOR_CLASS = "EnsembleActor"
"""The actor of a policy with `PolicySpec.members` > 1 (fine-tuned ensembles): acts with the moment-matched Gaussian."""
PREPROCESSING = "uint8 HWC / 255 -> float CHW"
"""The image transform the actor was trained behind (`robot_rl.algos.batch`); the only one this code implements."""


class CheckpointError(ValueError):
    """A policy or learner checkpoint that must not be loaded; the message names the file and the problem."""


class ObservationError(ValueError):
    """An observation the policy must not act on: a missing key, a wrong shape or dtype, or NaN/inf values."""


# -- the spec ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicySpec:
    """What the policy observes and commands, and how to rebuild its actor; written as JSON next to the weights.

    Observation keys are those the env returns: "image" (uint8 HWC) when `image_shape` is set, "state" (float32,
    `state_names`) and, when `use_privileged`, "privileged" (float32, `privileged_names`) appended to the state.
    """

    image_shape: tuple[int, int, int] | None
    """(H, W, C) of the "image" observation; None for a policy without images."""
    state_names: tuple[str, ...]
    """Components of the "state" observation, in order."""
    use_privileged: bool
    """The "privileged" observation is appended to the state (low-dimensional experiments; never on a robot)."""
    privileged_names: tuple[str, ...]
    """Components of the "privileged" observation; empty unless `use_privileged`."""
    action_names: tuple[str, ...]
    """Components of the action, in order (the robot side maps them by name)."""
    action_scales: tuple[float, ...]
    """Physical size of an action component of 1.0, per component (see `action_units`)."""
    action_units: tuple[str, ...]
    """Unit of each scaled component, e.g. "m/step"."""
    control_period_s: float | None
    """Seconds between actions in the data the policy learned from; None if unknown."""
    hidden: tuple[int, ...]
    """Hidden layer sizes of the actor's head."""
    conv: ConvConfig
    """The actor's image encoder (unused without images)."""
    state_dim: int
    """Input size of the state vector: len(state_names) + len(privileged_names)."""
    action_dim: int
    """Output size: len(action_names)."""
    preprocessing: str = PREPROCESSING
    """How images are turned into the actor's input."""
    members: int = 1
    """Actors in the policy: 1, or N for an ensemble (`EnsembleActor`) that acts with its members' moment-matched
    Gaussian (a pessimistic Q-ensemble's policy after fine-tuning)."""
    binary_actions: tuple[str, ...] = ()
    """Action components the robot treats as a two-way switch with a dead band (the gripper: closes at >= 0.5, opens
    at <= -0.5, keeps its state between). The data command them at +-1; a Gaussian fitted to such a two-valued
    command can put its mean in the dead band, where the gripper keeps its state, the observation stays the same and
    so does the action, for the rest of the episode. Deterministic actions command these components at +-1 by the
    sign of the mean: the more probable of the two commands. Empty (COG): the tanh of the mean everywhere."""

    def __post_init__(self) -> None:
        problems = []
        if self.members < 1:
            problems.append(f"members must be >= 1, got {self.members}")
        if self.image_shape is not None and (len(self.image_shape) != 3 or min(self.image_shape) < 1):
            problems.append(f"image_shape must be (H, W, C) with positive sizes, got {self.image_shape}")
        if self.use_privileged != bool(self.privileged_names):
            problems.append("use_privileged must be set exactly when privileged_names are given")
        if self.state_dim != len(self.state_names) + len(self.privileged_names):
            problems.append(
                f"state_dim {self.state_dim} != {len(self.state_names)} state names + "
                f"{len(self.privileged_names)} privileged names"
            )
        if not len(self.action_names) == len(self.action_scales) == len(self.action_units) == self.action_dim:
            problems.append(
                f"action_dim {self.action_dim} needs as many action names ({len(self.action_names)}), "
                f"scales ({len(self.action_scales)}) and units ({len(self.action_units)})"
            )
        unknown = [name for name in self.binary_actions if name not in self.action_names]
        if unknown or len(set(self.binary_actions)) != len(self.binary_actions):
            problems.append(
                f"binary_actions must be distinct action names {self.action_names}, got {self.binary_actions}"
            )
        if self.image_shape is None and self.state_dim == 0:
            problems.append("a policy needs an image or a state to observe")
        if self.preprocessing != PREPROCESSING:
            problems.append(
                f"preprocessing {self.preprocessing!r} is not the one this code implements ({PREPROCESSING!r})"
            )
        if problems:
            raise ValueError("invalid PolicySpec: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "spec") -> PolicySpec:
        """Parse and check a spec read from JSON; anything missing, unknown or mistyped is a `CheckpointError`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        conv_fields = {f.name for f in dataclasses.fields(ConvConfig)}
        # Policies written before ensembles existed have no "members" (a single actor), those written before
        # binary actions no "binary_actions" (none).
        optional = {"members", "binary_actions"}
        _check_keys(data, fields - (optional - data.keys()) if isinstance(data, dict) else fields, source)
        _check_keys(data["conv"], conv_fields, f"{source}: conv")
        try:
            conv = data["conv"]
            return cls(
                image_shape=None if data["image_shape"] is None else _tuple(data["image_shape"], int, 3),
                state_names=_tuple(data["state_names"], str),
                use_privileged=_typed(data["use_privileged"], bool),
                privileged_names=_tuple(data["privileged_names"], str),
                action_names=_tuple(data["action_names"], str),
                action_scales=_tuple(data["action_scales"], float),
                action_units=_tuple(data["action_units"], str),
                control_period_s=None if data["control_period_s"] is None else _typed(data["control_period_s"], float),
                hidden=_tuple(data["hidden"], int),
                conv=ConvConfig(
                    channels=_tuple(conv["channels"], int),
                    kernel=_typed(conv["kernel"], int),
                    pool=_tuple(conv["pool"], bool),
                    strided=_typed(conv["strided"], bool),
                ),
                state_dim=_typed(data["state_dim"], int),
                action_dim=_typed(data["action_dim"], int),
                preprocessing=_typed(data["preprocessing"], str),
                members=_typed(data.get("members", 1), int),
                binary_actions=_tuple(data.get("binary_actions", []), str),
            )
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: {e}") from e

    @property
    def actor_class(self) -> str:
        return ACTOR_CLASS if self.members == 1 else ENSEMBLE_ACTOR_CLASS

    def build_actor(self) -> TanhGaussianActor | EnsembleActor:
        """A freshly initialised actor of this spec's architecture (its weights are then loaded)."""
        if self.members > 1:
            # Imported here: a single-actor policy needs nothing beyond robot_rl.networks (ros_nodes loads only
            # this module); the ensemble actor is torch and networks code too, with no training code behind it.
            from robot_rl.algos.ensemble import EnsembleActor

            return EnsembleActor(
                self.members, self.image_shape, self.state_dim, self.action_dim, self.hidden, self.conv
            )
        return TanhGaussianActor(self.image_shape, self.state_dim, self.action_dim, self.hidden, self.conv)


def _check_keys(data: Any, expected: set[str], source: str) -> None:
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(data).__name__}")
    missing, unknown = sorted(expected - data.keys()), sorted(data.keys() - expected)
    problems = ([f"missing keys {missing}"] if missing else []) + ([f"unknown keys {unknown}"] if unknown else [])
    if problems:
        raise CheckpointError(f"{source}: {', '.join(problems)}")


def _typed(value: Any, kind: type) -> Any:
    """`value` if it is a `kind` (an int where a float is expected is accepted; a bool is never an int)."""
    if isinstance(value, bool) and kind is not bool:
        raise TypeError(f"expected {kind.__name__}, got {value!r}")
    if kind is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, kind):
        raise TypeError(f"expected {kind.__name__}, got {value!r}")
    return value


def _tuple(value: Any, kind: type, length: int | None = None) -> Any:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise TypeError(f"expected a list{'' if length is None else f' of {length}'} of {kind.__name__}, got {value!r}")
    return tuple(_typed(v, kind) for v in value)


# -- files: atomic folders, checked JSON and tensors (shared with robot_rl.checkpoints) ----------------------------
def partial_folder(folder: Path) -> Path:
    """Where a new version of `folder` is built before it is renamed into place."""
    return folder.parent / f".{folder.name}.partial"


def previous_folder(folder: Path) -> Path:
    """Where the old version of `folder` waits while the new one is renamed into place (deleted right after)."""
    return folder.parent / f".{folder.name}.previous"


def _fsync_dir(path: Path) -> None:
    if os.name == "posix":  # a directory's entries are made durable through its own descriptor (POSIX only)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_folder_atomically(folder: Path, files: Mapping[str, bytes]) -> Path:
    """Write `files` (name -> content) into `folder` so that a crash at any point leaves a complete folder.

    The new folder is built as a hidden sibling, every file fsynced, then renamed into place: a fresh folder
    appears whole or not at all. An existing folder is first renamed aside (to `previous_folder`), so that a crash
    between the two renames leaves the old version complete there; it is deleted once the new one is in place.
    Other plain files already in the folder are carried over (hard-linked, or copied) so that a learner checkpoint
    and a policy can share a folder; a folder holding subfolders is refused rather than replaced, since it is not
    a checkpoint folder (for example a whole run folder passed by mistake). One writer per folder at a time.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial, previous = partial_folder(folder), previous_folder(folder)
    if folder.exists():
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: exists and is not a folder")
        subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if subfolders:
            raise CheckpointError(
                f"{folder}: holds subfolders {subfolders}; checkpoints are written to a folder of their own"
            )
    if partial.exists():  # left by a save that crashed before its rename; never a complete checkpoint
        shutil.rmtree(partial)
    partial.mkdir()
    for name, data in files.items():
        with open(partial / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    if folder.exists():
        for other in folder.iterdir():
            if other.name not in files:
                try:
                    os.link(other, partial / other.name)
                except OSError:
                    shutil.copy2(other, partial / other.name)
    _fsync_dir(partial)
    if folder.exists():
        if previous.exists():  # a complete older version whose deletion was interrupted
            shutil.rmtree(previous)
        os.replace(folder, previous)
    os.replace(partial, folder)
    _fsync_dir(folder.parent)
    if previous.exists():
        shutil.rmtree(previous)
    return folder


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_checked_json(folder: Path, name: str, fmt: str, version: int) -> dict[str, Any]:
    """`folder/name` as a dict, refused unless its format marker is `fmt` and its format version `version`."""
    path = Path(folder) / name
    if not path.is_file():
        hint = ""
        if not Path(folder).exists() and previous_folder(Path(folder)).is_dir():
            hint = (
                f"; a save into it was interrupted and the previous version is complete in "
                f"{previous_folder(Path(folder))}: rename that back to {Path(folder).name}"
            )
        raise CheckpointError(f"{path}: no such file{hint}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a JSON file ({e})") from e
    if not isinstance(data, dict) or "format" not in data:
        raise CheckpointError(f"{path}: not a robot_rl checkpoint (no format marker; expected {fmt!r})")
    if data["format"] != fmt:
        raise CheckpointError(f"{path}: format {data['format']!r} is not {fmt!r}")
    if data.get("format_version") != version:
        raise CheckpointError(
            f"{path}: format_version {data.get('format_version')!r} is not one this code reads ({version})"
        )
    if not isinstance(data.get("safetensors_sha256"), str):
        raise CheckpointError(f"{path}: no safetensors_sha256")
    return data


def read_checked_tensors(path: Path, sha256: str) -> dict[str, Tensor]:
    """The tensors of the safetensors file `path` (on the CPU), refused unless its bytes hash to `sha256`.

    The hash is checked before parsing, and parsing is safetensors' (a JSON header and raw buffers): no pickle,
    so no code in the file can run."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from e
    actual = sha256_of(data)
    if actual != sha256:
        raise CheckpointError(
            f"{path}: sha256 {actual} does not match the {sha256} recorded in its JSON; the file was tampered "
            "with, truncated or replaced after it was saved"
        )
    try:
        return safetensors.torch.load(data)
    except (safetensors.SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from e


def check_tensors(
    source: str, tensors: Mapping[str, Tensor], expected: Mapping[str, Tensor], require_finite: bool = True
) -> None:
    """Refuse missing, unexpected, mis-shaped and mistyped tensors, naming `source` and the first few; with
    `require_finite`, also NaN or inf values (a policy from a diverged run must never reach the robot)."""
    missing, unexpected = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
    problems = [f"missing tensors {missing[:5]}"] if missing else []
    problems += [f"unexpected tensors {unexpected[:5]}"] if unexpected else []
    if problems:
        raise CheckpointError(f"{source}: {', '.join(problems)}")
    wrong = [
        f"{name} {tuple(tensors[name].shape)} {tensors[name].dtype} (expected {tuple(t.shape)} {t.dtype})"
        for name, t in expected.items()
        if tensors[name].shape != t.shape or tensors[name].dtype != t.dtype
    ]
    if wrong:
        raise CheckpointError(f"{source}: mis-shaped tensors: {', '.join(wrong[:5])}")
    not_finite = [n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if require_finite and not_finite:
        raise CheckpointError(f"{source}: non-finite values (NaN or inf) in {not_finite[:5]}; the run diverged")


def tensors_for_saving(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous CPU copies (safetensors stores plain row-major buffers; conv weights are channels-last)."""
    return {name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}


def basic_versions() -> dict[str, str]:
    """The versions that matter for loading weights, found without the training code's `robot_rl.runs`."""
    versions = {"python": sys.version.split()[0]}
    for package in ("robot-rl", "torch", "numpy", "safetensors"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


# -- the policy ----------------------------------------------------------------------------------------------------
class Policy:
    """An actor with its `PolicySpec`: acts on observations as the env (or the robot's codecs) return them.

    The actor is a copy, so an exported policy does not change while the learner keeps training.
    """

    def __init__(
        self,
        spec: PolicySpec,
        actor: TanhGaussianActor | EnsembleActor | None = None,
        *,
        info: Mapping[str, Any] | None = None,
        versions: Mapping[str, str] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        """`actor` None builds a freshly initialised one; `info` is free JSON recorded with the policy (learner step,
        run, ...); `versions` the software that trained it (default: the versions found now)."""
        self.spec = spec
        self.info: dict[str, Any] = dict(info or {})
        self.versions: dict[str, str] = dict(versions) if versions is not None else basic_versions()
        self.device = torch.device(device)
        built = spec.build_actor()
        if actor is not None:
            weights = actor.state_dict()
            check_tensors("actor", weights, built.state_dict())
            built.load_state_dict(weights)
        self.actor = built.to(self.device).eval().requires_grad_(False)
        self._binary = [spec.action_names.index(name) for name in spec.binary_actions]

    # -- acting --------------------------------------------------------------------------------------------------
    def act(self, observation: Mapping[str, NDArray[Any]], deterministic: bool = True) -> NDArray[np.float32]:
        """The action (A,) float32 in [-1, 1] for ONE observation: "image" (H, W, C) uint8, "state" (S,) float,
        "privileged" (P,) float if the spec uses it (other keys are ignored). Deterministic: tanh of the mean (+-1
        by its sign for the spec's `binary_actions`)."""
        action: NDArray[np.float32] = self._act(observation, deterministic, batched=False)[0]
        return action

    def act_batch(self, observations: Mapping[str, NDArray[Any]], deterministic: bool = True) -> NDArray[np.float32]:
        """Actions (B, A) for a batch of observations, each array with a leading batch dimension."""
        return self._act(observations, deterministic, batched=True)

    def _act(self, observations: Mapping[str, NDArray[Any]], deterministic: bool, batched: bool) -> NDArray[np.float32]:
        image, state = self._inputs(observations, batched)
        with torch.inference_mode():
            actor = self.actor
            if isinstance(actor, TanhGaussianActor):
                features = actor.encode(image, state)  # (B, F)
                # The mean action tanh(mu(s)), or one sample of pi(.|s) from torch's global generator.
                action = actor.deterministic(features) if deterministic else actor.sample(features, 1)[0][:, 0]
            else:  # an EnsembleActor (spec.members > 1): tanh of the moment-matched mean, or a sample of it
                action = actor.act(image, state, deterministic)
        if deterministic and self._binary:
            action = action.clone()  # an inference tensor: it cannot be set in place outside inference_mode
            action[:, self._binary] = torch.where(action[:, self._binary] >= 0, 1.0, -1.0).to(action.dtype)
        out: NDArray[np.float32] = action.cpu().numpy().astype(np.float32, copy=False)
        if not np.isfinite(out).all():  # unreachable with finite weights and inputs; the robot must never get NaN
            raise RuntimeError("the policy produced non-finite actions")
        return out

    def _inputs(self, observations: Mapping[str, NDArray[Any]], batched: bool) -> tuple[Tensor | None, Tensor]:
        """Check the observation against the spec and build the actor's input exactly as training did."""
        spec = self.spec
        sizes: dict[str, int] = {}
        image: Tensor | None = None
        if spec.image_shape is not None:
            pixels = self._array(observations, "image", spec.image_shape, batched)
            if pixels.dtype != np.uint8:
                # A float image in [0, 1] would be divided by 255 again and the policy would act on a black frame.
                raise ObservationError(f"observation 'image' has dtype {pixels.dtype}; the policy takes uint8 pixels")
            pixels = pixels if batched else pixels[None]
            sizes["image"] = pixels.shape[0]
            # As robot_rl.algos.batch: uint8 (B, H, W, C) -> float (B, C, H, W) / 255.
            tensor = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device)
            image = tensor.permute(0, 3, 1, 2).float().div_(255.0)
        parts = []
        groups = [("state", spec.state_names)] + (
            [("privileged", spec.privileged_names)] if spec.use_privileged else []
        )
        for key, names in groups:
            if not names and key not in observations:
                continue
            values = self._array(observations, key, (len(names),), batched)
            if values.dtype.kind not in "fiu":
                raise ObservationError(f"observation {key!r} has dtype {values.dtype}; expected float32")
            if not np.isfinite(values).all():
                bad = [names[i] for i in np.flatnonzero(~np.isfinite(values.reshape(-1, len(names))).any(axis=0))]
                raise ObservationError(f"observation {key!r} has NaN or inf values (in {bad}); refusing to act on it")
            values = values if batched else values[None]
            sizes[key] = values.shape[0]
            parts.append(values.astype(np.float32, copy=False))
        if len(set(sizes.values())) > 1:
            raise ObservationError(f"observation arrays disagree on the batch size: {sizes}")
        b = next(iter(sizes.values()))
        state = np.concatenate(parts, axis=1) if parts else np.zeros((b, 0), np.float32)  # (B, S)
        return image, torch.from_numpy(np.ascontiguousarray(state)).to(self.device)

    @staticmethod
    def _array(
        observations: Mapping[str, NDArray[Any]], key: str, shape: tuple[int, ...], batched: bool
    ) -> NDArray[Any]:
        if key not in observations:
            raise ObservationError(f"observation has no {key!r} (keys: {sorted(observations)}); the policy needs it")
        value = np.asarray(observations[key])
        got = value.shape[1:] if batched else value.shape
        if got != shape:
            what = "(B, " + ", ".join(map(str, shape)) + ")" if batched else str(shape)
            raise ObservationError(
                f"observation {key!r} has shape {value.shape}, but the policy was trained on {what}"
                + (" (PolicySpec.image_shape): resize the camera image or rebuild the env" if key == "image" else "")
            )
        return value

    # -- files ---------------------------------------------------------------------------------------------------
    def save(self, folder: Path | str) -> Path:
        """Write `folder/policy.safetensors` and `folder/policy.json` atomically (see `write_folder_atomically`)."""
        tensors = tensors_for_saving(self.actor.state_dict())
        weights = safetensors.torch.save(
            tensors, metadata={"format": POLICY_FORMAT, "format_version": str(POLICY_FORMAT_VERSION)}
        )
        record = {
            "format": POLICY_FORMAT,
            "format_version": POLICY_FORMAT_VERSION,
            "actor": self.spec.actor_class,
            "spec": self.spec.to_dict(),
            "safetensors_sha256": sha256_of(weights),
            "info": self.info,
            "versions": self.versions,
        }
        text = json.dumps(record, indent=2) + "\n"
        return write_folder_atomically(Path(folder), {POLICY_WEIGHTS: weights, POLICY_JSON: text.encode()})

    @classmethod
    def load(cls, folder: Path | str, device: torch.device | str = "cpu") -> Policy:
        """Load a policy saved by `save`, refusing (`CheckpointError`) anything that is not exactly that."""
        folder = Path(folder)
        record = read_checked_json(folder, POLICY_JSON, POLICY_FORMAT, POLICY_FORMAT_VERSION)
        json_path = folder / POLICY_JSON
        _check_keys(
            record,
            {"format", "format_version", "actor", "spec", "safetensors_sha256", "info", "versions"},
            str(json_path),
        )
        if not isinstance(record["info"], dict) or not isinstance(record["versions"], dict):
            raise CheckpointError(f"{json_path}: info and versions must be JSON objects")
        spec = PolicySpec.from_dict(record["spec"], f"{json_path}: spec")
        if record["actor"] != spec.actor_class:
            raise CheckpointError(
                f"{json_path}: actor {record['actor']!r} does not match the spec ({spec.members} member(s): "
                f"{spec.actor_class!r})"
            )
        tensors = read_checked_tensors(folder / POLICY_WEIGHTS, record["safetensors_sha256"])
        actor = spec.build_actor()
        check_tensors(str(folder / POLICY_WEIGHTS), tensors, actor.state_dict())
        actor.load_state_dict(tensors)
        return cls(spec, actor, info=record["info"], versions=record["versions"], device=device)


def average_policies(policies: Sequence[Policy], info: Mapping[str, Any] | None = None) -> Policy:
    """Checkpoint averaging: a policy whose every floating-point tensor is the uniform mean (summed in float64) of
    `policies`' tensors, with the last one's spec, versions and info (updated with `info`).

    The policies must share one spec (architecture, observation names, binary actions); in practice they are
    exports of one run, whose standardisation statistics are the same, so those average to themselves.
    """
    if not policies:
        raise ValueError("no policies to average")
    last = policies[-1]
    spec = last.spec.to_dict()
    for i, policy in enumerate(policies):
        if policy.spec.to_dict() != spec:
            raise ValueError(
                f"policy {i} of {len(policies)} has another spec than the last one; only exports of one run (one "
                f"architecture, observation and action layout) can be averaged"
            )
    states = [policy.actor.state_dict() for policy in policies]
    mean = {
        key: torch.stack([s[key].double() for s in states]).mean(dim=0).to(value.dtype)
        if value.is_floating_point()
        else value
        for key, value in states[-1].items()
    }
    actor = last.spec.build_actor()
    actor.load_state_dict(mean)
    return Policy(last.spec, actor, info={**last.info, **(info or {})}, versions=last.versions, device=last.device)
