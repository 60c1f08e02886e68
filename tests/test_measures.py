"""The measurements of a trained group against an independent float64 computation (numpy)."""

import numpy as np
import pytest
import torch

from rsgh.method.measures import evaluate, mean_abs_correlation
from rsgh.method.model import HashModel


def _numpy_measures(model: HashModel, x: np.ndarray, g: int, prior: float) -> dict:
    """One model's measures in float64, layer by layer, without the package's evaluation."""
    p = {k: v[g].detach().double().numpy() for k, v in model.params.items()}
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    relu = lambda z: np.maximum(z, 0)  # noqa: E731
    a = relu(x @ p["enc0_weight"] + p["enc0_bias"])
    logits = a @ p["enc1_weight"] + p["enc1_bias"]
    pi = sig(logits)
    h = (logits >= 0).astype(np.float64)
    x_hat = relu(h @ p["dec0_weight"] + p["dec0_bias"]) @ p["dec1_weight"] + p["dec1_bias"]
    kl = (pi * np.log(pi / prior) + (1 - pi) * np.log((1 - pi) / (1 - prior))).sum(0) / len(x)
    varying = h.std(0) > 0
    corr = np.corrcoef(h[:, varying], rowvar=False)
    return {"recon_mse": ((x - x_hat) ** 2).mean(), "kl_total": kl.sum(), "activity": pi.var(0),
            "balance": h.mean(0), "bit_corr_mean": np.abs(corr[np.triu_indices(varying.sum(), 1)]).mean()}


def test_evaluate_against_numpy_in_float64():
    rng = np.random.default_rng(0)
    x = rng.random((700, 30)).astype(np.float32)
    model = HashModel(30, 8, seeds=[0, 1])
    got = evaluate(model, torch.as_tensor(x), [0.5, 0.3], batch_size=256)  # batches cross the data
    for g, prior in enumerate([0.5, 0.3]):
        ref = _numpy_measures(model, x.astype(np.float64), g, prior)
        scalars, per_bit = got[g]
        assert scalars["recon_mse"] == pytest.approx(ref["recon_mse"], rel=1e-6)
        assert scalars["kl_total"] == pytest.approx(ref["kl_total"], rel=1e-5)
        assert scalars["bit_corr_mean"] == pytest.approx(ref["bit_corr_mean"], rel=1e-9)
        np.testing.assert_allclose(per_bit["activity"], ref["activity"], rtol=1e-5)
        np.testing.assert_array_equal(per_bit["balance"], ref["balance"])


def test_mean_abs_correlation_against_corrcoef_with_constant_bits():
    rng = np.random.default_rng(1)
    for n in (3, 100, 20_000):
        h = (rng.random((n, 24)) < rng.random(24)).astype(np.uint8)
        h[:, 0], h[:, 7] = 1, 0  # constant bits are left out
        v = h.std(0) > 0
        ref = np.abs(np.corrcoef(h[:, v].astype(np.float64), rowvar=False)[np.triu_indices(v.sum(), 1)]).mean()
        assert mean_abs_correlation(h) == pytest.approx(ref, rel=1e-12)
        assert mean_abs_correlation(torch.as_tensor(h)) == pytest.approx(ref, rel=1e-12)


def test_mean_abs_correlation_edge_cases():
    assert np.isnan(mean_abs_correlation(np.zeros((10, 4))))
    assert np.isnan(mean_abs_correlation(np.array([[0, 1], [1, 1]])))  # one varying bit: no pair
    with pytest.raises(ValueError, match="codes of 0 and 1"):
        mean_abs_correlation(np.full((3, 3), 0.5))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_hash_refuses_every_input_that_is_not_finite_and_counts_its_rows(bad):
    """The finiteness check (a sum first) against numpy's isfinite: any NaN or infinity, also beside
    values of the other sign or ones whose sum overflows, is refused with the count of bad rows, and
    finite inputs whose sum overflows float32 are hashed."""
    model = HashModel(30, 8, seeds=[0])
    x = torch.full((50, 30), 3e38)  # finite, but their sum is inf
    assert np.isfinite(x.numpy()).all() and not torch.isfinite(x.sum())
    assert model.hash(x).shape == (1, 50, 8)
    for other in (0.0, 3e38, -3e38, -bad):
        y = torch.full((50, 30), other)
        y[[3, 7, 7], [0, 29, 5]] = bad
        if other == -bad:
            y[11, 2] = other  # rows 3 and 7 hold `bad`, row 11 its opposite: 3 bad rows
        expected = int((~np.isfinite(y.numpy())).any(1).sum())
        with pytest.raises(ValueError, match=f"^{expected} input row"):
            model.hash(y)


def test_dead_units_are_the_relu_units_silent_on_every_input():
    """Against a plain loop over the layers of one member: a unit is dead when its ReLU output is 0 for
    every row; a bias pushed far below zero kills a whole layer of the second member only."""
    import torch

    from rsgh.method.measures import dead_units
    from rsgh.method.model import HashModel

    model = HashModel(12, 6, 3, "mlp", [0, 1])
    with torch.no_grad():
        model.params["enc1_bias"][1] -= 1e3
    x = torch.rand(50, 12)
    got = dead_units(model, x, batch_size=7)  # several blocks
    for g in range(2):
        h, want = x, []
        for i in range(3):
            h = torch.relu(h @ model.params[f"enc{i}_weight"][g] + model.params[f"enc{i}_bias"][g])
            want.append(float((h.max(dim=0).values <= 0).float().mean()))
        assert got[g] == pytest.approx(want)
    assert got[1][1] == 1.0 and got[0][1] < 1.0  # the next layer then outputs only its biases: constant codes
    assert dead_units(HashModel(12, 6, 0, "reference", [0], torch.zeros(12), torch.ones(12)), x) == [[]]
