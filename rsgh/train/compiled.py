"""The whole training step as one ``torch.compile`` graph on a CPU (``Runtime.compile_step``), called
without dynamo once it has settled, its graphs kept in the process for every group of a shape and
taken from the disk where another process compiled them; and :data:`PHASES`, the seconds of each phase
of a process's trainings (for the benchmarks).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

import torch

from ..method.model import HashModel
from ..method.objective import GroupSpec, compute_loss


class Phases:
    """Seconds this process spent in each phase of its trainings, by name, for the benchmarks
    (``benchmarks/study_speed.py`` reads a study trial's through ``rsgh.book.study.run_trial``): the
    compiled step's first calls (``compile``), the evaluations' parts, the data, the files. A few clock
    reads per evaluation, none in the steps after their first calls. ``training_started``: when the
    first training loop of this process since the last :meth:`take` began (``time.perf_counter``)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.training_started: float | None = None

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def timed(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t)

    def take(self) -> tuple[dict[str, float], float | None]:
        """(seconds by phase, training_started) since the last call; both start afresh."""
        out = (dict(self.seconds), self.training_started)
        self.seconds.clear()
        self.training_started = None
        return out


PHASES = Phases()


class _LossOf(torch.nn.Module):
    """The group's loss as a module, so that ``torch.func.functional_call`` can swap its parameters."""

    def __init__(self, model: HashModel, spec: GroupSpec):
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, x, xi, lam):
        loss = compute_loss(self.model, x, xi, self.spec, lam)
        return loss.total, (loss.parts, loss.redundancy)


def _compiled_cpu_step(model: HashModel, opt: torch.optim.Adam, spec: GroupSpec, lam: torch.Tensor):
    """The whole training step (forward, gradient, Adam, adversary) as one ``torch.compile`` graph.

    On a CPU most of a step of these small networks is per-operation overhead; one graph with
    the gradient taken by ``torch.func.grad`` and Adam's update written out lets inductor fuse
    the elementwise work into a few C++ loops (measured: 2.1-2.7x the steps/s of the uncompiled
    group, against 1.5x for compiling the forward and backward pass alone and calling the fused
    Adam). The update is ``torch.optim.Adam``'s (to an ulp: see its division), on its own state
    tensors, so checkpoints and resume are unchanged. Once the graph has settled (:func:`_settled`),
    the step calls it without dynamo: the same kernels on the same tensors, bit for bit, a quarter
    less time per step of a pair at E2's shape (``benchmarks/step_profile.py``). It calls the C++
    graph beneath AOTAutograd's runtime wrapper (measured: 20 of 616 microseconds of a 32-bit pair's
    step).
    """
    group = opt.param_groups[0]
    if group["weight_decay"] or group["amsgrad"] or group["maximize"] or len(opt.param_groups) > 1:
        raise ValueError("the compiled step implements plain Adam only")
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    loss_of = _LossOf(model, spec)
    names = [f"model.params.{n}" for n in model.params]
    host, (step_count, step_size, inv_bias_correction2_sqrt) = _step_scalars()
    count, weights, exp_avg, exp_avg_sq = _adam_state(opt, list(model.params.values()), step_count)
    adv_rate = (spec.rsgh * spec.adversary_lr)[:, :, 0]

    def loss_fn(ws, x, xi):
        total, (parts, redundancy) = torch.func.functional_call(loss_of, dict(zip(names, ws)), (x, xi, lam))
        # torch.func.grad's auxiliary outputs must be tensors: a group without R-SGH has no redundancy
        return total, (parts, () if redundancy is None else (redundancy,))

    def whole_step(ws, ms, vs, x, xi, step_size, inv_bias_correction2_sqrt):
        grads, (parts, redundancy) = torch.func.grad(loss_fn, has_aux=True)(ws, x, xi)
        for w, g, m, v in zip(ws, grads, ms, vs):
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            # times 1/sqrt(1 - beta2^t), not divided by its root as in torch.optim.Adam: these loops wait on the
            # divider (in one process, in turns: 3 to 7% less time a step at 32, 64 and 128 bits and for E1)
            w.sub_(step_size * m / (v.sqrt() * inv_bias_correction2_sqrt + eps))
        for r in redundancy:  # none or one
            lam.add_(adv_rate * r).clamp_(min=0.0)
        return parts

    # static shapes: a process that trains groups of several shapes (a Dask worker) would otherwise get
    # graphs for any size, slower, with the sizes as inputs; every group of a shape already compiled in
    # this process reuses its graph (STEP_RECOMPILE_LIMIT)
    compiled = torch.compile(whole_step, fullgraph=True, dynamic=False, backend=_inductor_with_calls,
                             recompile_limit=STEP_RECOMPILE_LIMIT)

    calls = 0
    seen = []  # the inputs of the graph that dynamo called at the last steps
    direct = None  # (graph, its inputs, position of x, of xi, their layout): the graph called without dynamo

    def cpu_step(x, xi):
        nonlocal count, calls, direct
        count += 1
        calls += 1
        host[:] = (count, lr / (1 - beta1 ** count), 1 / math.sqrt(1 - beta2 ** count))
        if direct is not None:
            graph, inputs, at_x, at_xi, layout = direct
            if _layout(x, xi) == layout:
                inputs[at_x], inputs[at_xi] = x, xi
                return graph(list(inputs))[0]
            direct, calls, seen[:] = None, 0, []  # a batch of another shape: through dynamo, which compiles it
        args = (weights, exp_avg, exp_avg_sq, x, xi, step_size, inv_bias_correction2_sqrt)
        _LAST_CALL.clear()
        out = _through_dynamo(compiled, args, compiling=calls <= 2)
        if calls > 2:
            seen.append(_graph_call(x, xi, out))
            direct = _settled(seen)
        _LAST_CALL.clear()
        return out

    cpu_step.calls_graph_directly = lambda: direct is not None  # for the tests
    return cpu_step


# Graphs of the compiled step that one process keeps (dynamo's cache of ``whole_step``, whose code every
# group's step shares; dynamo's own default keeps 8). A new group of a shape and reading already compiled
# here (the same architecture, batch size and Python-level choices of the loss) reuses its graph: dynamo's
# guards check the tensors' sizes and those choices, not the tensors, and a trial's hyperparameters are
# tensors (``GroupSpec``) or the step's scalars. A study's worker trains trials of a few dozen shapes, and
# with dynamo's 8 it started afresh at every ninth and compiled every shape again, about 12 s each with
# inductor's disk cache warm (dynamo's tracing and AOTAutograd, which that cache does not hold with the C++
# wrapper). Beyond this many, the cache starts afresh (:func:`_compiled_cpu_step`).
STEP_RECOMPILE_LIMIT = 64


def _through_dynamo(compiled, args: tuple, compiling: bool) -> torch.Tensor:
    """The step's call through dynamo, its C++ graph's call noted (:func:`_graph_calls_noted`).
    ``compiling``: the first calls of a group, which compile (or find the graph: in this process, else
    on the disk, :func:`_aot_cache_for_the_step`) with every guard checked; then dynamo's guards, which
    only re-check that the same tensors come in, are skipped."""
    if not compiling:
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True), _graph_calls_noted():
            return compiled(*args)
    t = time.perf_counter()
    with _graph_calls_noted(), _aot_cache_for_the_step():
        try:
            out = compiled(*args)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            # dynamo keeps STEP_RECOMPILE_LIMIT compiled shapes of the step and then refuses another: many
            # groups of different shapes in one process start its cache afresh
            torch.compiler.reset()
            out = compiled(*args)
    PHASES.add("compile", time.perf_counter() - t)
    return out


class _HandledRecompileLimit(logging.Filter):
    """Drops dynamo's warning that the compiled step hit its recompile limit: the step handles it by
    starting dynamo's cache afresh (:func:`_compiled_cpu_step`), and the warning (a dozen lines with a
    stack) would fill the log of every process that trains many group shapes (a study's worker)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (text.startswith("torch._dynamo hit config.") and "'whole_step' (" + __file__ in str(record.args))


logging.getLogger("torch._dynamo.convert_frame").addFilter(_HandledRecompileLimit())


def _step_scalars() -> tuple:
    """(a numpy view, the 0-d tensors it writes): Adam's step count (shared with torch.optim.Adam's
    state), the step size and one over the square root of the second moment's bias correction. The
    host writes them each step through the one view (inside the graph inductor would recompute them
    for every element; three fill_ calls cost three dispatches); each is 16 bytes from the next
    (inductor copies a graph input that is not aligned)."""
    scalars = torch.zeros(3, 4)
    return scalars[:, 0].numpy(), (scalars[0, 0], scalars[1, 0], scalars[2, 0])


def _adam_state(opt: torch.optim.Adam, params: list, step_count: torch.Tensor):
    """(steps taken, weights, exp_avg, exp_avg_sq): ``torch.optim.Adam``'s state as it creates it (or
    as resumed), the weights sharing storage with the parameters.

    One step counter, ``step_count``, is shared by every parameter's state (torch.optim.Adam keeps
    equal copies): updating 20 tiny tensors each step costs more than a layer's GEMM."""
    count = float(opt.state[params[0]]["step"]) if opt.state[params[0]] else 0.0
    step_count.fill_(count)
    for p in params:
        if not opt.state[p]:
            opt.state[p].update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        opt.state[p]["step"] = step_count
    states = [opt.state[p] for p in params]
    return count, [p.detach() for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]


_LAST_CALL: list = []  # [(C++ graph, inputs, outputs)] of the latest call of a compiled step in this process
# No size asserts: the C++ wrapper checked the graph's ~70 inputs at every call (30-40 us a step, 8% of a
# lone model's at 32 bits); dynamo's guards check them, the direct call the batch and noise (:func:`_layout`).
# No reordering for peak memory: in R-SGH's graph it put the weights' gradients in a row, then their
# updates in one loop over all of them; without it each update follows its gradient, as in SGH's graph.
INDUCTOR_OPTIONS = {"cpp_wrapper": True, "size_asserts": False, "reorder_for_peak_memory": False}


def _layout(x: torch.Tensor, xi: torch.Tensor) -> tuple:
    """What the graph assumed of the batch and the noise: sizes, strides, dtypes, devices and
    16-byte alignment."""
    return tuple((t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16) for t in (x, xi))


def _inductor_with_calls(gm, example_inputs):
    """inductor with the C++ wrapper (:data:`INDUCTOR_OPTIONS`), for dynamo."""
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(gm, example_inputs, config_patches=INDUCTOR_OPTIONS)


@contextlib.contextmanager
def _graph_calls_noted():
    """While dynamo calls the step: each call of a compiled C++ graph noted in ``_LAST_CALL`` with its
    inputs and outputs, so that the step can see which graph dynamo calls with which tensors, and then
    call it itself: beneath AOTAutograd's runtime wrapper, whose Python prologue and epilogue have
    nothing to do here (the graph takes no gradient and applies its input mutations itself). Noted at
    inductor's compiled graph's call, so that a graph compiled here and one that AOTAutograd's cache
    gave back (:func:`_aot_cache_for_the_step`) are noted alike."""
    from torch._inductor.output_code import CompiledFxGraph

    real = CompiledFxGraph.__call__

    def noted(self, inputs):
        given = list(inputs)  # the call empties its list (it takes the inputs over)
        outputs = real(self, inputs)
        _LAST_CALL[:] = [(self.current_callable, given, outputs)]
        return outputs

    CompiledFxGraph.__call__ = noted
    try:
        yield
    finally:
        CompiledFxGraph.__call__ = real


def _aot_cache_for_the_step():
    """AOTAutograd's disk cache for the step's graph: it passes over a graph with an
    ``autograd.Function`` unless told (the stochastic neuron's, ``rsgh.method.neuron``, whose forward
    and backward are in the graph, and so in the cache's key). A shape that another process compiled
    (a study's other worker, an earlier study) then costs dynamo's tracing and the cache's load, not
    AOTAutograd's tracing and partitioning (measured on the loaded development machine: the first call
    of a 64-bit MNIST step 11.4 s without, 7.8 s with)."""
    import torch._functorch.config

    return torch._functorch.config.patch(autograd_cache_allow_custom_autograd_functions=True)


def _graph_call(x: torch.Tensor, xi: torch.Tensor, out: torch.Tensor):
    """(graph, inputs, position of x, position of xi, their layout) of the C++ graph's call that dynamo
    just made, or None: None also when the step's result ``out`` is not the graph's one output (then
    AOTAutograd's wrapper had work to do around the call)."""
    if len(_LAST_CALL) != 1:
        return None
    graph, inputs, outputs = _LAST_CALL[0]
    at_x = [i for i, t in enumerate(inputs) if t is x]
    at_xi = [i for i, t in enumerate(inputs) if t is xi]
    if (len(at_x) != 1 or len(at_xi) != 1 or any(type(t) not in (torch.Tensor, int) for t in inputs)
            or len(outputs) != 1 or outputs[0] is not out):
        return None
    return graph, inputs, at_x[0], at_xi[0], _layout(x, xi)


def _settled(seen: list):
    """The graph to call directly from now on (dynamo's bytecode, cache lookup and call took a quarter
    of a step of a pair at E2's shape), or None while dynamo stays.

    Once dynamo has called the same graph at two steps with the same tensors but the batch ``x`` and
    the noise ``xi`` (weights, Adam's state, the adversary, the step's scalars, the group's
    hyperparameters: all updated in place) and the same sizes (a graph with dynamic shapes takes
    them as integers), the step calls it with those, as long as the batch and the noise keep the
    sizes and strides of that call (:func:`_layout`; the others are the same tensors)."""
    if len(seen) < 2 or seen[-1] is None or seen[-2] is None:
        del seen[:-1]
        return None
    (g1, in1, x1, xi1, lay1), (g2, in2, x2, xi2, lay2) = seen[-2:]
    same = g1 is g2 and (x1, xi1, lay1) == (x2, xi2, lay2) and len(in1) == len(in2) and all(
        a is b or type(a) is type(b) is int and a == b for i, (a, b) in enumerate(zip(in1, in2)) if i not in (x2, xi2))
    del seen[:-1]
    return seen.pop() if same else None


