"""``ntulm.memory.trim``: glibc malloc_trim, switchable off for the side-by-side benchmark."""

import platform

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
