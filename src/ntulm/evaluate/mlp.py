"""The paper's downstream model (§4.3, appendix B): a 2-layer MLP on frozen post embeddings,
Linear(d, d) -> tanh -> Linear(d, C), softmax (cross-entropy) or sigmoid per label (BCE) for
multi-label tasks; Adam; mini-batches; early stopping on the validation split.

The same hyperparameters serve every model compared (:class:`~ntulm.evaluate.config.MLPConfig`).
Inputs are z-scored with the train split's mean and std by default: BERT-post-concat joins LM
states and NTU vectors of different scales, and one learning rate should suit both.
Training is deterministic for a seed: weights and batch order come from a forked torch RNG, so
the caller's global RNG state is untouched.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ntulm.evaluate.config import MLPConfig

log = logging.getLogger(__name__)

# (y_val, proba_val) -> score, higher is better; None when undefined on this split
ScoreFn = Callable[[np.ndarray, np.ndarray], "float | None"]


class MLP(nn.Module):
    def __init__(self, d_in: int, n_out: int, hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        hidden = hidden or d_in
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, n_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, d) -> (B, C) logits
        return self.net(x)


@dataclass
class FittedMLP:
    """A trained MLP with its input standardisation; ``predict_proba`` gives (N, C) float64."""

    model: MLP
    mean: np.ndarray
    std: np.ndarray
    multilabel: bool
    best_epoch: int
    history: list[dict[str, float | None]] = field(default_factory=list)

    @torch.inference_mode()
    def predict_proba(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        self.model.eval()
        out = []
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(_scale(x[start : start + batch_size], self.mean, self.std))
            logits = self.model(xb)
            out.append(torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, -1))
        if not out:
            return np.zeros((0, self.model.net[-1].out_features))
        return torch.cat(out).double().numpy()


def _scale(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, dtype=np.float32) - mean) / std).astype(np.float32)


def _loss_fn(multilabel: bool) -> nn.Module:
    return nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()


def _target(y: np.ndarray, multilabel: bool) -> torch.Tensor:
    return torch.as_tensor(y, dtype=torch.float32 if multilabel else torch.long)


def train_mlp(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    config: MLPConfig,
    seed: int,
    multilabel: bool = False,
    score_fn: ScoreFn | None = None,
) -> FittedMLP:
    """Train on (x_train (N, d), y_train) and keep the epoch that scored best on validation.

    With ``config.early_stopping == "metric"`` and a ``score_fn``, an epoch is better when its
    validation score is higher, or equal with a lower validation loss; otherwise (or when the
    score is undefined) lower validation loss alone decides. Training stops after
    ``config.patience`` epochs without a better epoch. Without validation posts, all
    ``max_epochs`` are run and the last epoch is kept.
    """
    x_train = np.asarray(x_train, dtype=np.float32)
    if config.standardize:
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        std = np.where(std > 1e-6, std, 1.0).astype(np.float32)  # constant features stay put
    else:
        mean = np.zeros(x_train.shape[1], dtype=np.float32)
        std = np.ones(x_train.shape[1], dtype=np.float32)
    xt = torch.from_numpy(_scale(x_train, mean, std))  # (N, d)
    yt = _target(y_train, multilabel)
    has_val = len(x_val) > 0
    xv = torch.from_numpy(_scale(x_val, mean, std)) if has_val else None
    yv = _target(y_val, multilabel) if has_val else None
    loss_fn = _loss_fn(multilabel)
    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MLP(xt.shape[1], n_classes, config.hidden, config.dropout)
            gen = torch.Generator().manual_seed(seed)
            opt = torch.optim.Adam(
                model.parameters(), lr=config.lr, weight_decay=config.weight_decay
            )
            best: tuple[float, float] | None = None
            best_state, best_epoch, stale = None, 0, 0
            history: list[dict[str, float | None]] = []
            for epoch in range(1, config.max_epochs + 1):
                model.train()
                total = 0.0
                for idx in torch.randperm(len(xt), generator=gen).split(config.batch_size):
                    loss = loss_fn(model(xt[idx]), yt[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += loss.item() * len(idx)
                record: dict[str, float | None] = {"epoch": epoch, "train_loss": total / len(xt)}
                if not has_val:
                    history.append(record)
                    continue
                model.eval()
                with torch.inference_mode():
                    logits = model(xv)
                    val_loss = float(loss_fn(logits, yv))
                    proba = torch.sigmoid(logits) if multilabel else torch.softmax(logits, -1)
                score = None
                if config.early_stopping == "metric" and score_fn is not None:
                    score = score_fn(y_val, proba.double().numpy())
                record.update(val_loss=val_loss, val_score=score)
                history.append(record)
                key = (score if score is not None and not math.isnan(score) else 0.0, -val_loss)
                if best is None or key > best:
                    best, best_epoch, stale = key, epoch, 0
                    best_state = {k: v.clone() for k, v in model.state_dict().items()}
                else:
                    stale += 1
                    if stale >= config.patience:
                        break
            if best_state is not None:
                model.load_state_dict(best_state)
            else:
                best_epoch = len(history)
    finally:
        torch.set_num_threads(threads)
    log.debug("MLP: best epoch %d of %d", best_epoch, len(history))
    return FittedMLP(model, mean, std, multilabel, best_epoch, history)
