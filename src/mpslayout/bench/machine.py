"""The machine a run happened on: CPU, caches, versions, and which engine build."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .. import _core
from ..engine import get_threads


def _lscpu() -> dict[str, str]:
    exe = shutil.which("lscpu")
    if exe is None:
        return {}
    try:
        text = subprocess.run([exe], capture_output=True, text=True, timeout=10,
                              check=False, env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    info = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total() -> str | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    kib = int(line.split()[1])
                    return f"{kib / (1 << 20):.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return None


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return str(getattr(mod, "__version__", "unknown"))


def _library_id() -> dict[str, Any]:
    """Which build of the C++ engine ran: its file, modification time and hash."""
    path = getattr(_core, "__file__", None)
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
        mtime = datetime.fromtimestamp(os.path.getmtime(path), timezone.utc)
    except OSError:
        return {"file": path}
    return {"file": path, "modified_utc": mtime.isoformat(timespec="seconds"),
            "sha256_16": digest}


_LOADED_LIBRARY: dict[str, Any] | None = None  # the build this process runs, seen at first use


def _loaded_library() -> dict[str, Any]:
    global _LOADED_LIBRARY
    if _LOADED_LIBRARY is None:
        _LOADED_LIBRARY = _library_id()
    return _LOADED_LIBRARY


def machine_info(torch_mod: Any = None, mlx_mod: Any = None) -> dict[str, Any]:
    """CPU, caches, versions and instruction set, for the JSON and markdown reports."""
    from .. import __version__

    lscpu = _lscpu()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    caches = {k: v for k, v in lscpu.items() if re.fullmatch(r"L\d\w? cache", k)}
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "cores_per_socket": lscpu.get("Core(s) per socket"),
        "threads_per_core": lscpu.get("Thread(s) per core"),
        "hypervisor": lscpu.get("Hypervisor vendor"),
        "caches": caches,
        "memory": _mem_total(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": None if torch_mod is None else str(torch_mod.__version__),
        "mlx": None if mlx_mod is None else str(mlx_mod.__version__),
        "matplotlib": _version("matplotlib"),
        "mpslayout": __version__,
        "isa": _core.isa(),
        "core_library": _loaded_library(),
        "available_isas": list(_core.available_isas()),
        "mpslayout_threads": get_threads(),
        "hardware_threads": _core.hardware_threads(),
    }
