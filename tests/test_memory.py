"""``ntulm.memory``: glibc malloc_trim and the allocator settings, each switchable off for the
side-by-side benchmark."""

import os
import platform
import subprocess
import sys

import pytest

from ntulm import memory


@pytest.fixture(autouse=True)
def _fresh_cache():
    memory._malloc_trim.cache_clear()
    yield
    memory._malloc_trim.cache_clear()


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_trim_releases_freed_heap_pages_on_glibc():
    junk = [bytearray(200_000) for _ in range(200)]  # ~40 MB of heap chunks ...
    del junk  # ... freed, kept by malloc
    assert memory.trim() is True


def test_trim_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("NTULM_MALLOC_TRIM", "0")
    assert memory.trim() is False


PROBE = """
import sys
from ntulm import memory
tuned = memory.tune_allocator(1 << 20)
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
a = b"\\x01" * (4 << 20); del a  # glibc raises its adaptive mmap threshold to 4 MB on this free
before = rss()
blocks, small = [], []
for i in range(40):  # ~120 MB of large buffers, each of another size, between small live ones
    blocks.append(b"\\x01" * ((3 << 20) - 4096 * i))
    small.append(b"\\x02" * 200_000)
held = rss()
del blocks
print(tuned, held - before, rss() - before)
"""


def _probe(tune: str) -> tuple[bool, int, int]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**env, "NTULM_MALLOC_TUNE": tune},
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_tuned_allocator_gives_freed_large_buffers_back_without_a_trim():
    tuned, held, after = _probe("1")
    assert tuned and held > 100  # the buffers were resident ...
    assert after < 0.2 * held  # ... and freeing them unmapped them
    # the same program with glibc's adaptive threshold keeps them in its heap
    tuned, held, after = _probe("0")
    assert not tuned and after > 0.5 * held


def test_tune_allocator_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("NTULM_MALLOC_TUNE", "0")
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    assert memory.tune_allocator() is False
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ
    monkeypatch.delenv("NTULM_MALLOC_TUNE")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # glibc's own setting wins
    assert memory.tune_allocator() is False


def test_tune_allocator_caps_onednn_primitive_cache_unless_the_user_set_it(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.delenv("NTULM_MALLOC_TUNE", raising=False)
    memory.tune_allocator()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(memory.ONEDNN_CACHE)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "7")
    memory.tune_allocator()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "7"


def test_finetune_cli_tunes_the_allocator_only_when_asked(monkeypatch, tmp_path):
    from ntulm.cli import main

    calls: list[int] = []
    monkeypatch.setattr(memory, "tune_allocator", lambda *a: calls.append(1) or True)
    args = ["finetune", "--posts", str(tmp_path / "missing.jsonl"), "--no-ntu", "--out",
            str(tmp_path / "out")]  # fmt: skip
    assert main(args) != 0  # the missing file: a clear error, after the allocator was set
    assert calls == []
    assert main([*args, "--lean-memory"]) != 0
    assert calls == [1]
