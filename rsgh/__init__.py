"""rsgh: redundancy-resistant stochastic generative hashing (R-SGH) and its SGH baseline.

The package follows the data flow, each layer importing only from the ones before it:

    data/    images -> features -> split        (archives, MNIST, CIFAR-10, Caltech-256, GIST, scaling)
    method/  the model and its objective        (neuron, model, objective, measures)
    eval/    how codes are judged               (exact tie-aware mAP, Recall@N, baselines, protocol)
    train/   the step, the loop, the run folder (step, loop, rundir, task)
    book/    experiments, Dask, tables, figures, studies, the reproduction
    index/   hashing your own images            (encoder, store, query)
    cli.py   every subcommand

Reading order for the method: ``method.neuron`` (the stochastic binary layer and its two gradient
estimators), ``method.model``, ``method.objective`` (SGH and R-SGH losses, the adversary),
``train.loop``, ``method.measures``.

The public API (imported lazily, so ``import rsgh`` is cheap)::

    rsgh.Config, rsgh.Runtime, rsgh.make_config   a run's configuration and runtime settings
    rsgh.train_model(cfg, out, ...)                train one model into a run folder (data loaded for you)
    rsgh.load_model(run_dir)                       -> (HashModel, Config); model.hash(x) gives codes
    rsgh.mean_average_precision(q, db, ql, dbl)    exact expected mAP under random order within ties
    rsgh.recall_at_n(q, db, neighbours, ns)        Recall@N of true neighbours, exact under random ties
    rsgh.gist.gist(images)                         GIST-512 descriptors (the module rsgh.gist)

Every module is reachable as an attribute without an explicit import (``rsgh.gist``, ``rsgh.metrics``,
``rsgh.data``, ``rsgh.book`` ...): the first access imports it.
"""

__version__ = "0.2.0"

_API = {
    "Config": ("config", "Config"), "Runtime": ("config", "Runtime"), "make_config": ("config", "make_config"),
    "train_model": ("train.task", "train_model"), "load_model": ("train.rundir", "load_model"),
    "mean_average_precision": ("eval.metrics", "mean_average_precision"),
    "recall_at_n": ("eval.neighbours", "recall_at_n"),
}


_MODULES = ("gist", "metrics", "config", "errors", "files", "paths", "cli",
            "data", "method", "eval", "train", "book", "index")


def __getattr__(name):
    import importlib

    if name in _API:
        module, attr = _API[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    if name in _MODULES:  # a submodule on first use: rsgh.gist.gist(x) after a bare ``import rsgh``
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API) | set(_MODULES))
