import pytest

from rsgh.config import PRESETS, Config, make_config, parse_overrides


def test_presets_hold_the_patents_settings():
    for name in ("e1-sgh", "e1-rsgh"):
        c = make_config(name)
        assert (c.dataset, c.hidden_layers, c.bits, c.batch_size) == ("mnist", 1, 64, 32)
        assert (c.delta, c.eta, c.prior, c.tau) == (0.01, 0.01, 0.5, 0.05)
        assert c.epochs >= 50
    assert make_config("e1-sgh").method == "sgh" and make_config("e1-rsgh").method == "rsgh"
    r = make_config("sgh-reference")
    assert (r.arch, r.objective, r.lr, r.batch_size, r.iterations, r.train_noise, r.sampling) == \
        ("reference", "reference", 1e-2, 500, 5000, "half", "replacement")


def test_overrides_are_typed_and_runtime_settings_kept_apart():
    assert parse_overrides(["bits=32", "delta=0.5", "method=sgh"]) == ({"bits": 32, "delta": 0.5, "method": "sgh"}, {})
    assert parse_overrides(["threads=2", "compile_step=true", "device=cpu", "bits=8"]) == \
        ({"bits": 8}, {"threads": 2, "compile_step": True, "device": "cpu"})


def test_identity_names_the_run_and_ignores_runtime_settings():
    a = make_config("e2-rsgh")
    assert a.run_name() == f"rsgh-k64-s0-{a.identity()}" and len(a.identity()) == 10
    assert make_config("e2-rsgh").identity() == a.identity()  # deterministic
    assert make_config("e2-rsgh", {"epochs": 199}).identity() != a.identity()  # a changed epochs is a new run
    assert not {"threads", "compile_step", "device"} & set(a.to_dict())


@pytest.mark.parametrize("pair", ["lr=nan", "tau=nan", "recon_sigma=inf", "delta=-inf"])
def test_non_finite_values_are_refused(pair):
    with pytest.raises(ValueError, match="finite"):
        parse_overrides([pair])
    key, text = pair.split("=")
    with pytest.raises(ValueError, match="finite"):
        make_config("e1-rsgh", {key: float(text)})


def test_runtime_validation():
    import torch

    from rsgh.config import Runtime

    with pytest.raises(ValueError, match="threads must be >= 1"):
        Runtime(threads=0).validate()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            Runtime(device="cuda").validate()


@pytest.mark.parametrize("pairs,msg", [
    (["bitz=3"], "unknown parameter.*did you mean bits"),
    (["bits=many"], "expected a value of type int"),
    (["bits"], "expected key=value"),
])
def test_bad_overrides(pairs, msg):
    with pytest.raises(ValueError, match=msg):
        parse_overrides(pairs)


@pytest.mark.parametrize("kw,msg", [
    (dict(method="fancy"), "method='fancy' is not one of"),
    (dict(bits=0), "bits must be > 0"),
    (dict(prior=1.0), "prior"),
    (dict(method="rsgh", hidden_layers=0), "hidden_layers >= 1"),
    (dict(epochs=0, iterations=0), "nothing to train"),
    (dict(objective="reference", method="rsgh"), "method=sgh"),
    (dict(delta=-1.0), "delta must be >= 0"),
])
def test_invalid_configurations(kw, msg):
    with pytest.raises(ValueError, match=msg):
        make_config("e1-rsgh", kw)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown config"):
        make_config("e9")


def test_every_preset_validates():
    for name in PRESETS:
        assert isinstance(make_config(name), Config)
