"""The process-group backend each trainer joins under torchrun, without starting any process
(the 2-process runs themselves are in test_distributed.py). NCCL cannot run here (no GPU): the
choice is checked by faking CUDA and stopping at the join."""

import pytest
import torch

from ntulm import distributed
from ntulm.lm import LMConfig, finetune
from ntulm.posts import Post, UserRef


class Joined(Exception):
    """Raised by the fake join: the run stops there."""


@pytest.mark.parametrize(
    ("cuda", "backend", "device"), [(True, "nccl", "cuda:1"), (False, "gloo", None)]
)
def test_finetune_under_torchrun_joins_nccl_on_gpus_and_gloo_on_cpus(
    cuda, backend, device, monkeypatch, tmp_path, backbone
):
    seen = {}

    def join(name="gloo"):
        seen["backend"] = name
        raise Joined

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: seen.setdefault("device", str(d)))
    monkeypatch.setattr(distributed, "init", join)
    posts = [Post(id="1", text="a post", author=UserRef(id="1"))]
    cfg = LMConfig.build({"backbone": backbone, "use_ntu": False, "progress": False})
    with pytest.raises(Joined):
        finetune(posts, cfg, tmp_path / "lm")
    assert seen == ({"backend": backend, "device": device} if device else {"backend": backend})


def test_backend_for_device():
    assert distributed.backend_for("cuda") == "nccl"
    assert distributed.backend_for("cpu") == "gloo"
