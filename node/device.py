"""Where a node, a verifier or a client computes, in what precision, and how much room is there.

`--device` takes `auto`, `cpu`, `cuda` or `cuda:N`; `auto` is the first CUDA device when there
is one, else the CPU. `--dtype` takes `float32`, `float16`, `bfloat16` or `auto`; `auto` is
bfloat16 on a CUDA device that supports it, float16 on one that does not, float32 on the CPU
(bfloat16 there when the weights are quantized, `--quantize`: they compute in 16 bits).
A CPU may still be told float16 or bfloat16 (slow, but it works and tests use it).

The rules are pure functions over what the machine has (`resolve_device`, `resolve_dtype`);
`local_device` and `local_dtype` apply them to this machine. `device_memory` reads how much
memory a device has free: `torch.cuda.mem_get_info` on a CUDA device, the available RAM on the
CPU.

    device = local_device("auto")            # cuda:0 on a GPU machine, else cpu
    dtype = local_dtype("auto", device)      # "bfloat16" on most GPUs, "float32" on the CPU
    memory = device_memory(device)           # total / free / used bytes
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import torch

from node.config import ConfigError, check_device_name, check_dtype_name


class DeviceError(ConfigError):
    """A device or dtype this machine cannot compute on, or one not spelled as expected."""


def resolve_device(text: str, cuda_devices: int) -> torch.device:
    """The device `text` names on a machine with `cuda_devices` CUDA devices (see the module
    doc); `DeviceError` when it is malformed or names a CUDA device the machine lacks."""
    problem = check_device_name(text)
    if problem is not None:
        raise DeviceError(problem)
    if text == "auto":
        return torch.device("cuda", 0) if cuda_devices > 0 else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if cuda_devices == 0:
        raise DeviceError(
            f"--device {text}: this machine has no CUDA device (torch sees none); "
            "use --device cpu or auto"
        )
    index = int(text.partition(":")[2] or 0)
    if index >= cuda_devices:
        raise DeviceError(
            f"--device {text}: this machine has {cuda_devices} CUDA device"
            f"{'s' if cuda_devices != 1 else ''} (cuda:0 to cuda:{cuda_devices - 1})"
        )
    return torch.device("cuda", index)


def resolve_dtype(
    text: str, device: torch.device, *, bf16_supported: bool, quantized: bool = False
) -> str:
    """The compute dtype `text` names on `device` (see the module doc); `bf16_supported`:
    whether the device computes in bfloat16; `quantized`: whether the weights are (they
    compute in 16 bits: auto is bfloat16 on the CPU then)."""
    problem = check_dtype_name(text)
    if problem is not None:
        raise DeviceError(problem)
    if text != "auto":
        return text
    if device.type == "cpu":
        return "bfloat16" if quantized else "float32"
    return "bfloat16" if bf16_supported else "float16"


def local_device(text: str) -> torch.device:
    """`resolve_device` on this machine."""
    return resolve_device(text, torch.cuda.device_count() if torch.cuda.is_available() else 0)


def local_dtype(text: str, device: torch.device, *, quantized: bool = False) -> str:
    """`resolve_dtype` on this machine's `device`."""
    supported = False
    if device.type == "cuda" and text == "auto":
        with torch.cuda.device(device):
            # native bfloat16 only: emulated, it is slower than float16
            supported = bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return resolve_dtype(text, device, bf16_supported=supported, quantized=quantized)


def device_name(device: torch.device) -> str:
    """How a device is shown: `cpu`, `cuda:0`."""
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else 0}"
    return device.type


@dataclass(frozen=True)
class DeviceMemory:
    """A device's memory at one moment, in bytes."""

    total: int  # what the device has
    free: int  # what new allocations may still take (CPU: the RAM available)
    process: int  # what this process holds on it (CUDA: torch's allocations; CPU: resident)

    @property
    def used(self) -> int:
        """What is in use on the device, by any process."""
        return self.total - self.free

    def to_json(self) -> dict[str, int]:
        return {
            "total_bytes": self.total,
            "free_bytes": self.free,
            "used_bytes": self.used,
            "process_bytes": self.process,
        }


def device_memory(device: torch.device) -> DeviceMemory:
    """How much memory `device` has, has free, and this process holds on it."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return DeviceMemory(
            total=int(total), free=int(free), process=int(torch.cuda.memory_reserved(device))
        )
    ram = psutil.virtual_memory()
    return DeviceMemory(
        total=int(ram.total),
        free=int(ram.available),
        process=int(psutil.Process().memory_info().rss),
    )
