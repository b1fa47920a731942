"""Stage 3: NTU embeddings. TwHIN-style translation embeddings of the user-hashtag graph
(paper §3.1, Eq. 1-2): one table per node type, one translation vector per relation,
f(u, r, v) = u·(v + r), trained with in-batch + uniform negatives and row-wise Adagrad."""

from ntulm.kge.config import KGEConfig, RelationConfig
from ntulm.kge.embeddings import NTUEmbeddings

__all__ = ["KGEConfig", "NTUEmbeddings", "RelationConfig", "train_kge"]


def train_kge(*args, **kwargs):  # thin lazy re-export
    """See :func:`ntulm.kge.train.train_kge` (imported lazily: it pulls in torch)."""
    from ntulm.kge.train import train_kge as _train

    return _train(*args, **kwargs)
