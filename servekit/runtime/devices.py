"""Where a worker runs its model: the device TorchServe assigned, and moving data there.

``choose_device`` is a pure function of what the worker is told and what torch sees::

    >>> choose_device({"gpu_id": 1}, {}, cuda_available=True, device_count=2).reason
    'cuda:1 (gpu_id 1 from TorchServe)'
    >>> choose_device({"gpu_id": None}, {}, cuda_available=True, device_count=2).reason
    'cpu (no GPU assigned: gpu_id is None)'

How the TorchServe 0.12 frontend assigns ``gpu_id`` (``Model.java``, ``WorkLoadManager.java``):

- ``number_of_gpu`` is the smaller of the config's value and the GPUs the frontend finds
  (``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi``); workers inherit that environment, so a
  ``gpu_id`` is an index into the devices torch sees;
- ``deviceType: gpu`` with ``number_of_gpu`` 0 is silently turned into CPU: the worker gets
  no ``gpu_id`` (``None``) and nothing in any log says the GPU was refused;
- no ``deviceType``: GPU when ``number_of_gpu > 0`` (workers round-robin over every GPU,
  or over ``deviceIds``), else CPU; ``deviceType: cpu``: never a ``gpu_id``;
- ``deviceIds`` holding an id outside ``0..number_of_gpu-1`` is dropped whole, with a warning in
  the frontend's log only, and the workers spread over every GPU;
- TorchServe's own ``BaseHandler`` builds ``cuda:<gpu_id>`` whenever torch sees CUDA, hence
  ``cuda:None`` with ``number_of_gpu=0`` (pytorch/serve #1038), and falls back to CPU without
  a word when torch sees no CUDA (a CPU-only torch build on a GPU host: #2889).

The choices made here (the table is also in docs/handlers.md, "Devices"):

- ``cuda:None`` never happens: no ``gpu_id`` is CPU, exactly as before devices existed;
- an explicit ``deviceType: gpu`` that cannot be honoured (no ``gpu_id``, or torch sees no
  CUDA) fails ``initialize`` with a ``ModelLoadError``. The frontend has already dropped the
  request without a word, so the worker is the last place that can say it; a model meant for
  a GPU that quietly serves from CPU looks healthy while it runs past ``responseTimeout``
  under load. Whoever wants "a GPU when there is one" leaves ``deviceType`` out;
- without ``deviceType``, a ``gpu_id`` that torch cannot use because it sees no CUDA at all
  is served on CPU, as TorchServe does, but loudly: a warning in the worker log and the
  reason in the describe (``fallback``). Failing would break CPU deployments that work today;
- a ``gpu_id`` at or past the devices torch sees is a ``ModelLoadError`` naming it;
- a ``gpu_id`` not in ``deviceIds`` is a ``ModelLoadError``: the frontend does that only when it
  dropped the list as invalid, and serving on a GPU the config excluded could starve the
  process that GPU was kept for. With ``parallelLevel`` > 0 (torchrun) ``gpu_id`` is a
  position, not a device id, and is not checked against the list;
- a ``deviceType`` other than ``cpu``/``gpu`` (any case, as the frontend compares) is a
  ``ModelLoadError``: the frontend would treat it as unset, which is rarely what was meant.

Only CUDA is handled: MPS, XPU and XLA workers run on CPU, as they did before.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any, TypeVar, cast

import torch

from servekit.runtime.errors import ModelLoadError

T = TypeVar("T")
CPU = torch.device("cpu")
DEVICE_TYPES = ("cpu", "gpu")


@dataclasses.dataclass(frozen=True)
class DeviceChoice:
    """The device a worker serves on and, in one line, why."""

    device: torch.device
    reason: str
    fallback: bool = False
    """True when TorchServe assigned a GPU that this worker cannot use (served on CPU)."""


def choose_device(
    system_properties: Mapping[str, Any],
    model_config: Mapping[str, Any],
    *,
    cuda_available: bool,
    device_count: int,
) -> DeviceChoice:
    """The device for a worker: ``system_properties`` and ``model_config`` as TorchServe gives
    them to a handler, ``cuda_available``/``device_count`` as torch sees them."""
    device_type = _device_type(model_config.get("deviceType"))
    gpu_id = _gpu_id(system_properties.get("gpu_id"))
    if device_type == "cpu":
        return DeviceChoice(CPU, "cpu (deviceType: cpu)")
    if gpu_id is None:
        if device_type == "gpu":
            raise ModelLoadError(
                "model config says deviceType: gpu, but TorchServe assigned this worker no GPU "
                "(gpu_id is None: number_of_gpu is 0 or the frontend found no GPU, and it "
                "then runs the model on CPU without a word); set number_of_gpu or "
                "CUDA_VISIBLE_DEVICES, or remove deviceType to allow CPU"
            )
        return DeviceChoice(CPU, "cpu (no GPU assigned: gpu_id is None)")
    if not cuda_available:
        return _no_cuda(gpu_id, device_type)
    if gpu_id >= device_count:
        raise ModelLoadError(
            f"TorchServe assigned gpu_id {gpu_id}, but torch sees {device_count} CUDA "
            f"device(s) (cuda:0..cuda:{device_count - 1}); check CUDA_VISIBLE_DEVICES and "
            "number_of_gpu, which must agree between the frontend and its workers"
        )
    _check_device_ids(gpu_id, model_config, device_count)
    source = f"gpu_id {gpu_id} from TorchServe" + (", deviceType: gpu" if device_type else "")
    return DeviceChoice(torch.device("cuda", gpu_id), f"cuda:{gpu_id} ({source})")


def _no_cuda(gpu_id: int, device_type: str | None) -> DeviceChoice:
    why = "torch sees no CUDA device: a CPU-only torch build, or no driver"
    if device_type == "gpu":
        raise ModelLoadError(
            f"model config says deviceType: gpu and TorchServe assigned gpu_id {gpu_id}, but "
            f"{why}; install a CUDA build of torch, or remove deviceType to allow CPU"
        )
    return DeviceChoice(CPU, f"cpu (gpu_id {gpu_id} from TorchServe, but {why})", fallback=True)


def _device_type(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.lower() in DEVICE_TYPES:
        return value.lower()
    close = difflib.get_close_matches(str(value).lower(), DEVICE_TYPES, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ModelLoadError(
        f"model config deviceType is {value!r}; expected 'cpu' or 'gpu', or no deviceType "
        f"(a GPU when TorchServe assigns one){hint}"
    )


def _gpu_id(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ModelLoadError(f"system property gpu_id is {value!r}; expected an int >= 0 or None")
    return value


def _check_device_ids(gpu_id: int, model_config: Mapping[str, Any], device_count: int) -> None:
    ids = model_config.get("deviceIds")
    if ids is None or int(model_config.get("parallelLevel") or 0) > 0:
        return
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in ids
    ):
        raise ModelLoadError(f"model config deviceIds is {ids!r}; expected a list of GPU ids")
    if ids and gpu_id not in ids:
        invalid = [i for i in ids if not 0 <= i < device_count]
        why = (
            f"the frontend drops a deviceIds list holding an id outside "
            f"0..{device_count - 1} (here {invalid}) and spreads workers over every GPU"
            if invalid
            else "the frontend and this worker disagree on the GPUs"
        )
        raise ModelLoadError(
            f"TorchServe assigned gpu_id {gpu_id}, which is not in deviceIds {ids}: {why}; "
            "fix deviceIds"
        )


def to_device(obj: T, device: torch.device) -> T:
    """``obj`` with every tensor in it on ``device``: tensors, objects with ``.to(device)``,
    inside nested lists, tuples (named ones too) and dicts; anything else as it is.

    A container whose contents are already there is returned itself, not a copy.
    """
    if isinstance(obj, torch.Tensor):
        return obj if obj.device == device else cast(T, obj.to(device))
    if isinstance(obj, (list, tuple)):
        moved = [to_device(x, device) for x in obj]
        if all(m is x for m, x in zip(moved, obj, strict=True)):
            return obj
        return cast(T, moved if isinstance(obj, list) else _same_tuple_type(obj, moved))
    if isinstance(obj, dict):
        pairs = {k: to_device(v, device) for k, v in obj.items()}
        if all(pairs[k] is v for k, v in obj.items()):
            return obj
        return cast(T, pairs if type(obj) is dict else type(obj)(pairs))
    move = getattr(obj, "to", None)
    if callable(move) and not isinstance(obj, (str, bytes, bytearray, type)):
        return cast(T, move(device))
    return obj


def _same_tuple_type(original: tuple[Any, ...], items: list[Any]) -> tuple[Any, ...]:
    """``items`` as a tuple of ``original``'s type: a named tuple stays one."""
    if hasattr(original, "_fields"):
        rebuilt: tuple[Any, ...] = type(original)(*items)
        return rebuilt
    return tuple(items)
