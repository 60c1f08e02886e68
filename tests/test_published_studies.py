"""The studies in the results store, as a referee checks them: each finished study ran to its budget, its
best value of every continuous parameter lies inside its range (not in the outer tenth), and its best
trial's training finished (its best epoch before its last)."""

import json
import re

import pytest

from rsgh.book import study as st
from rsgh.book.reproduce import PLAN, pages
from rsgh.book.store import ROOT as STORE


def _budgets() -> dict:
    """{study name: finished trials the book asks for}, from the study pages' book parameters."""
    out = {}
    for name, _, params in pages(PLAN, "book"):
        if "dataset" in params and "trials" in params:
            for arm in st.ARMS:
                out[st.study_name(arm, params["dataset"], params.get("study_bits", 64))] = params["trials"]
    return out


def _finished() -> list[tuple[str, dict]]:
    done = []
    for name, budget in _budgets().items():
        path = STORE / "studies" / name / "best.json"
        if path.exists():
            doc = json.loads(path.read_text())
            if doc["trials"]["complete"] + doc["trials"]["pruned"] >= budget:
                done.append((name, doc))
    return done


def test_every_study_page_names_a_study_with_a_budget_per_arm():
    budgets = _budgets()
    assert {n.split("-k")[0] for n in budgets} == {"cifar10", "mnist", "fashion-mnist"}
    assert all(budgets[n] >= (100 if n.startswith("cifar10") else 60) for n in budgets)


@pytest.mark.parametrize("name,doc", _finished() or [pytest.param(None, None, marks=pytest.mark.skip("no study finished"))])
def test_a_finished_studys_optimum_lies_inside_its_ranges_and_its_training_finished(name, doc):
    assert doc["edges"] == {}, f"{name}: best values in the outer tenth of their range: {doc['edges']}"
    dataset, bits, arm = re.fullmatch(r"(.+)-k(\d+)-(sgh|sgh-arch|rsgh)", name).groups()
    study = st.open_study(arm, dataset, int(bits), STORE / "studies" / name, create=False)
    assert st.edge_values(study) == {}  # recomputed from the journal, not only as best.json says
    best = study.best_trial
    assert best.user_attrs["best_epoch"] < best.user_attrs["epochs"], \
        f"{name}: the best trial's best epoch is its last ({best.user_attrs['best_epoch']}): training did not finish"
    assert doc["validation_map"] == pytest.approx(best.value)
