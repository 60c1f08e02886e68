"""The fair comparison's pieces that need no training: the search space, trial configurations,
best parameters read back, verdicts and their intervals."""

import json

import numpy as np
import optuna
import pandas as pd
import pytest

from rsgh.book import study as st
from rsgh.book import verdicts as vd


@pytest.mark.parametrize("method", ["sgh", "rsgh"])
def test_every_suggestion_is_a_valid_configuration_on_the_validation_split(method):
    """Random draws from the search space all validate, use the study's split (test queries plus
    validation queries), stop early on the validation mAP, and R-SGH is never linear."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(40):
        trial = study.ask()
        params = st.suggest(trial, method)
        cfg = st.trial_config(params, method, "cifar10", 64, 20)
        assert cfg.method == method and cfg.validation_per_class == 100 and cfg.queries_per_class == 100
        assert cfg.patience == st.PATIENCE and cfg.epochs == 20 and cfg.eval_epochs == 1
        assert cfg.estimator == "approximate"
        if method == "rsgh":
            assert cfg.arch == "mlp" and cfg.hidden_layers >= 1
        study.tell(trial, 0.1)


def test_the_width_factor_scales_with_the_code_length():
    params = {"feature_scaling": "standardize", "lr": 1e-3, "batch_size": 64, "train_noise": "uniform",
              "family": "mlp", "hidden_layers": 2, "width_factor": 2, "recon_sigma": 1.0, "prior": 0.5}
    assert st.trial_config(params, "sgh", "mnist", 32, 10).hidden_width == 64
    assert st.trial_config(params, "sgh", "mnist", 128, 10).hidden_width == 256
    reference = st.trial_config({"feature_scaling": "none", "lr": 1e-2, "batch_size": 512, "train_noise": "half",
                                 "family": "linear-reference"}, "sgh", "mnist", 64, 10)
    assert (reference.arch, reference.objective, reference.hidden_layers) == ("reference", "reference", 0)


def test_best_parameters_read_back_give_the_same_configuration(tmp_path):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    trial = study.ask()
    params = st.suggest(trial, "rsgh")
    study.tell(trial, 0.2)
    (tmp_path / "best.json").write_text(json.dumps({"params": study.best_trial.params}))
    assert st.best_params(tmp_path, "rsgh") == params  # delta_step / eta_step mapped back to delta / eta
    with pytest.raises(FileNotFoundError, match="run the study first"):
        st.best_params(tmp_path / "nowhere", "rsgh")


def test_effects_pair_by_seed_and_their_interval_is_students_t():
    a = pd.Series([0.30, 0.32, 0.31], index=[0, 1, 2])
    b = pd.Series([0.20, 0.25, 0.21, 0.99], index=[0, 1, 2, 9])  # seed 9 has no partner
    e = vd.effect(a, b)
    diffs = np.array([0.10, 0.07, 0.10])
    half = 4.302652729911275 * diffs.std(ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert e.n == 3 and e.mean == pytest.approx(diffs.mean())
    assert (e.low, e.high) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    assert e.sd == pytest.approx(diffs.std(ddof=1))
    assert e.verdict == "supported"
    assert vd.effect(b.loc[[0, 1, 2]], a).verdict == "not supported"
    assert vd.effect(pd.Series([0.1, 0.3, 0.2]), pd.Series([0.2, 0.1, 0.25])).verdict == "inconclusive"
    assert vd.effect(pd.Series([0.3]), pd.Series([0.1])).verdict == "inconclusive"  # one seed tells nothing
    single = vd.effect(a, pd.Series([0.25]))  # a deterministic baseline: against its one value
    assert single.n == 3 and single.mean == pytest.approx(0.06)


def test_the_tuned_comparison_decides_the_verdict():
    up, down = vd.Effect(0.1, 0.05, 0.15, 3), vd.Effect(-0.1, -0.15, -0.05, 3)
    assert vd.overall(down, up) == "supported" and vd.overall(up, down) == "not supported"
    assert vd.overall(up, None) == "supported" and vd.overall(None, None) == "not testable here"
    row = vd.row("claim", up, down, "{doc}`x`")
    assert row["verdict"] == "not supported" and "[+0.050, +0.150]: supported" in row["sources' settings"]
    # a claim under a protocol the studies did not tune for: the sources' settings decide
    assert vd.overall(up, down, decide="sources") == "supported"
    assert vd.overall(None, down, decide="sources") == "not supported"
    assert vd.row("claim", up, down, "", decide="sources")["decided by"] == "sources"
    with pytest.raises(ValueError, match="decide must be"):
        vd.overall(up, down, decide="patents")


def test_top_trials_orders_by_value_and_shows_parameters_a_trial_left_out_as_a_dash():
    from rsgh.book import comparison as cmp

    family = optuna.distributions.CategoricalDistribution(["linear", "mlp"])
    depth = optuna.distributions.IntDistribution(1, 4)
    study = optuna.create_study(direction="maximize")
    for fam, layers, value in [("linear", None, 0.3), ("mlp", 2, 0.5), ("mlp", 1, 0.4), ("linear", None, 0.1)]:
        params, dists = {"family": fam}, {"family": family}
        if layers:
            params["hidden_layers"], dists["hidden_layers"] = layers, depth
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    study.add_trial(optuna.trial.create_trial(params={"family": "mlp"}, distributions={"family": family},
                                              state=optuna.trial.TrialState.FAIL))
    top = cmp.top_trials(study, n=3)
    assert top["value"].tolist() == [0.5, 0.4, 0.3]  # complete trials only, best first
    assert top["hidden_layers"].tolist() == [2, 1, "—"]  # the linear trial has no depth
    assert not top.isna().any().any()
