"""Which torch device a run uses."""

import os

import torch


def resolve_device(name="auto"):
    """``auto`` picks CUDA when it is available; asking for CUDA without it is an error."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available on this machine "
                         "(torch.cuda.is_available() is False); use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def available_memory(device="cpu"):
    """Bytes that can still be allocated on ``device``: the free memory of a CUDA device, or
    the memory the operating system reports available (``MemAvailable``), else None."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(num_bytes, what, fix, device="cpu"):
    """Refuse, with one line that says ``what`` needs how much and how to ``fix`` it, a size
    that the memory of ``device`` cannot hold (before anything is allocated: an allocator's
    failure is a traceback, and a size that nearly fits can end the process)."""
    available = available_memory(device)
    if available is not None and num_bytes > available:
        raise MemoryTooSmall(f"{what} needs {_size(num_bytes)}, more than the "
                             f"{_size(available)} free on {device}; {fix}")


class MemoryTooSmall(ValueError):
    """A size asked for cannot fit in the memory of the machine."""


def _size(num_bytes):
    for unit, scale in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes} bytes"
