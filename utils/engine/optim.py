"""The official optimiser and learning-rate schedule (upstream `utils/init_func.py`, `utils/lr_policy.py`).

Parameters in neither of the two groups stay frozen, as upstream: DFormer's layer scales and
`FrozenLayerNorm`, DFormerv2's `gamma_1/2` and `Geo.weight`.
"""
import math

import jittor as jt
import numpy as np
from jittor import nn

from models import kernels
from models.kernels import ops as cpu_ops
from models.batchnorm import SyncBatchNorm
from utils.errors import UserError
from utils.jittor_private import adamw_slots, moments


def group_weight(model, syncbn=True):
    """(decay, no_decay) parameters by module type, as upstream's `group_weight`, whose norm type is
    `nn.SyncBatchNorm` under `--syncbn` and `nn.BatchNorm2d` under `--no-syncbn`: then DFormerv2's
    `SyncBatchNorm`s are in neither group."""
    decay, no_decay = [], []
    for module in model.modules():
        if isinstance(module, SyncBatchNorm) and not syncbn:
            continue
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            decay.append(module.weight)
            if module.bias is not None:
                no_decay.append(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
            no_decay.extend([module.weight, module.bias])
    return decay, no_decay


class AdamW(jt.optim.AdamW):
    """Jittor's AdamW (`torch.optim.AdamW`'s update) whose `n_step`, which sets Adam's bias correction,
    counts `step()` calls as PyTorch's does; Jittor's counts `backward()` calls, several per accumulated step."""

    def backward(self, loss, retain_graph=False):
        n_step = self.n_step
        super().backward(loss, retain_graph)
        self.n_step = n_step

    def step(self, loss=None, retain_graph=False):
        if loss is not None:
            self.backward(loss, retain_graph)
        self.n_step += 1
        if not kernels.enabled():
            return super().step()
        self.pre_step(None)  # the CPU: the same update in one multi-threaded kernel per parameter
        n = float(self.n_step)
        for group in self.param_groups:
            lr, eps = group.get("lr", self.lr), group.get("eps", self.eps)
            weight_decay = group.get("weight_decay", self.weight_decay)
            b0, b1 = group.get("betas", self.betas)
            scalars = jt.array(np.array([1 - lr * weight_decay, b0, 1 - b0, b1, 1 - b1, math.sqrt(1 - b1 ** n),
                                         lr / (1 - b0 ** n), eps], dtype=np.float32))
            for p, g, v, m in adamw_slots(group):
                if p.is_stop_grad():
                    continue
                new_p, new_m, new_v = cpu_ops.adamw_update(p, g, m, v, scalars)
                p.update(new_p)
                m.update(new_m)
                v.update(new_v)
        self.post_step()


def build_optimizer(model, C, syncbn=True):
    decay, no_decay = group_weight(model, syncbn)
    groups = [dict(params=decay, lr=C.lr), dict(params=no_decay, lr=C.lr, weight_decay=0.0)]
    if C.optimizer == "AdamW":
        return AdamW(groups, lr=C.lr, betas=(0.9, 0.999), weight_decay=C.weight_decay)
    if C.optimizer == "SGDM":
        return jt.optim.SGD(groups, lr=C.lr, momentum=C.momentum, weight_decay=C.weight_decay)
    raise ValueError(f"C.optimizer must be 'AdamW' or 'SGDM' (upstream's two), not {C.optimizer!r}")


class WarmUpPolyLR:
    """Linear warm-up to `base_lr`, then poly decay with power `power` to 0 at `total_iters`."""

    def __init__(self, base_lr, power, total_iters, warmup_iters):
        self.base_lr, self.power = base_lr, power
        self.total_iters, self.warmup_iters = float(total_iters), warmup_iters

    def get_lr(self, iteration):
        if iteration < self.warmup_iters:
            return self.base_lr * iteration / self.warmup_iters
        return self.base_lr * (1 - iteration / self.total_iters) ** self.power


def set_lr(optimizer, lr):
    """Write `lr` into every group (a group's own "lr" hides `optimizer.lr` in Jittor)."""
    optimizer.lr = lr
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_state(optimizer):
    """Step count, lr and the moments (AdamW: m and v; SGD: v, the momentum) as numpy, for a checkpoint."""
    groups = [moments(group) for group in optimizer.param_groups]
    return dict(n_step=optimizer.n_step, lr=optimizer.lr, m=[[m.numpy() for m in ms] for ms, _ in groups],
                v=[[v.numpy() for v in vs] for _, vs in groups])


def restore_optimizer(optimizer, state):
    """Inverse of `optimizer_state` (groups must have been built from the same model)."""
    saved_shapes = [[np.shape(v) for v in vs] for vs in state["v"]]
    shapes = [[tuple(v.shape) for v in moments(group)[1]] for group in optimizer.param_groups]
    if saved_shapes != shapes:
        raise UserError("the checkpoint's optimiser state does not fit this model's parameter groups "
                        f"(saved sizes {[len(s) for s in saved_shapes]}, here {[len(s) for s in shapes]}); "
                        "it was written for another model or with the other --syncbn/--no-syncbn setting "
                        "(for DFormerv2 they differ): resume with that setting, or start a new run from its "
                        "weights with --pretrained")
    optimizer.n_step = state["n_step"]
    set_lr(optimizer, state["lr"])
    for group, ms, vs in zip(optimizer.param_groups, state["m"], state["v"]):
        m, v = moments(group)
        for var, saved in [*zip(m, ms), *zip(v, vs)]:
            var.update(jt.array(np.asarray(saved)))
