"""One rank of data-parallel ``finetune`` that is killed after step 5 and then resumed.

Run by tests/test_distributed.py under ``torchrun``: ``finetune_ddp.py POSTS NTU OUT CONFIG_JSON``."""

import json
import sys

from ntulm.kge import NTUEmbeddings
from ntulm.lm import LMConfig, finetune
from ntulm.posts import PostReader


class Killed(Exception):
    pass


def crash(step: int) -> None:
    if step == 5:
        raise Killed


if __name__ == "__main__":
    posts = [p for p, _ in PostReader().iter_posts([sys.argv[1]])]
    ntu, out = NTUEmbeddings.load(sys.argv[2]), sys.argv[3]
    cfg = LMConfig.build(json.loads(sys.argv[4]))
    try:
        finetune(posts, cfg, out, ntu=ntu, on_step=crash)
        raise SystemExit("the run was not interrupted")
    except Killed:
        pass
    finetune(posts, cfg, out, ntu=ntu, resume=True)
