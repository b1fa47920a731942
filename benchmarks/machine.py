"""What the machine running a benchmark can do, recorded with every figure: workplace machines
differ (one session's CPU has AVX-512 BF16, another's only AVX2, where bfloat16 is emulated and
many times slower than float32), and a ratio measured on one does not carry to the other."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_info() -> dict[str, object]:
    from ntulm.lm.config import cpu_flags, native_bf16  # the rule the code itself follows

    flags = cpu_flags() or set()
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
                break
    return {
        "model": model,
        "cpus": os.cpu_count(),
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "native_bf16": native_bf16("cpu"),
        "python": platform.python_version(),
    }
