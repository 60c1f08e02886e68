"""A study's protocol: how its trials are stopped and pruned, fixed when the study is created and recorded in
its journal, so that a continued study judges its trials alike (:mod:`rsgh.book.study`)."""

from __future__ import annotations

from .space import PATIENCE

# The median pruner, as the trials (in the workers, where it decides) apply it: once 5 trials have finished, a
# trial whose validation mAP at an epoch is below the median of the earlier trials' at that epoch stops, from
# its first epoch on. (The round's studies were declared with 6 start-up trials and 2 epochs of warm-up, but the
# workers loaded the study without its pruner, so Optuna's default, these values, decided every study alike.)
PRUNER = {"n_startup_trials": 5, "n_warmup_steps": 0}
# A study's protocol (a trial's maximum epochs and patience, the pruner's warm-up in epochs, whether the arm's
# known point is asked first: :func:`rsgh.book.space.known_params`, pruned like any trial; ``at_chance``: a trial whose validation
# mAP stays below ``below`` through epoch ``epochs`` stops, whatever the warm-up) is fixed when the study is
# created and recorded in its journal (:func:`protocol`); its best configuration is retrained with the same budget.
# The first studies used PROTOCOL, which cuts configurations that learn slowly: on MNIST the search missed the
# patents' own configuration, which peaks after epoch 100 (:func:`rsgh.book.search.known_point_table`), so
# MNIST's studies were run again with a protocol of its own (PROTOCOLS). Fashion-MNIST, the other dataset of
# pixels, gets the same protocol for its new studies (the "MNIST budget"); its published studies were made
# with PROTOCOL, which their journals record and keep. The stop at chance came after MNIST's second studies, whose
# journals showed it safe: of their 300 trials, the 36 below 0.11 through epoch 5 never passed 0.16 (the best
# reached 0.49-0.53), and the warm-up had kept each for 20 epochs (14-16% of the MLP arms' epochs).
PROTOCOL = {"max_epochs": 100, "patience": PATIENCE, "warmup": PRUNER["n_warmup_steps"], "known_point": False,
            "at_chance": None}
PIXELS_PROTOCOL = {"max_epochs": 200, "patience": 20, "warmup": 20, "known_point": True,
                   "at_chance": {"epochs": 5, "below": 0.11}}
PROTOCOLS = {"mnist": PIXELS_PROTOCOL, "fashion-mnist": PIXELS_PROTOCOL}


def new_protocol(dataset: str, **asked) -> dict:
    """The protocol of a new study on ``dataset``: the dataset's (PROTOCOLS, else PROTOCOL), with the values
    ``asked`` that are not None."""
    return dict(PROTOCOLS.get(dataset, PROTOCOL), **{k: v for k, v in asked.items() if v is not None})


def protocol(study) -> dict:
    """A study's protocol as recorded when it was created: ``max_epochs``, ``patience``, the median
    pruner's arguments (``pruner``) and the stop at chance (``at_chance``, None for a study without one); a
    study from before protocols were recorded has PROTOCOL's."""
    return {"max_epochs": int(study.user_attrs.get("max_epochs", PROTOCOL["max_epochs"])),
            "patience": int(study.user_attrs.get("patience", PATIENCE)),
            "pruner": dict(study.user_attrs.get("pruner", PRUNER)), "at_chance": study.user_attrs.get("at_chance")}


def pruner(study):
    """The median pruner of the study's protocol (the workers' hooks and the study as opened use this one)."""
    import optuna

    return optuna.pruners.MedianPruner(**protocol(study)["pruner"])
