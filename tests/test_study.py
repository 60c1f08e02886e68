"""The fair comparison's pieces that need no training: the search space, trial configurations,
best parameters read back, verdicts and their intervals."""

import json

import numpy as np
import optuna
import pandas as pd
import pytest

from rsgh.book import study as st
from rsgh.book import verdicts as vd


@pytest.mark.parametrize("arm", ["sgh", "sgh-arch", "rsgh"])
def test_every_suggestion_is_a_valid_configuration_on_the_validation_split(arm):
    """Random draws from each arm's search space all validate, use the study's split (test queries plus
    validation queries), stop early on the validation mAP; R-SGH and SGH in R-SGH's architecture are never
    linear, and the latter is SGH."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(60):
        trial = study.ask()
        params = st.suggest(trial, arm)
        cfg = st.trial_config(params, arm, "cifar10", 64, 20)
        assert cfg.method == ("rsgh" if arm == "rsgh" else "sgh")
        assert cfg.validation_per_class == 100 and cfg.queries_per_class == 100
        assert cfg.patience == st.PATIENCE and cfg.epochs == 20 and cfg.eval_epochs == 1
        assert cfg.estimator == "approximate"
        if arm != "sgh":
            assert cfg.arch == "mlp" and cfg.hidden_layers >= 1
        if arm == "rsgh" and cfg.coupling == "step_sizes":
            assert cfg.model_lr == cfg.lr  # the model's step is drawn as every arm's lr
        study.tell(trial, 0.1)


def test_sgh_in_rsghs_architecture_searches_rsghs_space_without_its_terms():
    """The control arm: the same choices and ranges as R-SGH's space, less R-SGH's own parameters."""
    def space(arm):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
        seen = {}
        for _ in range(200):
            trial = study.ask()
            st.suggest(trial, arm)
            seen.update(trial.distributions)
            study.tell(trial, 0.0)
        return seen

    rsgh, arch, sgh = space("rsgh"), space("sgh-arch"), space("sgh")
    own = {"coupling", "delta", "eta", "adv_lr", "eta_step", "tau", "tie_target", "redundancy"}
    assert set(arch) == set(rsgh) - own
    assert all(arch[k] == rsgh[k] for k in arch)
    assert sgh["hidden_layers"].choices == (0, 1, 2, 4) and arch["hidden_layers"].choices == (1, 2, 4)
    assert sgh["family"].choices == ("mlp", "linear-reference") and arch["family"].choices == ("mlp",)
    with pytest.raises(ValueError, match="arm must be one of"):
        st.suggest(optuna.trial.FixedTrial({}), "itq")


def test_a_best_value_in_the_outer_tenth_of_its_range_is_an_edge():
    """edge_values: the outer tenth in log scale for a log range (lr 1e-5..1e-1: below 2.5e-5 or above
    4e-2), linear for a linear one, and in log-odds for a probability, whose two ends are both natural
    bounds (prior searched on 1e-3..0.999: below 3.97e-3 or above 0.99603; a study that searched prior on 0.05..0.95:
    below 0.0866 or above 0.9134)."""
    assert st.RANGES["lr"] == (1e-5, 1e-1, True) and st.RANGES["prior"] == (1e-5, 0.999, True)
    lr = optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)
    prior = optuna.distributions.FloatDistribution(1e-3, 0.999, log=True)
    for lr_value, prior_value, edges in [(1e-3, 0.3, set()), (2e-5, 0.3, {"lr"}), (5e-2, 0.3, {"lr"}),
                                         (2e-5, 0.997, {"lr", "prior"}), (1e-3, 0.0039, {"prior"}),
                                         (1e-3, 0.0041, set()), (1e-3, 0.845, set()), (1e-3, 0.083, set())]:
        study = optuna.create_study(direction="maximize")
        study.set_user_attr("ranges", dict(st.RANGES, prior=[1e-3, 0.999, True]))  # searched before 1e-5
        study.add_trial(optuna.trial.create_trial(params={"lr": lr_value, "prior": prior_value},
                                                  distributions={"lr": lr, "prior": prior}, value=1.0))
        assert set(st.edge_values(study)) == edges, (lr_value, prior_value)
    study = optuna.create_study(direction="maximize")  # today's range: 1.3e-3 (Fashion-MNIST's SGH) lies inside
    study.add_trial(optuna.trial.create_trial(params={"prior": 1.3e-3}, distributions={"prior": prior}, value=1.0))
    assert st.edge_values(study) == {}
    linear = optuna.distributions.FloatDistribution(0.05, 0.95)
    for prior_value, edges in [(0.5, set()), (0.92, {"prior"}), (0.083, {"prior"}), (0.051, {"prior"}),
                               (0.09, set()), (0.9, set())]:
        study = optuna.create_study(direction="maximize")
        study.set_user_attr("ranges", dict(st.RANGES, prior=[0.05, 0.95, False]))
        study.add_trial(optuna.trial.create_trial(params={"prior": prior_value}, distributions={"prior": linear},
                                                  value=1.0))
        assert set(st.edge_values(study)) == edges, prior_value


def test_the_width_factor_scales_with_the_code_length():
    params = {"feature_scaling": "standardize", "lr": 1e-3, "batch_size": 64, "train_noise": "uniform",
              "family": "mlp", "hidden_layers": 2, "width_factor": 2, "recon_sigma": 1.0, "prior": 0.5}
    assert st.trial_config(params, "sgh", "mnist", 32, 10).hidden_width == 64
    assert st.trial_config(params, "sgh-arch", "mnist", 128, 10).hidden_width == 256
    reference = st.trial_config({"feature_scaling": "none", "lr": 1e-2, "batch_size": 512, "train_noise": "half",
                                 "family": "linear-reference"}, "sgh", "mnist", 64, 10)
    assert (reference.arch, reference.objective, reference.hidden_layers) == ("reference", "reference", 0)


def test_best_parameters_read_back_give_the_same_configuration(tmp_path):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    trial = study.ask()
    params = st.suggest(trial, "rsgh")
    study.tell(trial, 0.2)
    (tmp_path / "best.json").write_text(json.dumps({"params": study.best_trial.params}))
    assert st.best_params(tmp_path, "rsgh") == params
    with pytest.raises(FileNotFoundError, match="run the study first"):
        st.best_params(tmp_path / "nowhere", "rsgh")


def test_a_study_lives_in_its_journal_and_continues_from_it(tmp_path):
    """The journal is the study: reopened from the file alone it has every trial, its values and attributes;
    a trial left running by a killed process is failed and asked again with the same parameters."""
    study = st.open_study("sgh-arch", "mnist", 64, tmp_path)
    for value in (0.3, 0.5):
        trial = study.ask()
        st.suggest(trial, "sgh-arch")
        trial.set_user_attr("best_epoch", 4.0)
        study.tell(trial, value)
    left = study.ask()
    params = st.suggest(left, "sgh-arch")
    again = st.open_study("sgh-arch", "mnist", 64, tmp_path, create=False)
    assert [t.value for t in again.trials[:2]] == [0.3, 0.5] and again.best_trial.user_attrs["best_epoch"] == 4.0
    st._requeue_interrupted(again)
    assert st.counts(again) == {"complete": 2, "pruned": 0, "failed": 1, "running": 0}
    requeued = again.ask()
    assert st.suggest(requeued, "sgh-arch") == params and requeued.params == left.params
    with pytest.raises(FileNotFoundError, match="has not been run"):
        st.open_study("rsgh", "mnist", 64, tmp_path / "none", create=False)


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


def test_holm_adjusts_step_down_and_decides_the_rows():
    """Holm's adjusted p-values against a hand computation (m = 4: 4 p1, max(., 3 p2), ...), NaN left out."""
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    adjusted = vd.holm(p)
    assert adjusted[3] == pytest.approx(0.02) and adjusted[0] == pytest.approx(0.03)
    assert adjusted[2] == pytest.approx(0.06) and adjusted[1] == pytest.approx(0.06)  # monotone: max(0.06, 0.04)
    assert np.isnan(adjusted[4])
    up = vd.Effect(0.1, 0.05, 0.15, 5, 0.02, 0.001)
    assert vd.adjusted_verdict(up, 0.004) == "supported" and vd.adjusted_verdict(up, 0.2) == "inconclusive"
    down = vd.Effect(-0.1, -0.15, -0.05, 5, 0.02, 0.001)
    assert vd.adjusted_verdict(down, 0.01) == "not supported"


def test_the_verdict_table_corrects_over_deciding_rows_and_drops_untrained_runs():
    seeds = [0, 1, 2, 3, 4]
    def side(values, dead=()):
        return pd.DataFrame({"seed": seeds, "map": values, "active_units_001": [0 if s in dead else 30 for s in seeds]})

    strong = vd.compare("(i) terms help", "MNIST, K = 64", "tuned", side([0.52, 0.53, 0.51, 0.52, 0.54]),
                        side([0.50, 0.50, 0.50, 0.49, 0.51]), "map")
    weak = vd.compare("(ii) beats best", "MNIST, K = 64", "tuned", side([0.50, 0.52, 0.49, 0.51, 0.50]),
                      side([0.49, 0.50, 0.50, 0.50, 0.49], dead=(1,)), "map")
    shown = vd.compare("(ii) beats best", "MNIST, K = 64", "other", side([0.5] * 5), side([0.4] * 5), "map",
                       decides=False)
    table = vd.table([strong, weak, shown])
    assert table.loc[0, "Holm p"] == pytest.approx(2 * strong.effect.p)  # the smaller of two deciding p-values
    assert table.loc[1, "Holm p"] == pytest.approx(max(2 * strong.effect.p, weak.effect.p))
    assert table.loc[2, "verdict (Holm)"] == "(not decisive)" and np.isnan(table.loc[2, "Holm p"])
    assert table.loc[0, "without untrained runs"] == "—"  # every run trained
    clean = vd.effect(pd.Series([0.50, 0.49, 0.51, 0.50], index=[0, 2, 3, 4]),
                      pd.Series([0.49, 0.50, 0.50, 0.49], index=[0, 2, 3, 4]))
    assert weak.clean.mean == pytest.approx(clean.mean) and weak.clean.n == 4  # seed 1 dropped on both sides
    sentence = vd.headline_sentence([strong, weak], table.iloc[:2])
    assert "R-SGH does not beat SGH" in sentence or "Not shown" in sentence
    assert "helps in 1 of 1" in sentence
    assert "R-SGH minus the best SGH in test mAP, by dataset: MNIST +0.008 (every raw 95% interval includes 0)." in sentence
    # per dataset: what the raw intervals and the Holm verdicts say, each dataset in its own words
    def row(d, k, a, b, claim="(ii) beats best"):
        return vd.compare(claim, f"{d}, K = {k}", "tuned", side(a), side(b), "map")
    down, up = [0.40, 0.41, 0.39, 0.40, 0.42], [0.50, 0.51, 0.49, 0.50, 0.52]
    mixed = ([row("CIFAR-10", k, down, up) for k in (32, 64)] + [row("MNIST", 32, [0.50, 0.46, 0.53, 0.47, 0.52], down)]
             + [row("X", k, [0.5] * 5, [0.5] * 5, "(i) terms help") for k in range(30)])
    said = vd.by_dataset(mixed, vd.table(mixed), "(ii)", "R-SGH minus the best SGH")
    assert said == ("R-SGH minus the best SGH in test mAP, by dataset: CIFAR-10 -0.100 (SGH ahead at 2 of 2 "
                    "code lengths after Holm's correction); MNIST +0.092 (R-SGH ahead in 1 of 1 raw 95% intervals, at "
                    "no code length after Holm's correction).")
    patents = vd.compare("(c) patents", "MNIST, K = 64", "patents' settings", side([0.50, 0.51, 0.49, 0.50, 0.52]),
                         side([0.40, 0.41, 0.39, 0.40, 0.42]), "map")
    with_c = vd.headline_sentence([patents], vd.table([strong, weak, patents]), caveats=["Careful.", ""])
    assert "R-SGH beats SGH in 1 of 1 comparisons and trails in 0 after Holm's correction." in with_c
    assert with_c.endswith(" Careful.")
    # a raw interval above 0 that Holm's correction over many rows does not decide is named with its effect
    noisy = vd.compare("(c) patents", "MNIST, K = 32", "patents' settings", side([0.50, 0.46, 0.53, 0.47, 0.52]),
                       side([0.40, 0.41, 0.39, 0.40, 0.42]), "map")
    many = [noisy] + [vd.compare("(i) terms help", f"X, K = {k}", "tuned", side([0.5] * 5), side([0.5] * 5), "map")
                      for k in range(30)]
    text = vd.headline_sentence(many, vd.table(many))
    assert "raw 95% interval lies above 0 in 1: MNIST, K = 32 (+0.092) in test mAP, which with 5 seeds" in text
    # a dataset whose searches missed a known configuration is left open in the answer's first words
    best = [vd.compare("(ii) beats best", f"{d}, K = 64", "tuned", side([0.40, 0.41, 0.39, 0.40, 0.42]),
                       side([0.50, 0.51, 0.49, 0.50, 0.52]), "map") for d in ("CIFAR-10", "MNIST")]
    assert vd.headline_sentence(best, vd.table(best), open_datasets=["MNIST"]).startswith(
        "**No on CIFAR-10, open on MNIST: tuned with the same search budget, R-SGH does not beat SGH.**")
    assert vd.key_of(strong) == "i_mnist_k_64_tuned"
    units = [vd.compare(f"(a) R-SGH keeps more active units (A > {t}) than SGH", "MNIST, K = 64", "tuned",
                        side([30] * 5), side([29] * 5), "active_units_001") for t in ("0.01", "0.05")]
    assert [vd.key_of(r) for r in units] == ["a0_01_mnist_k_64_tuned", "a0_05_mnist_k_64_tuned"]  # one key each


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
    turned = cmp.top_trials_by_parameter(study, n=3)
    assert list(turned.columns) == ["trial 1", "trial 2", "trial 0"]
    assert turned.loc["validation mAP"].tolist() == ["0.5", "0.4", "0.3"]
    assert turned.loc["hidden_layers"].tolist() == ["2", "1", "—"]


def test_a_study_writes_only_into_a_folder_of_its_own(tmp_path):
    """study --out: new, empty, or this very study's journal; refused before a byte is written otherwise
    (a user's file, another arm's study, a best.json without a journal, a journal.log that is not one, the
    published book)."""
    from rsgh.book.study import check_study_folder

    check_study_folder(tmp_path / "new", "mnist-k64-rsgh")
    (tmp_path / "empty").mkdir()
    check_study_folder(tmp_path / "empty", "mnist-k64-rsgh")
    mine = tmp_path / "mine"
    st.open_study("rsgh", "mnist", 64, mine)
    check_study_folder(mine, "mnist-k64-rsgh")  # the same study continues
    before = sorted((p.name, p.read_bytes()) for p in mine.iterdir())
    with pytest.raises(ValueError, match="holds the study mnist-k64-rsgh, not mnist-k64-sgh"):
        check_study_folder(mine, "mnist-k64-sgh")
    with pytest.raises(ValueError, match="holds the study"):
        st.run_study("sgh", "mnist", 64, 1, 1, mine, scratch=tmp_path / "scratch")  # refused before any work
    assert sorted((p.name, p.read_bytes()) for p in mine.iterdir()) == before and not (tmp_path / "scratch").exists()
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    (user / "best.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds files that are not a study's \(notes.txt\)"):
        check_study_folder(user, "mnist-k64-rsgh")
    (user / "notes.txt").unlink()
    with pytest.raises(ValueError, match="best.json without a journal"):
        check_study_folder(user, "mnist-k64-rsgh")
    assert (user / "best.json").read_text() == "{}"
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "journal.log").write_text("not json\n")
    with pytest.raises(ValueError, match="not an Optuna journal"):
        check_study_folder(fake, "mnist-k64-rsgh")
    from rsgh.paths import BOOK

    with pytest.raises(ValueError, match="inside the published book"):
        check_study_folder(BOOK / "studies", "mnist-k64-rsgh")


def test_a_widened_range_is_recorded_and_the_optimum_judged_in_the_range_searched(tmp_path, monkeypatch):
    """A study that ran with a narrow recon_sigma range and continues with a wider one: the journal records
    after how many trials which range changed, and a best value at the old edge is judged by the new range."""
    from rsgh.book import search

    narrow = dict(st.RANGES, recon_sigma=(1e-2, 1e2, True))
    monkeypatch.setattr(st, "RANGES", narrow)
    study = st.open_study("rsgh", "mnist", 64, tmp_path)
    st.record_ranges(study)
    dist = optuna.distributions.FloatDistribution(1e-2, 1e2, log=True)
    study.add_trial(optuna.trial.create_trial(params={"recon_sigma": 0.0187}, distributions={"recon_sigma": dist},
                                              value=0.46))
    assert st.edge_values(study) == {"recon_sigma": [0.0187, 1e-2, 1e2]}
    monkeypatch.setattr(st, "RANGES", dict(narrow, recon_sigma=(1e-4, 1e2, True)))
    st.record_ranges(study)
    again = st.open_study("rsgh", "mnist", 64, tmp_path, create=False)
    assert again.user_attrs["range_history"] == [{"after_trials": 1, "changed": {
        "recon_sigma": {"from": [1e-2, 1e2, True], "to": [1e-4, 1e2, True]}}}]
    assert st.edge_values(again) == {}  # 0.0187 lies at 0.38 of [1e-4, 1e2] in log scale
    assert "after 1 trials, `recon_sigma` from [0.01, 100] to [0.0001, 100]" in search.history_text({"rsgh": again})
    table = search.ranges_table({"rsgh": again})
    row = table[table.parameter == "recon_sigma"].iloc[0]
    assert "widened from 0.01 to 100" in row["range"] and row["R-SGH"] == "0.0187 (0.38)"
    st.record_ranges(again)  # the same ranges again: nothing appended
    assert len(st.open_study("rsgh", "mnist", 64, tmp_path, create=False).user_attrs["range_history"]) == 1


def test_the_trials_prune_with_the_pruner_the_study_declares(tmp_path):
    """The worker's hook (which decides) and the study as opened use one pruner: PRUNER for a study created
    on a dataset without a protocol of its own, the dataset's (PROTOCOLS) or the one asked for otherwise; a
    continued study keeps its protocol."""
    import optuna

    cases = (("cifar10", None, st.PRUNER["n_warmup_steps"], st.PATIENCE),
             ("mnist", None, st.PROTOCOLS["mnist"]["warmup"], st.PROTOCOLS["mnist"]["patience"]),
             ("mnist", 7, 7, st.PROTOCOLS["mnist"]["patience"]),
             ("fashion-mnist", None, st.PROTOCOLS["mnist"]["warmup"], st.PROTOCOLS["mnist"]["patience"]))
    for i, (dataset, warmup, expected, patience) in enumerate(cases):
        folder = tmp_path / str(i)
        study = st._continue("sgh", dataset, 64, folder, warmup=warmup)
        hook = st._report_hook(str(folder), study.study_name, study.ask()._trial_id)
        again = st.open_study("sgh", dataset, 64, folder)
        for pruner in (study.pruner, hook.pruner, again.pruner):
            assert isinstance(pruner, optuna.pruners.MedianPruner)
            assert (pruner._n_startup_trials, pruner._n_warmup_steps) == (st.PRUNER["n_startup_trials"], expected)
        declared = st.PROTOCOLS.get(dataset) or st.PROTOCOL
        assert st.protocol(again) == {"max_epochs": declared["max_epochs"], "patience": patience,
                                      "pruner": dict(st.PRUNER, n_warmup_steps=expected),
                                      "at_chance": declared["at_chance"]}
    with pytest.raises(ValueError, match="runs with warm-up 7, not 3: a study keeps its protocol"):
        st._continue("sgh", "mnist", 64, tmp_path / "2", warmup=3)
    with pytest.raises(ValueError, match="runs with max_epochs 200, not 100: a study keeps its protocol"):
        st._continue("sgh", "mnist", 64, tmp_path / "2", max_epochs=100)


def test_a_trial_still_at_chance_stops_whatever_the_warm_up(tmp_path):
    """The protocol's at_chance (the pixels datasets'): a trial whose validation mAP stays below 0.11 through
    epoch 5 stops there, inside the 20 epochs of warm-up; one that passed it once, or a study without the rule
    (CIFAR-10's), trains on."""
    rule = st.PROTOCOLS["fashion-mnist"]["at_chance"]
    assert rule == {"epochs": 5, "below": 0.11} and st.PROTOCOL["at_chance"] is None

    def epochs_trained(dataset, values, folder):
        study = st._continue("rsgh", dataset, 64, tmp_path / folder)
        hook = st._report_hook(str(tmp_path / folder), study.study_name, study.ask()._trial_id)
        for epoch, value in enumerate(values, start=1):
            try:
                hook(None, {"epoch": float(epoch), "iteration": 100 * epoch, "val_map": value})
            except optuna.TrialPruned as stop:
                return epoch, str(stop)
        return len(values), None

    flat = [0.1001, 0.1050, 0.1099, 0.1020, 0.1080, 0.1090, 0.30]
    assert epochs_trained("fashion-mnist", flat, "a") == (5, "at chance through epoch 5")
    stopped = st.open_study("rsgh", "fashion-mnist", 64, tmp_path / "a").trials[0]
    assert stopped.user_attrs["stopped"] == "at chance through epoch 5"  # the journal says why
    assert epochs_trained("mnist", [0.1001, 0.1001, 0.1100, 0.1001, 0.1001, 0.1001, 0.30], "b") == (7, None)
    assert epochs_trained("cifar10", flat, "c") == (7, None)


def test_the_trials_stopped_at_chance_are_counted_from_their_reports(tmp_path):
    """stopped_at_chance counts the pruned trials whose reports end by the rule's epoch below its level (not a
    trial pruned later, nor one that passed the level); chance_text says it per arm, and nothing for a study
    without the rule."""
    from optuna.trial import TrialState

    from rsgh.book import search

    study = st._continue("rsgh", "fashion-mnist", 64, tmp_path / "f")
    for reports, state in (([0.1001] * 5, TrialState.PRUNED), ([0.1001] * 4 + [0.12], TrialState.PRUNED),
                           ([0.10] * 21, TrialState.PRUNED), ([0.3] * 6, TrialState.COMPLETE)):
        trial = study.ask()
        for epoch, value in enumerate(reports, start=1):
            trial.report(value, epoch)
        study.tell(trial, 0.3 if state == TrialState.COMPLETE else None, state=state)
    assert search.stopped_at_chance(study) == 1
    # a trial whose journal says why: its word, whatever its reports (the hook writes it since 2026-12-08)
    for why, value in (("at chance through epoch 5", 0.1001), ("pruned at epoch 5", 0.1001)):
        trial = study.ask()
        trial.set_user_attr("stopped", why)
        for epoch in range(1, 6):
            trial.report(value, epoch)
        study.tell(trial, None, state=TrialState.PRUNED)
    assert search.stopped_at_chance(study) == 2
    said = search.chance_text({"rsgh": study})
    assert said == "Trials stopped at chance: R-SGH 2 of 6; the warm-up alone would have kept each of them to epoch 20."
    assert search.chance_text({"sgh": st._continue("sgh", "cifar10", 64, tmp_path / "c")}) == ""


def test_a_study_may_start_from_its_arms_known_point(tmp_path):
    """known_point: the first trial asked is the arm's method at the patents' settings, the configuration the
    patents' pages train (compared field by field with the one patents_experiment builds), with the
    study's patience."""
    from rsgh.book import comparison
    from rsgh.book.store import Source

    source = Source(mode="render", runs_dir=tmp_path / "runs")
    patents = comparison.patents_experiment(source, "mnist", [64], [0], 200, 1)
    by_method = {cfg.method: cfg for _, cfg in patents.variants}
    for arm in st.ARMS:
        study = st._continue(arm, "mnist", 64, tmp_path / arm, patience=20, known_point=True)
        trial = study.ask()
        assert trial.user_attrs["known_point"] == "the patents' settings"
        cfg = st.trial_config(st.suggest(trial, arm), arm, "mnist", 64, 200, patience=20)
        expected = by_method[st.arm_method(arm)]
        differ = {k for k, v in cfg.__dict__.items() if getattr(expected, k) != v}
        assert differ == {"patience"}, differ
        assert cfg.patience == 20 and st.protocol(study)["patience"] == 20
        assert st.suggest(study.ask(), arm) != st.known_params(arm, "mnist")  # asked once, then the sampler's


def test_a_known_configuration_that_beats_the_search_is_reported():
    """known_point_table: the patents' runs' best validation mAP at the studies' code length, at the trials'
    seed (else the mean over seeds), against each arm's search; the arms whose search it beats are named, with
    the numbers."""
    from rsgh.book import search

    studies = {}
    for arm, best in (("sgh", 0.48), ("sgh-arch", 0.45), ("rsgh", 0.46)):
        study = optuna.create_study(direction="maximize")
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=best,
                                                  user_attrs={"best_epoch": 1, "epochs": 6}))
        studies[arm] = study
    finals = pd.DataFrame({"method": ["SGH"] * 3 + ["R-SGH"] * 3 + ["R-SGH"], "bits": [64] * 6 + [32],
                           "seed": [0, 1, 2, 0, 1, 2, 0],
                           "best_val_map": [0.46, 0.47, 0.48, 0.50, 0.51, 0.52, 0.9],
                           "best_epoch": [30, 40, 50, 170, 180, 190, 5]})
    table = search.known_point_table(studies, finals, 64)
    assert table["known point: best validation mAP"].tolist() == pytest.approx([0.46, 0.46, 0.50])  # seed 0's
    assert table["mean over seeds"].tolist() == pytest.approx([0.47, 0.47, 0.51])
    assert table["the search found better"].tolist() == ["yes", "no", "no"]
    text = search.known_point_text(table, "MNIST")
    assert "SGH, R-SGH's architecture (0.460 at epoch 30, seed 0" in text and "R-SGH (0.500 at epoch 170, seed 0" in text
    assert "not conclusive" in search.known_point_text(table, "MNIST", short=True)
    fine = search.known_point_table({"sgh": studies["sgh"]}, finals, 64)
    assert search.known_point_text(fine, "MNIST", short=True) == "" and "every search" in search.known_point_text(fine, "MNIST")
    assert search.known_point_table(studies, finals.iloc[:0], 64).empty
    other = search.known_point_table(studies, finals[finals["seed"] > 0], 64)  # no seed 0: the mean over seeds
    assert other["compared at"].tolist() == ["mean of 2 seeds"] * 3
    assert other["known point: best validation mAP"].tolist() == pytest.approx([0.475, 0.475, 0.515])
    noise = np.where(finals["method"] == "R-SGH", 0.021, 0.001)  # R-SGH: 0.46 >= 0.50 - 2 x 0.021; SGH-arch: 0.45 < 0.458
    noisy = search.known_point_table(studies, finals.assign(val_noise=noise), 64)
    assert noisy["the search found better"].tolist() == ["yes", "no", "within noise"]
    text = search.known_point_text(noisy, "MNIST")
    assert "R-SGH's search (0.460) lies below its known point (0.500 at epoch 170, seed 0) by less than 2 times" in text
    assert "for SGH, R-SGH's architecture (0.460" in text and "R-SGH (0.500" not in text.split("lies below")[0]


def test_the_evaluation_noise_of_a_run_is_read_from_the_second_half_of_its_curve():
    """with_evaluation_noise: the sd of consecutive differences of the second half's validation mAP over sqrt(2),
    against numpy on the same numbers; a climbing first half does not count."""
    from rsgh.book import search
    from rsgh.book.experiments import Results

    rng = np.random.default_rng(0)
    late = 0.5 + rng.normal(0, 0.01, 50)
    values = np.concatenate([np.linspace(0.1, 0.5, 50), late])
    curves = pd.DataFrame({"run": "a", "epoch": np.arange(1, 101), "iteration": np.arange(1, 101) * 10, "val_map": values})
    curves = pd.concat([pd.DataFrame({"run": ["a"], "epoch": [0], "iteration": [0], "val_map": [0.0]}), curves])
    finals = pd.DataFrame({"run": ["a"], "best_val_map": [values.max()]})
    out = search.with_evaluation_noise(Results([], curves, finals))
    assert out["val_noise"].iloc[0] == pytest.approx(np.std(np.diff(late), ddof=1) / np.sqrt(2))
    assert 0.007 < out["val_noise"].iloc[0] < 0.013  # the noise drawn, sd 0.01


def test_the_protocol_and_the_known_points_trial_are_said_as_the_studies_recorded_them(tmp_path):
    """protocol_text reads each study's recorded protocol (the first studies': pruning from the first epoch,
    patience 5; MNIST's: from epoch 20, patience 20, the known point first); known_point_trial says what
    became of the known point's trial, read from the journal."""
    from optuna.trial import TrialState

    from rsgh.book import search

    old = st._continue("sgh", "cifar10", 64, tmp_path / "old")
    new = st._continue("sgh", "mnist", 64, tmp_path / "new")
    first = new.ask()
    first.set_user_attr("epochs", 23.0)
    new.tell(first, state=TrialState.PRUNED)
    assert search.known_point_trial(new) == "pruned at epoch 23" and search.known_point_trial(old) == ""
    said = search.protocol_text({"sgh": st.open_study("sgh", "mnist", 64, tmp_path / "new", create=False)})
    assert said.startswith("In every study,") and "from epoch 20 on" in said and "for 20 epochs" in said
    assert "patents' settings" in said and "stays below 0.11 through epoch 5 stops there" in said
    assert "at chance" not in search.protocol_text({"sgh": old})  # a study recorded without the rule
    both = search.protocol_text({"sgh": old, "rsgh": new})
    assert "SGH: once 5 trials" in both and "from its first epoch on" in both and "for 5 epochs" in both
    assert "R-SGH: once 5 trials" in both and "from epoch 20 on" in both


def test_superseded_searches_are_listed_beside_the_ones_that_replaced_them(tmp_path):
    """Source.superseded_studies finds the store's superseded studies of a dataset (and notes them as read);
    superseded_table gives each one's trials, protocol and best value against today's, and its why.md."""
    from optuna.trial import TrialState

    from rsgh.book import search
    from rsgh.book.store import Source

    source = Source(mode="render", store=tmp_path)
    old_folder = tmp_path / "superseded" / "studies" / "mnist-k64-rsgh"
    old = st._continue("rsgh", "mnist", 64, old_folder, max_epochs=100, patience=5, warmup=0, known_point=False)
    now = st._continue("rsgh", "mnist", 64, tmp_path / "studies" / "mnist-k64-rsgh")
    for study, value in ((old, 0.46), (now, 0.49)):
        trial = study.ask()
        study.tell(trial, value)
        study.tell(study.ask(), state=TrialState.PRUNED)
    (old_folder / "why.md").write_text("It missed the known point.\n")
    later_folder = tmp_path / "superseded" / "studies" / "mnist-k64-rsgh.2"  # superseded in its turn
    later = st._continue("rsgh", "mnist", 64, later_folder)
    later.tell(later.ask(), 0.47)
    (later_folder / "why.md").write_text("Its range was too narrow.\n")
    assert source.superseded_studies("cifar10", 64) == []
    folders = source.superseded_studies("mnist", 64)
    assert folders == [("rsgh", old_folder), ("rsgh", later_folder)]
    assert source.reads == ["superseded/studies/mnist-k64-rsgh", "superseded/studies/mnist-k64-rsgh.2"]
    table = search.superseded_table([("rsgh", old_folder, old), ("rsgh", later_folder, later)], {"rsgh": now})
    assert table["best validation mAP"].tolist() == [0.46, 0.47]
    assert table["why superseded"].tolist() == ["It missed the known point.", "Its range was too narrow."]
    row = table.iloc[0].to_dict()
    assert row == {"arm": "R-SGH", "trials": 2,
                   "protocol": "at most 100 epochs, patience 5, pruning from epoch 1, stopped at chance after epoch 5",
                   "best validation mAP": 0.46, "now": 0.49, "why superseded": "It missed the known point."}
    assert search.protocol_short(now) == ("at most 200 epochs, patience 20, pruning from epoch 20, stopped at chance "
                                          "after epoch 5")


def _fake_trial(cfg, out, data_root, folder, study_name, trial_id, runtime=None):
    """A trial that writes what a finished run writes (its configuration, curve and summary) and reports its
    seed-free learning rate as its value: run_study's bookkeeping without training."""
    import json
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.to_json())
    (out / "metrics.csv").write_text("epoch,val_map\n1,0.1\n2,0.2\n")
    (out / "summary.json").write_text(json.dumps({"val_map": cfg.lr}))
    (out / "model.pt").write_bytes(b"weights are never kept")
    (out / "units.csv").write_text("epoch,unit,activity\n1,0,0.5\n")  # nor per-unit statistics
    return {"state": "complete", "value": cfg.lr, "best_epoch": 2, "epochs": 2, "seconds": 0.0}


def test_a_studys_trials_are_kept_in_the_store_as_they_end(tmp_path, monkeypatch):
    """keep_trials: every finished trial's small files (not its weights, nor its per-unit statistics) are copied as the trial ends, byte for
    byte, into a folder of its own named by the trial's run; a trial whose run folder is absent is an error."""
    import json

    from distributed import Client

    from rsgh.book import schedule
    from rsgh.train import task

    monkeypatch.setattr(task, "task_data", lambda *a, **k: None)  # features are not needed by the fake trials
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        monkeypatch.setattr(schedule, "_CLIENT", client)
        keep = tmp_path / "results" / "trials" / "mnist-k64-sgh"
        best = st.run_study("sgh", "mnist", 64, 3, None, tmp_path / "study", scratch=tmp_path / "scratch",
                            progress=False, trial_task=_fake_trial, keep_trials=keep)
        study = st.open_study("sgh", "mnist", 64, tmp_path / "study", create=False)
        runs = sorted(t.user_attrs["run"] for t in study.trials)
        assert sorted(p.name for p in keep.iterdir()) == runs and len(runs) == 3
        for run in runs:
            scratch = tmp_path / "scratch" / study.study_name / "trials" / run
            for name in ("config.json", "metrics.csv", "summary.json"):
                assert (keep / run / name).read_bytes() == (scratch / name).read_bytes()
            assert not (keep / run / "model.pt").exists() and not list((keep / run).glob("units.csv*"))
        assert json.loads((keep / best["run"] / "summary.json").read_text())["val_map"] == best["validation_map"]
    with pytest.raises(FileNotFoundError, match="the trial's run folder is not on this machine"):
        st._keep_trial(tmp_path / "nowhere" / "sgh-k64-s0-0", keep)


def test_a_best_trial_that_owes_its_rank_to_its_seed_is_named():
    """seed_luck_table: the best trial's value beside the other seeds' (mean, sd, max, margin in sd, computed
    here by hand); the text names an arm only when the trial's seed lies above every other seed by more than
    LUCK_MARGIN of their deviations."""
    import types

    from rsgh.book import search, study as st

    finals = pd.DataFrame({"method": [st.ARMS["sgh"]] * 5 + [st.ARMS["rsgh"]] * 5, "bits": 64,
                           "seed": list(range(5)) * 2,
                           "best_val_map": [0.53, 0.43, 0.44, 0.42, 0.45, 0.49, 0.48, 0.50, 0.49, 0.51]})
    studies = {"sgh": types.SimpleNamespace(best_value=0.53), "rsgh": types.SimpleNamespace(best_value=0.49)}
    table = search.seed_luck_table(studies, finals, 64)
    others = np.array([0.43, 0.44, 0.42, 0.45])
    row = table.iloc[0]
    assert row["other seeds: mean"] == pytest.approx(others.mean()) and row["max"] == pytest.approx(0.45)
    assert row["its seed's margin (sd)"] == pytest.approx((0.53 - others.mean()) / others.std(ddof=1))
    text = search.seed_luck_text(table)
    assert "The best configuration of SGH (0.530 with the trials' seed against 0.435 ± 0.013 over 4 other seeds" in text
    assert "R-SGH (" not in text
    assert "no best trial owes its rank" in search.seed_luck_text(table.iloc[1:])
    assert search.seed_luck_text(table.iloc[:0]) == ""
