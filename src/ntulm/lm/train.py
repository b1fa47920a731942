"""MLM fine-tuning of NTULM and of its no-NTU baseline (paper §3.2), a lean loop:

- a held-out split by post (seeded); held-out masks fixed once, so every model evaluated on the
  same posts is scored on the identical masked positions (perplexity in bits, Table 2);
- if the backbone had no MLM head, ``head_warmup_steps`` head-only steps with the encoder frozen;
- AdamW with linear warm-up/decay, dynamic padding, length-grouped batches (``group_by_length``),
  the MLM head applied only at masked positions;
- bfloat16 autocast where the device has native bf16 (``train_dtype``): matmuls run in bf16, the
  weights, gradients and AdamW state stay float32; held-out bits are always scored in float32;
- evaluation each epoch, early stopping, the best epoch saved to ``out_dir``;
- an atomic checkpoint every ``checkpoint_every`` steps and per epoch. Batch order, masking and
  dropout are seeded per epoch / per step, so ``resume=True`` reaches the same weights. The
  checkpoint holds tensors and plain values only and is loaded with ``weights_only=True``.

Beyond the paper (off by default): ``ntu_dropout`` hides NTUs per step (seeded by the step, so
resume stays exact); ``social_weight > 0`` adds the NT-Xent loss of ``lm/social.py`` over mined
positive partners of the batch's posts (text-only view; with ``pooling_gate`` also the gated
view, which is what trains the gate).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ntulm import distributed
from ntulm.artifacts import (
    atomic_path,
    is_done,
    mark_done,
    output_lock,
    read_json,
    unmark,
    write_json,
)
from ntulm.errors import ConfigError
from ntulm.lm.config import CHECKPOINT, LMConfig, resolve_dtype
from ntulm.lm.data import (
    finetune_ntu_inputs,
    fixed_eval_masks,
    length_grouped_batches,
    mask_tokens,
    pad,
    tokenize,
    training_batches,
)
from ntulm.lm.encode import pool
from ntulm.lm.fusion import drop_ntus
from ntulm.lm.model import NTULM, STAGE
from ntulm.lm.social import mine_pairs, nt_xent, pick_partners, text_embeddings
from ntulm.memory import TRIM_EVERY, trim

if TYPE_CHECKING:
    from ntulm.kge import NTUEmbeddings
    from ntulm.posts import Post

log = logging.getLogger(__name__)

RESULT = "train_result.json"


@dataclass
class FinetuneResult:
    out_dir: str
    use_ntu: bool
    n_train: int
    n_eval: int
    steps: int = 0
    epochs: int = 0
    head_warmup_steps: int = 0
    eval_bits: list[float] = field(default_factory=list)  # per epoch
    best_eval_bits: float = math.inf
    initial_eval_bits: float = math.inf  # before fine-tuning (after the head warm-up)
    train_tokens: int = 0
    train_seconds: float = 0.0
    overlap_train: float = 0.0  # fraction of posts with at least one known NTU
    overlap_eval: float = 0.0
    train_dtype: str = "float32"  # the resolved compute dtype of the fine-tuning steps
    social_posts: float = 0.0  # fraction of training posts with mined positives (social_weight)
    train_loss: list[float] = field(default_factory=list)  # loss of each step's global batch
    world_size: int = 1  # processes that trained it (data-parallel under torchrun)
    peak_rss_mb: list[float] = field(default_factory=list)  # per process (rank order)
    # [step, training tokens seen, held-out bits]: before fine-tuning, every eval_every steps and
    # after each epoch
    eval_curve: list[list[float]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.train_tokens / self.train_seconds if self.train_seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


def split_posts(n: int, cfg: LMConfig) -> tuple[np.ndarray, np.ndarray]:
    """Seeded held-out split by post: (train indices, eval indices)."""
    n_eval = min(cfg.eval_max_posts, max(1, round(cfg.eval_fraction * n)))
    if n - n_eval < 1:
        raise ConfigError(f"posts: {n} post(s) are too few to hold out {n_eval} for evaluation")
    perm = np.random.default_rng(cfg.seed).permutation(n)
    return np.sort(perm[n_eval:]), np.sort(perm[:n_eval])


def _batch(
    model: NTULM, seqs: Sequence[np.ndarray], e_ntu: np.ndarray | None, device: torch.device
):
    ids, mask = pad(seqs, model.tokenizer.pad_token_id)
    e = torch.from_numpy(e_ntu).to(device) if e_ntu is not None and model.use_ntu else None
    return ids.to(device), mask.to(device), e


@torch.no_grad()
def evaluate_bits(
    model: NTULM,
    masks: Sequence[tuple[np.ndarray, np.ndarray]],
    e_ntu: np.ndarray | None,
    batch_size: int = 64,
) -> float:
    """Mean masked-token cross-entropy in bits (log2 perplexity) over fixed held-out masks.

    Under torchrun each rank scores every W-th batch and the sums are all-reduced."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    lengths = np.array([len(m) for m, _ in masks])
    rank, world = _rank_world()
    for idx in length_grouped_batches(lengths, batch_size)[rank::world]:
        ids, mask, e = _batch(
            model, [masks[i][0] for i in idx], e_ntu[idx] if e_ntu is not None else None, device
        )
        labels, _ = pad([masks[i][1] for i in idx], -100)
        labels = labels.to(device)
        if not (labels != -100).any():
            continue
        loss, n = model.mlm_loss(ids, mask, labels, e)
        total += float(loss) * n
        count += n
    model.train(was_training)
    if world > 1:
        sums = torch.tensor([total, count], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(sums)
        total, count = float(sums[0]), int(sums[1])
    return total / count / math.log(2) if count else math.nan


def _rank_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _MLMStep(torch.nn.Module):
    """``NTULM.mlm_loss`` as a ``forward``, so DistributedDataParallel can wrap it."""

    def __init__(self, model: NTULM):
        super().__init__()
        self.model = model

    def forward(self, ids, mask, labels, e):  # noqa: ANN001, ANN201
        return self.model.mlm_loss(ids, mask, labels, e)[0]


def _data_parallel(model: NTULM, device: torch.device) -> torch.nn.Module:
    """DDP over the MLM step: gradients averaged over the ranks in backward. Parameters a step
    leaves unused (BERT's pooler, an absent type's NTU vector) are allowed."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(_MLMStep(model), device_ids=ids, find_unused_parameters=True)


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``dtype="bfloat16"`` (matmuls in bf16, reductions and the loss in
    float32; the float32 weights are cast on the fly, so gradients reach them in float32)."""
    if dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _optimizer(model: NTULM, cfg: LMConfig) -> torch.optim.Optimizer:
    """AdamW, weight decay on matrices only; ``cfg.ntu_lr`` (when set) is the learning rate of the
    NTU projection(s), in groups of their own that the schedule scales like the rest."""
    ntu = {id(p) for p in model.ntu_parameters()} if cfg.ntu_lr is not None else set()
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            no_decay = p.ndim < 2 or "LayerNorm" in name or "norm" in name.lower()
            groups.setdefault((id(p) in ntu, no_decay), []).append(p)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                "lr": cfg.ntu_lr if is_ntu else cfg.lr,
            }
            for (is_ntu, no_decay), params in sorted(groups.items())
        ],
        lr=cfg.lr,
    )


@contextlib.contextmanager
def _frozen(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """``requires_grad`` off for ``params`` inside the block, on again after it (also on error)."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _head_warmup(
    model: NTULM,
    cfg: LMConfig,
    tokens: list[np.ndarray],
    e_ntu,
    device,
    steps: int,
    dtype: str = "float32",
) -> None:
    """Train only the new MLM head (its transform and bias; the decoder is the frozen word
    embeddings) with the encoder frozen: a fresh head learns much faster this way. With
    ``cfg.ntu_warmup`` the NTU projection(s) train too: the gradient runs back through the frozen
    encoder (its weights get none) to the NTU token."""
    tied = {id(model.base.embeddings.word_embeddings.weight)}
    params = [p for p in model.head.parameters() if id(p) not in tied]
    through_encoder = bool(cfg.ntu_warmup and model.use_ntu and e_ntu is not None)
    frozen = [p for p in model.base.parameters() if p.requires_grad] if through_encoder else []
    if through_encoder:
        params += model.ntu_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.head_warmup_lr)
    lengths = np.array([len(t) for t in tokens])
    rng = np.random.default_rng([cfg.seed, 7])
    batches: list[np.ndarray] = []
    bar = tqdm(total=steps, desc="head warm-up", disable=not cfg.progress, unit="step")
    with _frozen(frozen):
        for step in range(steps):
            if not batches:
                batches = training_batches(lengths, cfg, rng)
            idx = batches.pop()
            torch.manual_seed(cfg.seed * 1_000_003 - step - 1)
            ids, mask, e = _batch(
                model, [tokens[i] for i in idx], e_ntu[idx] if e_ntu is not None else None, device
            )
            gen = torch.Generator().manual_seed(cfg.seed * 7_919 - step - 1)
            masked, labels = mask_tokens(
                ids.cpu(), mask.cpu(), model.tokenizer, cfg.mlm_probability, gen
            )
            if not (labels != -100).any():
                continue
            with _autocast(device, dtype):
                loss, _ = model.mlm_loss(
                    masked.to(device), mask, labels.to(device), e, encoder_grad=through_encoder
                )
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            bar.update()
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    bar.close()


def _social_loss(
    model: NTULM,
    cfg: LMConfig,
    pairs: np.ndarray,
    idx: np.ndarray,
    tokens: Sequence[np.ndarray],
    e_ntu: np.ndarray | None,
    rng: np.random.Generator,
    device: torch.device,
) -> torch.Tensor | None:
    """NT-Xent over the batch's posts and one mined positive each (None under two pairs): on the
    text-only embeddings, plus on the gated embeddings when the model has a pooling gate."""
    anchors, partners = pick_partners(pairs, idx, rng)
    if len(anchors) < 2:
        return None
    both = np.concatenate([anchors, partners])
    ids, mask, e = _batch(model, [tokens[i] for i in both], None, device)
    z = text_embeddings(model, ids, mask)  # (2B, H)
    n = len(anchors)
    loss = nt_xent(z[:n], z[n:], cfg.social_temperature)
    if model.gate is not None:
        assert e_ntu is not None
        ids, mask, e = _batch(model, [tokens[i] for i in both], e_ntu[both], device)
        hidden, full = model.hidden_states(ids, mask, e)
        g = pool(model, hidden, full, ids.shape[1], "gate")
        loss = loss + nt_xent(g[:n], g[n:], cfg.social_temperature)
    return loss


def _run_key(cfg: LMConfig, dtype: str) -> str:
    """What a checkpoint must match to be resumed: the config (less display and thread
    settings) and the resolved dtype."""
    keep = cfg.model_dump(mode="json", exclude={"progress", "num_threads"})
    return json.dumps({"config": keep, "dtype": dtype}, sort_keys=True)


def finetune(
    posts: Sequence[Post],
    cfg: LMConfig,
    out_dir: str | Path,
    ntu: NTUEmbeddings | None = None,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> FinetuneResult:
    """Fine-tune on ``posts`` and save the best epoch to ``out_dir``; see the module docstring.
    The run owns ``out_dir`` (:func:`~ntulm.artifacts.output_lock`); it is marked finished last."""
    # the artifact's writer owns the directory (rank 0 under torchrun)
    with output_lock(out_dir) if distributed.writer() else contextlib.nullcontext():
        return _finetune(posts, cfg, Path(out_dir), ntu, resume, on_step)


def _finetune(
    posts: Sequence[Post],
    cfg: LMConfig,
    out: Path,
    ntu: NTUEmbeddings | None,
    resume: bool,
    on_step: Callable[[int], None] | None,
) -> FinetuneResult:
    if resume and is_done(out, STAGE, cfg.model_dump(mode="json")) and (out / RESULT).exists():
        log.info("%s: already finished, nothing to resume", out)
        saved = read_json(out / RESULT)
        saved.pop("tokens_per_s", None)
        return FinetuneResult(**saved)
    if cfg.use_ntu and ntu is None:
        raise ConfigError("use_ntu=true needs NTU embeddings (--ntu DIR), or use --no-ntu")
    if cfg.social_weight > 0 and ntu is None:
        raise ConfigError("social_weight > 0 needs NTU embeddings (--ntu DIR) to mine pairs")
    unmark(out)  # a model saved after an epoch is not a finished one
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = torch.device(
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if cfg.device == "auto"
        else cfg.device
    )
    if distributed.launched():  # data-parallel: torchrun started one process per device
        if cfg.social_weight > 0:
            raise ConfigError(
                "social_weight > 0 is not supported with several processes yet (its second "
                "forward pass bypasses DistributedDataParallel); train it in one process"
            )
        if device.type == "cuda":
            device = torch.device("cuda", distributed.local_rank())
            torch.cuda.set_device(device)
        distributed.init(distributed.backend_for(device.type))
    rank, world = _rank_world()
    dtype = resolve_dtype(cfg.train_dtype, device.type)
    log.info("fine-tuning on %s in %s (train_dtype=%s)", device, dtype, cfg.train_dtype)
    torch.manual_seed(cfg.seed)
    model, head_new = NTULM.from_backbone(cfg, ntu.dim if ntu is not None else None)
    model.ntu = ntu
    model.to(device)

    # -- data: tokens, e_ntu and overlap flag per post, computed once
    posts = list(posts[: cfg.max_posts] if cfg.max_posts else posts)
    tokens = tokenize([p.text for p in posts], model.tokenizer, cfg.max_length, cfg.text)
    if ntu is not None:
        e_all, overlap = finetune_ntu_inputs(posts, ntu, cfg)
    else:
        e_all, overlap = None, np.zeros(len(posts), dtype=bool)
    tr, ev = split_posts(len(posts), cfg)
    train_tok = [tokens[i] for i in tr]
    e_tr = e_all[tr] if e_all is not None else None
    e_ev = e_all[ev] if e_all is not None else None
    pairs = None
    if cfg.social_weight > 0:
        assert ntu is not None
        pairs = mine_pairs(
            [posts[i] for i in tr], ntu, cfg.ntu_types, cfg.social_k, cfg.social_exact_max
        )
    ntu_mean = np.asarray(ntu.mean, dtype=np.float32) if ntu is not None else None
    eval_masks = fixed_eval_masks(
        [tokens[i] for i in ev], model.tokenizer, cfg.mlm_probability, cfg.seed
    )
    res = FinetuneResult(
        str(out),
        cfg.use_ntu,
        len(tr),
        len(ev),
        overlap_train=float(overlap[tr].mean()),
        overlap_eval=float(overlap[ev].mean()),
        train_dtype=dtype,
        social_posts=float((pairs[:, 0] >= 0).mean()) if pairs is not None and len(tr) else 0.0,
        world_size=world,
    )
    log.info(
        "%d training posts, %d held out; NTU overlap %.1f%% / %.1f%%",
        len(tr),
        len(ev),
        100 * res.overlap_train,
        100 * res.overlap_eval,
    )

    lengths = np.array([len(t) for t in train_tok])
    per_epoch = math.ceil(len(tr) / cfg.batch_size)
    total = (
        per_epoch * cfg.max_epochs
        if not cfg.max_steps
        else min(cfg.max_steps, per_epoch * cfg.max_epochs)
    )
    warm = int(cfg.warmup_ratio * total)
    opt = _optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / (warm + 1) if s < warm else max(0.0, (total - s) / max(1, total - warm))
        ),
    )
    state: dict[str, Any] = {
        "epoch": 0,
        "batch": 0,
        "step": 0,
        "bad": 0,
        "stopped": False,
        "result": res.to_json(),
    }
    ckpt = out / CHECKPOINT
    run_key = _run_key(cfg, dtype)
    for orphan in out.glob(f".{CHECKPOINT}.*.tmp") if rank == 0 else ():  # a killed save's
        log.info("removing unfinished checkpoint %s", orphan)
        orphan.unlink(missing_ok=True)
    if resume and ckpt.exists():
        saved = torch.load(ckpt, map_location=device, weights_only=True)
        if saved.get("run") != run_key:
            raise ConfigError(
                f"{ckpt}: made with another configuration or dtype; resume with the same "
                "config, or delete the checkpoint to start again"
            )
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        state = saved["state"]
        for k in (
            "steps",
            "epochs",
            "head_warmup_steps",
            "eval_bits",
            "best_eval_bits",
            "initial_eval_bits",
            "train_tokens",
            "train_seconds",
            "train_loss",
            "eval_curve",
        ):
            setattr(res, k, state["result"].get(k, getattr(res, k)))
        log.info("resuming from %s at step %d (epoch %d)", ckpt, state["step"], state["epoch"])
    else:
        if resume:
            log.warning("%s: no checkpoint, starting from scratch", ckpt)
        if cfg.ntu_warmup and not (head_new and cfg.head_warmup_steps):
            log.warning(
                "ntu_warmup: no head warm-up runs (the backbone has an MLM head or "
                "head_warmup_steps is 0), so the NTU projection starts untrained"
            )
        if head_new and cfg.head_warmup_steps:
            _head_warmup(model, cfg, train_tok, e_tr, device, cfg.head_warmup_steps, dtype)
            res.head_warmup_steps = cfg.head_warmup_steps
        res.initial_eval_bits = evaluate_bits(model, eval_masks, e_ev, cfg.batch_size * 2)
        log.info("held-out before fine-tuning: %.4f bits", res.initial_eval_bits)
        res.eval_curve.append([0, 0, res.initial_eval_bits])

    def save_checkpoint() -> None:
        if rank != 0:  # the ranks hold the same weights and optimizer state: rank 0 writes
            return
        state["result"] = res.to_json()
        payload = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "state": state,
            "run": run_key,
        }
        with atomic_path(ckpt) as tmp:
            torch.save(payload, tmp)

    model.train()
    step_module = _data_parallel(model, device) if world > 1 else None
    loss = torch.tensor(math.nan)
    bar = tqdm(
        total=total,
        initial=state["step"],
        desc="fine-tune",
        disable=not cfg.progress or rank != 0,
        unit="step",
    )
    while not state["stopped"] and state["epoch"] < cfg.max_epochs and state["step"] < total:
        epoch = state["epoch"]
        batches = training_batches(lengths, cfg, np.random.default_rng([cfg.seed, epoch]))
        while state["batch"] < len(batches) and state["step"] < total:
            t0 = time.perf_counter()
            idx, step = batches[state["batch"]], state["step"]
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout, reproducible on resume
            e_np = e_tr[idx] if e_tr is not None else None
            if e_np is not None and cfg.ntu_dropout > 0:
                rng = np.random.default_rng([cfg.seed, 17, step])
                e_np = drop_ntus(e_np, cfg.ntu_dropout, rng, ntu_mean)
            ids, mask, e = _batch(model, [train_tok[i] for i in idx], e_np, device)
            gen = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
            masked, labels = mask_tokens(
                ids.cpu(), mask.cpu(), model.tokenizer, cfg.mlm_probability, gen
            )
            if (labels != -100).any() and step_module is not None:
                # The global batch is masked as one process masks it; each rank takes its rows.
                loss = _data_parallel_step(step_module, masked, mask, labels, e, device, dtype)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                res.train_loss.append(float(loss))
            elif (labels != -100).any():
                with _autocast(device, dtype):
                    loss, _ = model.mlm_loss(masked.to(device), mask, labels.to(device), e)
                    if pairs is not None:
                        rng = np.random.default_rng([cfg.seed, 23, step])
                        social = _social_loss(model, cfg, pairs, idx, train_tok, e_tr, rng, device)
                        if social is not None:
                            loss = loss + cfg.social_weight * social
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                res.train_loss.append(float(loss.detach()))
            sched.step()
            state["batch"] += 1
            state["step"] += 1
            res.steps = state["step"]
            res.train_tokens += int(mask.sum())
            res.train_seconds += time.perf_counter() - t0
            bar.update()
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", tok_s=f"{res.tokens_per_s:.0f}")
            at_end = state["batch"] == len(batches) or state["step"] == total
            if cfg.eval_every and state["step"] % cfg.eval_every == 0 and not at_end:
                bits = evaluate_bits(model, eval_masks, e_ev, cfg.batch_size * 2)
                res.eval_curve.append([state["step"], res.train_tokens, bits])
                log.info("step %d: held-out %.4f bits", state["step"], bits)
            if cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0:
                save_checkpoint()
            if state["step"] % TRIM_EVERY == 0:
                trim()  # freed activations of other batch shapes back to the OS (memory.py)
            if on_step is not None:
                on_step(state["step"])
        # -- end of epoch (or of the step budget): evaluate, keep the best, maybe stop
        bits = evaluate_bits(model, eval_masks, e_ev, cfg.batch_size * 2)
        res.eval_bits.append(bits)
        res.eval_curve.append([state["step"], res.train_tokens, bits])
        res.epochs = epoch + 1
        log.info("epoch %d: held-out %.4f bits (step %d)", epoch + 1, bits, state["step"])
        if bits < res.best_eval_bits - 1e-6:
            res.best_eval_bits, state["bad"] = bits, 0
            if rank == 0:
                model.save(out, done=False)
        else:
            state["bad"] += 1
            if state["bad"] >= cfg.patience:
                log.info("early stopping: no improvement for %d epoch(s)", state["bad"])
                state["stopped"] = True
        state["epoch"], state["batch"] = epoch + 1, 0
        save_checkpoint()
    bar.close()

    res.peak_rss_mb = [distributed.peak_rss_mb()]
    if world > 1:
        res.peak_rss_mb = [0.0] * world
        torch.distributed.all_gather_object(res.peak_rss_mb, distributed.peak_rss_mb())
    if rank == 0:
        write_json(out / RESULT, res.to_json())
        mark_done(
            out,
            STAGE,
            cfg.model_dump(mode="json"),
            best_eval_bits=res.best_eval_bits,
            steps=res.steps,
        )
        ckpt.unlink(missing_ok=True)
        shutil.rmtree(out / "tmp", ignore_errors=True)
    if world > 1:
        torch.distributed.barrier()  # no rank returns before the artifact is finished
    return res


def _data_parallel_step(
    step_module: torch.nn.Module,
    masked: torch.Tensor,  # (B, T) the global batch, masked
    mask: torch.Tensor,  # (B, T)
    labels: torch.Tensor,  # (B, T)
    e: torch.Tensor | None,  # (B, D) or (B, K, D)
    device: torch.device,
    dtype: str,
) -> torch.Tensor:
    """Forward and backward of this rank's rows of the global batch; returns the global loss.

    The loss is the mean over the global batch's masked tokens, as in one process: a rank's
    mean over its ``n_r`` of the ``N`` targets is scaled by ``n_r·W / N`` before backward, so
    DDP's average over the W ranks is the gradient of the global mean (an unscaled average of
    the ranks' means would weight tokens unequally)."""
    rank, world = _rank_world()
    rows = torch.tensor_split(torch.arange(masked.shape[0]), world)[rank]
    own = len(rows) > 0
    rows = rows if own else torch.arange(1)  # a batch smaller than W: row 0 at weight 0
    n_all = int((labels != -100).sum())
    lab = labels[rows].to(device)
    n_mine = int((lab != -100).sum()) if own else 0
    inputs, attn = masked[rows].to(device), mask[rows]
    e_mine = None if e is None else e[rows]
    scale = n_mine * world / n_all
    if not (lab != -100).any():  # no targets here: one dummy target (weight 0), so that the
        lab[0, 0] = inputs[0, 0]  # rank still joins DDP's gradient all-reduce
    with _autocast(device, dtype):
        loss = step_module(inputs, attn, lab, e_mine)
        scaled = loss * scale
    scaled.backward()
    total = (loss.detach().float() * n_mine).reshape(1)
    torch.distributed.all_reduce(total)
    return total[0] / n_all
