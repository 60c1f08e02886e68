"""The training step: one update of every model of a lock-step group and of its adversary.

Eager (``torch.optim.Adam``, fused), or with ``Runtime.compile_step`` compiled: on a CPU the whole
step as one ``torch.compile`` graph, on CUDA the forward and backward pass with CUDA graphs.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..method.model import HashModel
from ..method.objective import GroupSpec, adversary_step, compute_loss


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is available; use device=auto or cpu")
    return torch.device(name)


class _LossOf(torch.nn.Module):
    """The group's loss as a module, so that ``torch.func.functional_call`` can swap its parameters."""

    def __init__(self, model: HashModel, spec: GroupSpec):
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, x, xi, lam):
        loss = compute_loss(self.model, x, xi, self.spec, lam)
        return loss.total, (loss.parts, loss.redundancy)


def make_step(model: HashModel, opt: torch.optim.Adam, spec: GroupSpec, lam: torch.Tensor,
              compiled: bool = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training step ``step(x, xi) -> parts``: one update of every model of the group and of
    its adversary; ``parts`` are the batch's loss terms (G, len(PARTS)), detached.

    ``compiled``: on a CPU the whole step as one graph (:func:`_compiled_cpu_step`); on CUDA the
    forward and backward pass compiled with ``mode="reduce-overhead"`` (CUDA graphs) beside the
    fused Adam."""
    on_cuda = next(model.parameters()).device.type == "cuda"
    if compiled and not on_cuda:
        return _compiled_cpu_step(model, opt, spec, lam)

    def forward_backward(x, xi):
        loss = compute_loss(model, x, xi, spec, lam)
        loss.total.backward()
        return loss.parts, loss.redundancy

    if compiled:
        forward_backward = torch.compile(forward_backward, mode="reduce-overhead")

    def step(x, xi):
        opt.zero_grad(set_to_none=True)
        parts, redundancy = forward_backward(x, xi)
        opt.step()
        adversary_step(lam, redundancy, spec)
        return parts

    return step


def _compiled_cpu_step(model: HashModel, opt: torch.optim.Adam, spec: GroupSpec, lam: torch.Tensor):
    """The whole training step (forward, gradient, Adam, adversary) as one ``torch.compile`` graph.

    On a CPU most of a step of these small networks is per-operation overhead; one graph with
    the gradient taken by ``torch.func.grad`` and Adam's update written out lets inductor fuse
    the elementwise work into a few C++ loops (measured: 2.1-2.7x the steps/s of the uncompiled
    group, against 1.5x for compiling the forward and backward pass alone and calling the fused
    Adam). The update is ``torch.optim.Adam``'s, on its own state tensors, so checkpoints and
    resume are unchanged.
    """
    group = opt.param_groups[0]
    if group["weight_decay"] or group["amsgrad"] or group["maximize"] or len(opt.param_groups) > 1:
        raise ValueError("the compiled step implements plain Adam only")
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    loss_of = _LossOf(model, spec)
    names = [f"model.params.{n}" for n in model.params]
    params = list(model.params.values())
    count = float(opt.state[params[0]]["step"]) if opt.state[params[0]] else 0.0
    # One step counter shared by every parameter's state (torch.optim.Adam keeps equal copies):
    # updating 20 tiny tensors each step costs more than a layer's GEMM.
    step_count = torch.tensor(count, dtype=torch.float32, device=params[0].device)
    for p in params:  # Adam's state, as torch.optim.Adam creates it (or as resumed)
        if not opt.state[p]:
            opt.state[p].update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        opt.state[p]["step"] = step_count
    states = [opt.state[p] for p in params]
    weights = [p.detach() for p in params]  # share storage: updated in place
    exp_avg, exp_avg_sq = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
    # the step's scalars, filled on the host each step (inside the graph inductor would
    # recompute them for every element)
    step_size, bias_correction2_sqrt = torch.zeros(()), torch.zeros(())
    adv_rate = (spec.rsgh * spec.adversary_lr)[:, :, 0]

    def loss_fn(ws, x, xi):
        total, (parts, redundancy) = torch.func.functional_call(loss_of, dict(zip(names, ws)), (x, xi, lam))
        # torch.func.grad's auxiliary outputs must be tensors: a group without R-SGH has no redundancy
        return total, (parts, () if redundancy is None else (redundancy,))

    def whole_step(ws, ms, vs, x, xi, step_size, bias_correction2_sqrt):
        grads, (parts, redundancy) = torch.func.grad(loss_fn, has_aux=True)(ws, x, xi)
        for w, g, m, v in zip(ws, grads, ms, vs):
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            w.sub_(step_size * m / (v.sqrt() / bias_correction2_sqrt + eps))
        for r in redundancy:  # none or one
            lam.add_(adv_rate * r).clamp_(min=0.0)
        return parts

    compiled = torch.compile(whole_step, fullgraph=True, options={"cpp_wrapper": True})

    calls = 0

    def cpu_step(x, xi):
        nonlocal count, calls
        count += 1
        calls += 1
        step_count.fill_(count)
        step_size.fill_(lr / (1 - beta1 ** count))
        bias_correction2_sqrt.fill_(math.sqrt(1 - beta2 ** count))
        args = (weights, exp_avg, exp_avg_sq, x, xi, step_size, bias_correction2_sqrt)
        if calls <= 2:  # compiles (with every guard checked) on the first calls of this group
            try:
                return compiled(*args)
            except torch._dynamo.exc.FailOnRecompileLimitHit:
                # dynamo keeps a few compiled shapes per function (recompile_limit) and then refuses
                # another: many groups of different shapes in one process start its cache afresh
                torch.compiler.reset()
                return compiled(*args)
        # then the guards, which only re-check that the same tensors come in, are skipped (0.3 ms a step)
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            return compiled(*args)

    return cpu_step
