"""One rank of a sharded ``train_kge`` run that is killed after an epoch and then resumed.

Run by tests/test_distributed.py under ``torchrun``: ``kge_sharded.py GRAPH OUT CONFIG_JSON``."""

import json
import sys

from ntulm.kge.config import KGEConfig
from ntulm.kge.train import train_kge


class Killed(Exception):
    pass


def crash(epoch: int) -> None:
    if epoch == 1:
        raise Killed


if __name__ == "__main__":
    graph, out, cfg = sys.argv[1], sys.argv[2], KGEConfig(**json.loads(sys.argv[3]))
    try:
        train_kge(graph, out, cfg, progress=False, on_epoch_end=crash)
        raise SystemExit("the run was not interrupted")
    except Killed:
        pass
    train_kge(graph, out, cfg, resume=True, progress=False)
