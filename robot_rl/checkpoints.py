"""The learner's checkpoint, for resuming a run exactly, and the export of the deployable policy from it.

A learner folder holds two files::

    learner.safetensors   every tensor of the learner's state:
                            q/<name>, q_target/<name>, actor/<name>   the networks' state_dicts
                            log_alpha, log_cql_weight                the temperatures
                            opt/<critic|actor|alpha|cql_weight>/state/<param_index>/<key>   Adam's exp_avg, ...
                            rng/torch_cpu (and rng/torch_cuda/<i>)   torch's generator states, uint8
                            extra/<key>, extra/<key>/torch_generator tensors and torch.Generators of `extra`
    learner.json          {"format": "robot_rl.learner", "format_version": 1, "safetensors_sha256": ...,
                           "agent": {config, steps, sizes}, "optimizers": {param_groups, non-tensor state},
                           "rng": {python random, numpy's global generator}, "extra": {...}, "versions": {...}}

Resuming exactly (DESIGN.md, Learning) needs everything that decides the next update: the weights and targets,
the optimisers' moments and step counts, `agent.steps` (the BC warm start depends on it) and the random number
generators (CQL samples actions from torch's global generator; samplers and augmentation keep their own, passed
in `extra`). Nothing is pickled, and the same checks as the policy's guard loading (`robot_rl.policy`): format
marker and version, sha256 of the tensors before parsing, exact tensor names and shapes. A checkpoint that fails
them is refused before the agent is touched.
"""

from __future__ import annotations

import dataclasses
import json
import random
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import Tensor, nn

from robot_rl.algos.bc import BC
from robot_rl.algos.cql import CQL
from robot_rl.algos.ensemble import EnsembleActor, actor_architecture
from robot_rl.algos.optim import IMPLEMENTATION_KEYS
from robot_rl.algos.pessimistic import PessimisticEnsemble
from robot_rl.networks import TanhGaussianActor
from robot_rl.policy import (
    CheckpointError,
    Policy,
    PolicySpec,
    check_tensors,
    read_checked_json,
    read_checked_tensors,
    sha256_of,
    tensors_for_saving,
    write_folder_atomically,
)
from robot_rl.runs import software_versions

__all__ = ["CheckpointError", "export_policy", "load_learner", "save_learner"]

LEARNER_FORMAT = "robot_rl.learner"
LEARNER_FORMAT_VERSION = 1
LEARNER_WEIGHTS = "learner.safetensors"
LEARNER_JSON = "learner.json"
_NUMPY_BIT_GENERATORS: dict[str, type[np.random.BitGenerator]] = {
    "PCG64": np.random.PCG64,
    "PCG64DXSM": np.random.PCG64DXSM,
    "MT19937": np.random.MT19937,
    "Philox": np.random.Philox,
    "SFC64": np.random.SFC64,
}
"""The bit generators a numpy Generator in `extra` may use; a name read from JSON is looked up here, never imported."""
_STATE_ARRAY_DTYPES = {"uint32", "uint64"}


Agent = CQL | BC
"""The learners a checkpoint holds: CQL (also COG and SAC-offline) and BC."""


def _modules(agent: Agent) -> dict[str, nn.Module]:
    if isinstance(agent, BC):
        return {"actor": agent.actor}
    modules: dict[str, nn.Module] = {"q": agent.q, "q_target": agent.q_target, "actor": agent.actor}
    if agent.actor_average is not None:
        modules["actor_average"] = agent.actor_average
    return modules


def _parameters(agent: Agent) -> dict[str, nn.Parameter]:
    if isinstance(agent, BC):
        return {}
    return {"log_alpha": agent.log_alpha, "log_cql_weight": agent.log_cql_weight}


def _optimizers(agent: Agent) -> dict[str, torch.optim.Optimizer]:
    if isinstance(agent, BC):
        return {"actor": agent.actor_optimizer}
    return {
        "critic": agent.critic_optimizer,
        "actor": agent.actor_optimizer,
        "alpha": agent.alpha_optimizer,
        "cql_weight": agent.cql_weight_optimizer,
    }


def _config_dict(agent: Agent) -> Any:
    """The agent's config as it reads back from JSON (tuples become lists), so that saved and current compare."""
    return json.loads(json.dumps(dataclasses.asdict(agent.cfg)))


def _with_new_defaults(saved: Any, agent: Agent) -> Any:
    """A saved config with the fields it predates filled in with their defaults: an option added to the config
    since the checkpoint was written (with the old behaviour as its default) is no difference."""
    if not isinstance(saved, dict):
        return saved
    defaults = json.loads(json.dumps(dataclasses.asdict(type(agent.cfg)())))  # every config field has a default
    return {**{k: v for k, v in defaults.items() if k not in saved}, **saved}


def _versions() -> dict[str, str]:
    versions = software_versions()
    try:
        versions["safetensors"] = metadata.version("safetensors")
    except metadata.PackageNotFoundError:
        versions["safetensors"] = "not installed"
    return versions


# -- JSON forms of generator states --------------------------------------------------------------------------------
def _encode_arrays(value: Any) -> Any:
    """numpy bit-generator states hold small integer arrays; JSON holds them as {"__ndarray__": dtype, "values"}."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": str(value.dtype), "values": value.tolist()}
    if isinstance(value, dict):
        return {k: _encode_arrays(v) for k, v in value.items()}
    return value


def _decode_arrays(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            if value["__ndarray__"] not in _STATE_ARRAY_DTYPES:
                raise ValueError(f"unexpected array dtype {value['__ndarray__']!r} in a generator state")
            return np.array(value["values"], dtype=value["__ndarray__"])
        return {k: _decode_arrays(v) for k, v in value.items()}
    return value


def _numpy_generator(state: Any) -> np.random.Generator:
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in _NUMPY_BIT_GENERATORS:
        raise ValueError(f"unknown numpy bit generator {name!r}; known: {sorted(_NUMPY_BIT_GENERATORS)}")
    bit_generator = _NUMPY_BIT_GENERATORS[name]()
    bit_generator.state = _decode_arrays(state)
    return np.random.Generator(bit_generator)


# -- save ----------------------------------------------------------------------------------------------------------
def optimizer_records(optimizers: Mapping[str, torch.optim.Optimizer], tensors: dict[str, Tensor]) -> dict[str, Any]:
    """The optimisers' states as JSON records; their tensors (Adam's moments and step counts) go into `tensors`
    as opt/<name>/state/<index>/<key>."""
    records: dict[str, Any] = {}
    for opt_name, optimizer in optimizers.items():
        state_dict = optimizer.state_dict()
        state: dict[str, Any] = {}
        for index, entries in state_dict["state"].items():
            tensor_keys = sorted(k for k, v in entries.items() if isinstance(v, Tensor))
            for key in tensor_keys:
                tensors[f"opt/{opt_name}/state/{index}/{key}"] = entries[key]
            values = {k: v for k, v in entries.items() if not isinstance(v, Tensor)}
            state[str(index)] = {"tensors": tensor_keys, "values": values}
        records[opt_name] = {"param_groups": state_dict["param_groups"], "state": state}
    return records


def optimizer_states(
    optimizers: Mapping[str, torch.optim.Optimizer],
    records: Mapping[str, Any],
    tensors: Mapping[str, Tensor],
    expected: dict[str, Tensor],
    where: Path | str,
) -> dict[str, dict[str, Any]]:
    """The state dicts `optimizer_records` saved, rebuilt for `load_state_dict`. The tensor each entry needs is
    added to `expected` (a moment has its parameter's shape, a step count is a scalar) for `check_tensors` to
    check; nothing is loaded here. A record that does not fit the optimisers is a CheckpointError naming `where`
    (KeyError, TypeError and ValueError from a malformed record are the caller's to turn into one)."""
    states: dict[str, dict[str, Any]] = {}
    for opt_name, optimizer in optimizers.items():
        params = [p for group in optimizer.param_groups for p in group["params"]]
        saved = records[opt_name]
        state: dict[int, dict[str, Any]] = {}
        for index_text, entry in saved["state"].items():
            index = int(index_text)
            if not 0 <= index < len(params):
                raise CheckpointError(f"{where}: optimiser {opt_name!r} has state for parameter {index}")
            state[index] = dict(entry["values"])
            for key in entry["tensors"]:
                name = f"opt/{opt_name}/state/{index}/{key}"
                reference = tensors.get(name, params[index]) if key == "step" else params[index]
                expected[name] = reference.detach()
                if name in tensors:
                    value = tensors[name]
                    if key != "step" and value.shape == params[index].shape:
                        # Moments in their parameter's memory layout (channels-last conv weights): the fused Adam
                        # walks parameter, gradient and moments as flat memory, so a contiguous moment of a
                        # channels-last weight would be silently misaligned (resume diverged at 4e-5 relative).
                        value = torch.empty_like(params[index], dtype=value.dtype).copy_(value)
                    state[index][key] = value
        # JSON turned tuples (Adam's betas) into lists; give them back the type the optimiser uses. The
        # implementation flags (fused, foreach, ...) stay the current optimiser's: a checkpoint from a slower
        # implementation must not slow the resumed run down.
        groups = [
            {
                k: current[k] if k in IMPLEMENTATION_KEYS else tuple(v) if isinstance(current.get(k), tuple) else v
                for k, v in group.items()
            }
            for group, current in zip(saved["param_groups"], optimizer.param_groups, strict=True)
        ]
        states[opt_name] = {"state": state, "param_groups": groups}
    return states


def save_learner(folder: Path | str, agent: Agent, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the agent's whole training state and `extra` to `folder` atomically; returns the folder.

    `extra` holds the training loop's own state, by key (no "/"): JSON values (lists come back for tuples),
    tensors, `np.random.Generator`s and `torch.Generator`s (their states are saved; `load_learner` returns new
    generators in that state). torch's global generator state, Python's `random` and numpy's global state are
    saved in any case. A crash during the save leaves the previous checkpoint in `folder` intact.
    """
    tensors: dict[str, Tensor] = {}
    for prefix, module in _modules(agent).items():
        tensors.update({f"{prefix}/{name}": t for name, t in module.state_dict().items()})
    tensors.update(_parameters(agent))

    optimizers = optimizer_records(_optimizers(agent), tensors)

    tensors["rng/torch_cpu"] = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if agent.device.type == "cuda" else []
    tensors.update({f"rng/torch_cuda/{i}": s for i, s in enumerate(cuda_states)})
    # The two Mersenne Twister states (625 and 624 words) go with the tensors, keeping learner.json readable.
    version, mt_state, gauss = random.getstate()
    tensors["rng/python_random"] = torch.tensor(mt_state, dtype=torch.int64)
    legacy = np.random.get_state(legacy=False)
    tensors["rng/numpy_global_key"] = torch.from_numpy(legacy["state"]["key"].astype(np.int64))
    legacy_rest = {**legacy, "state": {"pos": legacy["state"]["pos"]}}

    extra_record: dict[str, Any] = {}
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not key or "/" in key:
            raise ValueError(f"extra keys must be non-empty strings without '/', got {key!r}")
        if isinstance(value, np.random.Generator):
            extra_record[key] = {"kind": "numpy_generator", "state": _encode_arrays(value.bit_generator.state)}
        elif isinstance(value, torch.Generator):
            tensors[f"extra/{key}/torch_generator"] = value.get_state()
            extra_record[key] = {"kind": "torch_generator", "device": str(value.device)}
        elif isinstance(value, Tensor):
            tensors[f"extra/{key}"] = value
            extra_record[key] = {"kind": "tensor", "device": str(value.device)}
        else:
            try:
                json.dumps(value)
            except (TypeError, ValueError) as e:
                raise ValueError(f"extra[{key!r}] is neither JSON nor a tensor or generator: {e}") from e
            extra_record[key] = {"kind": "json", "value": value}

    weights = safetensors.torch.save(
        tensors_for_saving(tensors),
        metadata={"format": LEARNER_FORMAT, "format_version": str(LEARNER_FORMAT_VERSION)},
    )
    actor = agent.actor
    record = {
        "format": LEARNER_FORMAT,
        "format_version": LEARNER_FORMAT_VERSION,
        "safetensors_sha256": sha256_of(weights),
        "agent": {
            "class": type(agent).__name__,
            "config": _config_dict(agent),
            "steps": agent.steps,
            "has_image": actor.encoder.conv is not None,
            "state_dim": actor.encoder.state_dim,
            "action_dim": actor.action_dim,
        },
        "optimizers": optimizers,
        "rng": {
            "python_random": {"version": version, "gauss_next": gauss},
            "numpy_global": legacy_rest,
            "torch_cuda_devices": len(cuda_states),
        },
        "extra": extra_record,
        "versions": _versions(),
    }
    try:
        text = json.dumps(record, indent=2) + "\n"
    except (TypeError, ValueError) as e:  # e.g. a tensor-valued learning rate in a param group
        raise ValueError(f"the learner's state has a value JSON cannot hold: {e}") from e
    return write_folder_atomically(Path(folder), {LEARNER_WEIGHTS: weights, LEARNER_JSON: text.encode()})


# -- load ----------------------------------------------------------------------------------------------------------
def load_learner(folder: Path | str, agent: Agent, check_config: bool = True) -> dict[str, Any]:
    """Restore `agent` (built with the same config and sizes) from `folder`; returns the saved `extra`.

    Restores weights, targets, temperatures, optimiser states, `agent.steps` and the global RNG states (torch's,
    Python's `random`, numpy's legacy global), so that the next updates are those of the uninterrupted run.
    In the returned `extra`, generators are new objects in the saved state: replace the loop's own with them.
    `check_config` refuses a checkpoint written with a different `CQLConfig` (set it False only to change the
    algorithm deliberately, e.g. to fine-tune). Everything is checked before the agent is modified.
    """
    folder = Path(folder)
    json_path, weights_path = folder / LEARNER_JSON, folder / LEARNER_WEIGHTS
    record = read_checked_json(folder, LEARNER_JSON, LEARNER_FORMAT, LEARNER_FORMAT_VERSION)
    try:
        agent_record, optimizers, rng, extra = (record["agent"], record["optimizers"], record["rng"], record["extra"])
        if agent_record["class"] != type(agent).__name__:
            raise CheckpointError(f"{json_path}: a {agent_record['class']} checkpoint, not {type(agent).__name__}")
        saved, current = _with_new_defaults(agent_record["config"], agent), _config_dict(agent)
        if check_config and saved != current:
            changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
            raise CheckpointError(
                f"{json_path}: saved with a different config (fields {changed}); build the agent from the run's "
                "config, or pass check_config=False to change it on purpose"
            )
        steps = int(agent_record["steps"])
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{json_path}: malformed learner record ({e!r})") from e

    tensors = read_checked_tensors(weights_path, record["safetensors_sha256"])

    # The expected tensors: the agent's own, plus what the JSON says the optimisers, RNGs and extra hold.
    expected: dict[str, Tensor] = {}
    for prefix, module in _modules(agent).items():
        expected.update({f"{prefix}/{name}": t for name, t in module.state_dict().items()})
    expected.update({name: p.detach() for name, p in _parameters(agent).items()})
    expected["rng/torch_cpu"] = torch.get_rng_state()
    expected["rng/python_random"] = torch.zeros(625, dtype=torch.int64)
    expected["rng/numpy_global_key"] = torch.zeros(624, dtype=torch.int64)
    try:
        for i in range(int(rng["torch_cuda_devices"])):
            expected[f"rng/torch_cuda/{i}"] = tensors.get(f"rng/torch_cuda/{i}", torch.empty(0, dtype=torch.uint8))
        restored_optimizers = optimizer_states(_optimizers(agent), optimizers, tensors, expected, json_path)
        restored_extra: dict[str, Any] = {}
        for key, entry in extra.items():
            match entry["kind"]:
                case "json":
                    restored_extra[key] = entry["value"]
                case "numpy_generator":
                    restored_extra[key] = _numpy_generator(entry["state"])
                case "torch_generator":
                    expected[f"extra/{key}/torch_generator"] = tensors.get(
                        f"extra/{key}/torch_generator", torch.empty(0, dtype=torch.uint8)
                    )
                case "tensor":
                    expected[f"extra/{key}"] = tensors.get(f"extra/{key}", torch.empty(0))
                case other:
                    raise CheckpointError(f"{json_path}: extra[{key!r}] has unknown kind {other!r}")
        python_random, numpy_global = rng["python_random"], dict(rng["numpy_global"])
        python_version, python_gauss = int(python_random["version"]), python_random["gauss_next"]
        numpy_pos = int(numpy_global["state"]["pos"])
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise CheckpointError(f"{json_path}: malformed learner record ({e!r})") from e
    # NaN weights are restored as they are: a diverged run is resumed (or inspected) exactly, never deployed.
    check_tensors(str(weights_path), tensors, expected, require_finite=False)
    try:
        for key, entry in extra.items():
            if entry["kind"] == "torch_generator":
                generator = torch.Generator(device=entry["device"])
                generator.set_state(tensors[f"extra/{key}/torch_generator"])
                restored_extra[key] = generator
            elif entry["kind"] == "tensor":
                restored_extra[key] = tensors[f"extra/{key}"].to(entry["device"])
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{json_path}: cannot restore the extra state ({e})") from e

    # All checked: now modify the agent.
    for prefix, module in _modules(agent).items():
        module.load_state_dict({n[len(prefix) + 1 :]: t for n, t in tensors.items() if n.startswith(prefix + "/")})
    with torch.no_grad():
        for name, parameter in _parameters(agent).items():
            parameter.copy_(tensors[name])
    for opt_name, optimizer in _optimizers(agent).items():
        try:
            optimizer.load_state_dict(restored_optimizers[opt_name])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{json_path}: optimiser {opt_name!r} does not fit the agent ({e})") from e
    agent.steps = steps
    torch.set_rng_state(tensors["rng/torch_cpu"])
    cuda_states = [tensors[f"rng/torch_cuda/{i}"] for i in range(int(rng["torch_cuda_devices"]))]
    if cuda_states and agent.device.type == "cuda":
        torch.cuda.set_rng_state_all(cuda_states)
    elif cuda_states:
        warnings.warn(
            "the checkpoint was trained on CUDA; resuming on the CPU cannot repeat its random draws", stacklevel=2
        )
    random.setstate((python_version, tuple(tensors["rng/python_random"].tolist()), python_gauss))
    key = tensors["rng/numpy_global_key"].numpy().astype(np.uint32)
    np.random.set_state({**numpy_global, "state": {"key": key, "pos": numpy_pos}})
    return restored_extra


# -- export --------------------------------------------------------------------------------------------------------
def export_policy(
    agent: Agent | PessimisticEnsemble,
    env_spec: Mapping[str, Any],
    *,
    use_privileged: bool = False,
    info: Mapping[str, Any] | None = None,
    actor: TanhGaussianActor | None = None,
    binary_actions: tuple[str, ...] = (),
) -> Policy:
    """The deployable policy of the agent's current actor (a copy), described by the env's spec record; `actor`
    exports another actor of the agent's architecture instead (e.g. `CQL.actor_average`).

    `env_spec` is the env's `spec_record().to_dict()` (also `DatasetInfo.env_spec` of the training data): action
    names, scales and units, state and privileged names, image shape, control period. `use_privileged` says the
    agent was trained with the privileged state appended (`to_torch(use_privileged=True)`). `info` is recorded
    with the policy; the learner's step is added as "learner_steps". A fine-tuned ensemble exports all its actors
    as one policy (`PolicySpec.members` = N) that acts with their moment-matched Gaussian. `binary_actions` names
    the action components the policy commands at +-1 when it acts deterministically (`PolicySpec.binary_actions`).
    """
    exported: TanhGaussianActor | EnsembleActor = agent.actor if actor is None else actor
    hidden, conv = actor_architecture(exported)
    try:
        image_shape = None
        if exported.encoder.conv is not None:
            if env_spec.get("image_shape") is None:
                raise ValueError("the agent sees images but env_spec has no image_shape")
            h, w, c = (int(v) for v in env_spec["image_shape"])
            image_shape = (h, w, c)
        privileged = tuple(env_spec["privileged_names"] or ()) if use_privileged else ()
        if use_privileged and not privileged:
            raise ValueError("use_privileged is set but env_spec has no privileged_names")
        period = env_spec.get("control_period_s")
        spec = PolicySpec(
            image_shape=image_shape,
            state_names=tuple(env_spec["state_names"]),
            use_privileged=use_privileged,
            privileged_names=privileged,
            action_names=tuple(env_spec["action_names"]),
            action_scales=tuple(float(s) for s in env_spec["action_scales"]),
            action_units=tuple(env_spec["action_units"]),
            control_period_s=None if period is None else float(period),
            hidden=hidden,
            conv=conv,
            state_dim=exported.encoder.state_dim,
            action_dim=exported.action_dim,
            members=exported.members if isinstance(exported, EnsembleActor) else 1,
            binary_actions=tuple(binary_actions),
        )
    except KeyError as e:
        raise ValueError(f"env_spec lacks {e}; pass the env's spec_record().to_dict()") from e
    return Policy(spec, exported, info={**(info or {}), "learner_steps": agent.steps}, versions=_versions())
