"""Training: AdamW + cosine schedule, AMP on CUDA, early stopping on validation AUC, fixed seeds."""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from factory_core.config import FactoryConfig, Family
from factory_core.errors import BadInput
from factory_core.families import spec

from .evaluate import backtest, classification_metrics, net_backtest
from .models import build_model, positive_probability

if TYPE_CHECKING:  # pandas stays out of the training loop (benchmarks/trainer_speed.py runs it without pandas)
    from .datasets import FamilyData, Split

log = logging.getLogger(__name__)


class NonFiniteLossError(BadInput, ValueError):
    """Training diverged to NaN/inf (bad input: features out of range, or train.lr too high; no retry)."""


@dataclass
class TrainOutcome:
    model: nn.Module
    metrics: dict[str, float]
    history: list[dict[str, float]]
    epochs: int
    device: str
    seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch: int = 2048, device: torch.device | None = None) -> np.ndarray:
    """Model ``prob`` output for ``x`` in eval mode, as float32 numpy."""
    device = device or next(model.parameters()).device
    model.eval()
    out = [model(torch.from_numpy(x[i : i + batch]).to(device)).float().cpu().numpy()
           for i in range(0, len(x), batch)]
    return np.concatenate(out)


def evaluate_split(family: Family, prob: np.ndarray, split: Split, threshold: float) -> dict[str, float]:
    """Family metrics of model outputs ``prob`` on ``split``."""
    p = np.asarray(positive_probability(family, prob))
    metrics = classification_metrics(split.y, p, threshold)
    if spec(family).backtest:
        metrics.update(backtest(p, split.fwd_ret_bps, split.ts))
    return metrics


def net_backtest_of(family: Family, prob: np.ndarray, data: FamilyData, cfg: FactoryConfig) -> dict[str, float]:
    """The test window's direction backtest net of ``cfg.backtest`` costs.

    The quoted spread at each window's last tick (feature ``spread_bps``) is the spread a trade crosses unless
    ``backtest.half_spread_bps`` fixes it; the expected move is the mean |forward return| of the validation split,
    which ends before the test window begins.
    """
    bt = cfg.backtest
    spread = data.test.x[:, -1, data.feature_names.index("spread_bps")]
    move = float(np.nanmean(np.abs(data.val.fwd_ret_bps)))
    return net_backtest(positive_probability(family, prob), data.test.fwd_ret_bps, data.test.ts, spread, move,
                        fee_bps=bt.fee_bps, half_spread_bps=bt.half_spread_bps)


def _loss(family: Family, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if spec(family).classes == 2:
        return nn.functional.cross_entropy(logits.float(), y.long())
    return nn.functional.binary_cross_entropy_with_logits(logits.float().squeeze(-1), y)


def fit_epoch(family: Family, model: nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
              scaler: torch.amp.GradScaler, x_train: torch.Tensor, y_train: torch.Tensor, batch_size: int,
              gen: torch.Generator, epoch: int) -> float:
    """One pass over the training set in a seeded random order, on the model's device (float16 autocast when the
    scaler is enabled: AMP on CUDA); the mean training loss. A non-finite loss is bad input, named."""
    device = next(model.parameters()).device
    use_amp = scaler.is_enabled()
    model.train()
    perm = torch.randperm(len(x_train), generator=gen)
    total, seen = 0.0, 0
    for i in range(0, len(perm), batch_size):
        idx = perm[i : i + batch_size]
        xb, yb = x_train[idx].to(device, non_blocking=True), y_train[idx].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            loss = _loss(family, model.logits(xb), yb)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        value = float(loss.detach())
        if not np.isfinite(value):
            raise NonFiniteLossError(
                f"{family}: training loss is {value} at epoch {epoch}, batch {i // batch_size + 1}: the "
                f"features hold values the model cannot fit (check the lake partitions of the night) or "
                f"train.lr={opt.param_groups[0].get('initial_lr', opt.param_groups[0]['lr'])} is too high")
        total += value * len(idx)
        seen += len(idx)
    return total / seen


def train_family(family: Family, data: FamilyData, cfg: FactoryConfig) -> TrainOutcome:
    """Train one family on ``data.train``, early-stop on ``data.val``, report on ``data.test``."""
    tc, fam = cfg.train, cfg.families[family]
    seed_everything(tc.seed)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = pick_device(tc.device)
    model = build_model(family, fam, data.train.x.shape[-1])
    model.norm.fit(torch.from_numpy(data.train.x))
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = max(1, int(np.ceil(len(data.train) / tc.batch_size)))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=tc.max_epochs * steps_per_epoch)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    x_train = torch.from_numpy(data.train.x)
    y_train = torch.from_numpy(data.train.y)
    gen = torch.Generator().manual_seed(tc.seed)

    best_auc, best_state, best_epoch, stale = -1.0, None, 0, 0
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for epoch in range(1, tc.max_epochs + 1):
        train_loss = fit_epoch(family, model, opt, sched, scaler, x_train, y_train, tc.batch_size, gen, epoch)
        val = evaluate_split(family, predict(model, data.val.x), data.val, fam.threshold)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_auc": val["auc"]})
        log.info("%s epoch %d/%d  train_loss %.4f  val_auc %.4f", family, epoch, tc.max_epochs, train_loss,
                 val["auc"])
        score = val["auc"] if np.isfinite(val["auc"]) else 0.0
        if best_state is None or score > best_auc + 1e-4:
            best_auc, best_state, best_epoch, stale = score, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= tc.patience:
                log.info("%s early stop at epoch %d (best %d, val_auc %.4f)", family, epoch, best_epoch, best_auc)
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    p_test = predict(model, data.test.x)
    metrics = evaluate_split(family, p_test, data.test, fam.threshold)
    metrics["val_auc"] = best_auc
    if spec(family).backtest:
        metrics.update(net_backtest_of(family, p_test, data, cfg))
    return TrainOutcome(model.cpu(), metrics, history, best_epoch, device.type, time.perf_counter() - start)
