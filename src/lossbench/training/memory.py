"""Memory of a run: its peak afterwards, and whether its tensors can fit before it starts.

Peak: the CUDA allocator's high-water mark, or the process's peak RSS.

On Linux the RSS high-water mark (VmHWM) is reset at the start of every run (writing 5 to
/proc/self/clear_refs), after handing freed heap memory back to the system (glibc's
`malloc_trim`), so each run of a comparison reports its own peak, not the largest of all
runs before it in the same process. Elsewhere it is the peak RSS of the process.

Fit (`fit_check.py`) compares an estimate of a step's memory with `available_memory_bytes`:
free GPU memory, or on Linux MemAvailable of /proc/meminfo (bounded by the cgroup's limit).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import resource
import sys
from pathlib import Path

import torch

from lossbench.errors import LossbenchError

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")
_MEMINFO = Path("/proc/meminfo")
_CGROUP = Path("/sys/fs/cgroup")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    _release_free_heap()
    try:
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass  # not Linux, or not allowed: peak_memory_mb falls back to the process peak


def _release_free_heap() -> None:
    """glibc keeps freed memory in the process (it still counts as RSS); give it back."""
    if not sys.platform.startswith("linux"):
        return
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass  # not glibc: nothing to trim


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    high_water = _vm_high_water_kib()
    if high_water is not None:
        return high_water / 2**10
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _vm_high_water_kib() -> int | None:
    """VmHWM of /proc/self/status in KiB, or None where there is no such file."""
    return _status_kib("VmHWM:")


def _status_kib(field: str) -> int | None:
    try:
        status = _STATUS.read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(field):
            return int(line.split()[1])  # "VmHWM:   123456 kB"
    return None


def resident_bytes(device: torch.device) -> int:
    """What the process holds before a run on `device` adds its tensors: its resident memory
    on CPU (torch itself, the data; part of a CPU run's peak), 0 on CUDA (peak allocated
    counts tensors only); 0 where it cannot be read."""
    if device.type == "cuda":
        return 0
    resident = _status_kib("VmRSS:")
    return 0 if resident is None else resident * 1024


def available_memory_bytes(device: torch.device) -> int | None:
    """Memory a run on `device` can still allocate, or None where it cannot be known."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    available = _meminfo_available() or _sysconf_available()
    limit = _cgroup_room()
    if available is None or limit is None:
        return available if limit is None else limit
    return min(available, limit)


def _meminfo_available(path: Path = _MEMINFO) -> int | None:
    """MemAvailable of /proc/meminfo in bytes (Linux >= 3.14)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024  # "MemAvailable:   123456 kB"
    return None


def _sysconf_available() -> int | None:
    """Free physical pages times the page size (POSIX systems that report it)."""
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _cgroup_room(root: Path = _CGROUP) -> int | None:
    """The cgroup v2 memory limit minus current use, or None without a limit."""
    try:
        limit = (root / "memory.max").read_text().strip()
        current = int((root / "memory.current").read_text())
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    return max(int(limit) - current, 0)


# Binary, like every size lossbench prints (peak MB, GB in the plan): 8GB = 8 x 2^30 bytes.
_UNITS = {"": 1, "B": 1} | {
    unit + suffix: 2 ** (10 * power)
    for power, unit in enumerate("KMGT", start=1)
    for suffix in ("", "B", "IB")
}


def format_size(size: int) -> str:
    """'1.25 GB' from a gibibyte up, else '300 MB' (binary units, as parsed)."""
    if size >= 2**30:
        return f"{size / 2**30:,.2f} GB"
    return f"{size / 2**20:,.0f} MB"


def parse_memory_size(text: str) -> int:
    """'8GB' / '512 MiB' / '1.5g' -> bytes (G, GB and GiB alike are 2^30; a bare number: bytes)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS or float(match.group(1)) <= 0:
        raise LossbenchError(
            f"--memory-budget {text!r} is not a memory size; give a positive number with a "
            "unit, e.g. 8GB, 512MB or 16GiB"
        )
    return int(float(match.group(1)) * _UNITS[unit])
