"""The loss scale of mixed-precision training: `torch.cuda.amp.GradScaler`'s dynamic scaling and defaults.

Under autocast (`models/precision.py`) the gradients of the float16 convolutions and products flush to
zero below 6e-8; the loss is multiplied by `scale` before the backward so they stay in float16's range,
and the float32 gradients are divided by it before the optimiser sees them.
"""
import math


class LossScaler:
    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval = growth_interval
        self.clean_steps = 0  # steps since the last inf/NaN or growth

    def scaled(self, loss):
        return loss * self.scale

    def step(self, optimizer):
        """Unscale the accumulated gradients and step `optimizer`, unless one is inf or NaN: then
        skip the step (the gradients are dropped) and halve the scale. Returns whether it stepped."""
        grads = [g for group in optimizer.param_groups for p, g in zip(group["params"], group.get("grads", []))
                 if not p.is_stop_grad()]
        # 0 * g is 0 for every finite g and NaN for inf or NaN: one sum per tensor, then one sync
        finite = math.isfinite(float(sum((g * 0).sum() for g in grads).item())) if grads else True
        if finite:
            for g in grads:
                g.update(g * (1.0 / self.scale))
            optimizer.step()
        else:
            optimizer.zero_grad()
        self.update(finite)
        return finite

    def update(self, finite):
        """Back off after an inf/NaN step; grow after `growth_interval` clean steps in a row."""
        if not finite:
            self.scale *= self.backoff_factor
            self.clean_steps = 0
            return
        self.clean_steps += 1
        if self.clean_steps == self.growth_interval:
            self.scale *= self.growth_factor
            self.clean_steps = 0

    def state_dict(self):
        return {"scale": self.scale, "clean_steps": self.clean_steps}

    def load_state_dict(self, state):
        self.scale, self.clean_steps = float(state["scale"]), int(state["clean_steps"])
