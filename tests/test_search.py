"""encode / search / evaluate (rsgh.index): results against an independent numpy ranking, append
without rewriting, every bad input as a one-line error, and atomic index writes under failure."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsgh import cli as rsgh_cli
from rsgh.index import encoder, store
from rsgh.index import query as index_query
from rsgh.config import Config
from rsgh.data.features import apply_scaling as scale_features
from rsgh.data.task import TaskData
from rsgh.train.loop import train
from rsgh.train.rundir import load_model

CLASSES = ("ant", "bee", "cat", "dog")


# ---------------------------------------------------------------------------------------------- helpers


def class_images(n_per_class=6, seed=0, size=28, channels=1):
    """{relative name: uint8 image}: a class pattern (the same for every seed) mixed with a random
    image of its own."""
    shape = (size, size) if channels == 1 else (size, size, channels)
    bases = {c: np.random.default_rng(k).integers(0, 256, shape) for k, c in enumerate(CLASSES)}
    rng = np.random.default_rng(100 + seed)
    return {f"{c}/{i:03d}.png": (0.5 * bases[c] + 0.5 * rng.integers(0, 256, shape)).astype(np.uint8)
            for c in CLASSES for i in range(n_per_class)}


def save_images(root: Path, images: dict) -> Path:
    for name, array in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / name)
    return root


def train_run(out: Path, x: np.ndarray, bits=32, scaling=None, **cfg) -> Path:
    """A tiny trained run directory (its config says what the images / features are). With
    ``feature_scaling="standardize"`` (the default) the training features are standardized and the
    scaling saved, as rsgh.runner does (or ``scaling`` is used and saved)."""
    cfg = Config(**{"task": "retrieval", "dataset": "mnist", "features": "pixels", "bits": bits, "hidden_layers": 1,
                    "batch_size": 16, "iterations": 40, "eval_every": 40,
                    "feature_scaling": "standardize", **cfg})
    x = x.astype(np.float32)
    if cfg.feature_scaling == "standardize":
        scaling = scaling or {"mean": x.mean(0), "std": np.where(x.std(0) > 0, x.std(0), 1.0)}
        x = scale_features(x, scaling)
    train(cfg, TaskData(x, x[:32]), out)
    if cfg.feature_scaling == "standardize":
        np.savez(out / "feature_scaling.npz", **scaling)
    return out


def pixels(images: dict) -> np.ndarray:
    return np.stack(list(images.values())).reshape(len(images), -1).astype(np.float32) / 255.0


def cli(capsys, *args):
    """rsgh.cli.main (what `python -m rsgh encode|search|evaluate` runs): (exit code, stdout, stderr)."""
    code = rsgh_cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_error(result, *fragments):
    code, _, err = result
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and err.count("error: ") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in last, last


def hamming_ranking(query_codes, db_codes):
    """Independent ground truth: distances by numpy XOR, stable sort = ties in insertion order."""
    d = (query_codes[:, None, :] != db_codes[None, :, :]).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")
    return np.take_along_axis(d, order, 1), order


def model_codes(run: Path, x: np.ndarray) -> np.ndarray:
    """The codes training would give these (unscaled) features."""
    model, cfg = load_model(run)
    if cfg.feature_scaling == "standardize":
        with np.load(run / "feature_scaling.npz") as z:
            x = scale_features(x, {"mean": z["mean"], "std": z["std"]})
    return model.hash(torch.as_tensor(x))[0].numpy()


def snapshot(folder: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino)
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    """A 28x28 grey model (an MNIST-like pixel run), its image folder, and the images."""
    tmp = tmp_path_factory.mktemp("grey")
    images = class_images()
    run = train_run(tmp / "run", pixels(class_images(20, seed=1)))
    return run, save_images(tmp / "images", images), images


@pytest.fixture(scope="module")
def grey_index(grey, tmp_path_factory):
    run, folder, images = grey
    index = tmp_path_factory.mktemp("idx") / "index"
    store.encode(run, folder, index, progress=False, quiet=True)
    return index


# ---------------------------------------------------------------------------------------------- results


def test_search_finds_the_query_itself_first_at_distance_zero(grey, grey_index, capsys):
    run, folder, images = grey
    codes = model_codes(run, pixels(images))
    unique = [n for n, c in zip(images, codes) if (codes == c).all(1).sum() == 1]
    assert len(unique) >= 10  # the precondition of this test: most codes differ
    code, out, err = cli(capsys, "search", "--index", grey_index, *[folder / n for n in unique[:10]], "--top", "3")
    assert code == 0, err
    assert "ties in distance are listed in insertion order" in out
    blocks = out.split("query ")[1:]
    assert len(blocks) == 10
    for name, block in zip(unique, blocks):
        rank1 = block.splitlines()[2].split()
        assert rank1[:3] == ["1", "0", name] and rank1[3] == name.split("/")[0]


@pytest.mark.parametrize("bits", [4, 32])
def test_rankings_equal_an_independent_numpy_ranking(tmp_path, bits):
    """Full rankings, including the order within ties (many at 4 bits), after an append too."""
    images = class_images(8)
    more = {f"zz/{i:03d}.png": im for i, im in enumerate(class_images(2, seed=5).values())}
    run = train_run(tmp_path / "run", pixels(class_images(20, seed=1)), bits=bits)
    first, second = save_images(tmp_path / "a", images), save_images(tmp_path / "b", more)
    index = tmp_path / "index"
    store.encode(run, first, index, progress=False, quiet=True)
    store.encode(run, second, index, progress=False, quiet=True)
    order = sorted(images) + sorted(more)  # insertion order: the folders' sorted names, shard after shard
    db = model_codes(run, pixels({n: {**images, **more}[n] for n in order}))
    queries = [first / n for n in list(images)[::5]] + [second / n for n in more][:3]
    q = model_codes(run, pixels({str(p): np.asarray(Image.open(p)) for p in queries}))
    want_d, want_i = hamming_ranking(q, db)
    loaded = store.load_index(index)
    assert loaded.names == order
    results = index_query.search(index, queries, top=len(order), quiet=True)
    for r, wd, wi in zip(results, want_d, want_i):
        assert [h["distance"] for h in r["results"]] == wd.tolist()
        assert [h["name"] for h in r["results"]] == [order[i] for i in wi]
    if bits == 4:
        assert (np.diff(want_d, axis=1) == 0).mean() > 0.5  # the ties were really exercised
    top3 = index_query.search(index, queries, top=3, quiet=True)
    assert [[h["name"] for h in r["results"]] for r in top3] == [[order[i] for i in wi[:3]] for wi in want_i]


@pytest.mark.slow
def test_mnist_png_copies_get_exactly_the_training_codes(tmp_path, mnist_root):
    """Real MNIST digits saved as PNG are encoded exactly as the IDX pixels the model saw."""
    from rsgh.data.mnist import load_mnist_like

    d = load_mnist_like("mnist", mnist_root)
    run = train_run(tmp_path / "run", d.train_x[:2000], bits=64, iterations=100, batch_size=32)
    digits = {f"{int(y)}/{i:04d}.png": np.rint(x.reshape(28, 28) * 255).astype(np.uint8)
              for i, (x, y) in enumerate(zip(d.test_x[:200], d.test_y[:200]))}
    save_images(tmp_path / "digits", digits)
    store.encode(run, tmp_path / "digits", tmp_path / "index", progress=False, quiet=True)
    index = store.load_index(tmp_path / "index")
    by_name = dict(zip(index.names, np.unpackbits(index.packed, axis=1, bitorder="little")))
    want = model_codes(run, d.test_x[:200])
    assert np.array_equal(np.stack([by_name[n] for n in digits]), want)


def test_gist_model_encodes_like_training(tmp_path):
    """A CIFAR-10 GIST model with standardized features: codes = model(scale(gist(image)))."""
    import rsgh.gist as gist_mod
    images = class_images(3, size=32, channels=3)
    feats = gist_mod.gist(np.stack(list(images.values())))
    scaling = {"mean": feats.mean(0), "std": np.where(feats.std(0) > 0, feats.std(0), 1.0)}
    run = train_run(tmp_path / "run", np.tile(feats, (3, 1)), bits=16, scaling=scaling, dataset="cifar10",
                    features="gist")
    save_images(tmp_path / "img", images)
    manifest = store.encode(run, tmp_path / "img", tmp_path / "index", progress=False, quiet=True)["manifest"]
    assert manifest["features"]["gist"] == gist_mod.GistParams().key()
    assert manifest["features"]["size"] == [32, 32] and manifest["features"]["mode"] == "RGB"
    index = store.load_index(tmp_path / "index")
    got = np.unpackbits(index.packed, axis=1, bitorder="little")[:, :16]
    assert np.array_equal(got, model_codes(run, feats))


def test_evaluate_matches_rsgh_metrics(grey, grey_index, tmp_path, capsys):
    from rsgh.eval.metrics import mean_average_precision

    run, folder, images = grey
    queries = class_images(2, seed=9)
    save_images(tmp_path / "q", queries)
    code, out, err = cli(capsys, "evaluate", "--index", grey_index, "--queries", tmp_path / "q", "--k", "5", "100")
    assert code == 0, err
    idx = store.load_index(grey_index)
    qc, dbc = model_codes(run, pixels(queries)), model_codes(run, pixels({n: images[n] for n in idx.names}))
    number = {c: i for i, c in enumerate(CLASSES)}
    want = mean_average_precision(qc, dbc, [number[n.split("/")[0]] for n in queries],
                                  [number[n.split("/")[0]] for n in idx.names])
    assert f"mAP (exact expectation over the order within Hamming ties): {want:.4f}" in out
    assert "precision@5:" in out and "precision within Hamming radius 2:" in out
    assert "not computed for k > 24: 100" in out


# ---------------------------------------------------------------------------------------------- append


def test_append_writes_a_new_shard_and_never_rewrites_the_first(grey, tmp_path, capsys):
    run, folder, images = grey
    index = tmp_path / "index"
    assert cli(capsys, "encode", "--model", run, "--images", folder, "--out", index, "--quiet")[0] == 0
    before = snapshot(index)
    more = save_images(tmp_path / "more", {**{n: images[n] for n in list(images)[:3]},  # 3 names already there
                                           **{f"eel/{i}.png": im for i, im in enumerate(class_images(1, 7).values())}})
    code, out, err = cli(capsys, "encode", "--images", more, "--out", index)  # the index's own model
    assert code == 0, err
    assert "skipped 3 image(s) whose names are already in the index" in err
    after = snapshot(index)
    for name in ("shard-00000.faissbin", "shard-00000.csv", "model.pt"):
        assert after[name] == before[name]  # same bytes, same mtime, same inode: not rewritten
    assert {"shard-00001.faissbin", "shard-00001.csv"} <= set(after)
    loaded = store.load_index(index)
    assert len(loaded) == len(images) + 4 and loaded.names[-4:] == [f"eel/{i}.png" for i in range(4)]
    assert f"{len(images) + 4:,} images" in out and "memory for the codes:" in out
    # everything already present: nothing written
    assert cli(capsys, "encode", "--images", more, "--out", index)[0] == 0
    assert snapshot(index) == after


# ---------------------------------------------------------------------------------------------- bad inputs


def test_undecodable_images_are_skipped_with_a_count_and_none_left_is_an_error(grey, tmp_path, capsys):
    run, _, images = grey
    folder = save_images(tmp_path / "mixed", {n: images[n] for n in list(images)[:2]})
    (folder / "ant" / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "ant" / "empty.jpg").write_bytes(b"")
    code, _, err = cli(capsys, "encode", "--model", run, "--images", folder, "--out", tmp_path / "i1", "--quiet")
    assert code == 0 and "skipped 2 undecodable file(s): ant/broken.png" in err
    assert len(store.load_index(tmp_path / "i1")) == 2
    bad = tmp_path / "bad"
    (bad / "x").mkdir(parents=True)
    (bad / "x" / "a.png").write_bytes(b"junk")
    (bad / "x" / "b.jpg").write_bytes(b"junk")
    result = cli(capsys, "encode", "--model", run, "--images", bad, "--out", tmp_path / "i2", "--quiet")
    assert_error(result, "none of the 2 image files", "could be decoded")
    assert "skipped 2 undecodable" in result[2]
    assert not (tmp_path / "i2").exists()  # a failed first encode leaves no folder behind


def test_grey_rgba_palette_and_other_sizes_are_converted_and_counted(grey, tmp_path, capsys):
    run, _, images = grey
    arr = next(iter(images.values()))
    folder = tmp_path / "odd"
    folder.mkdir()
    Image.fromarray(arr).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(arr).convert("P").save(folder / "palette.png")
    Image.fromarray(np.stack([arr] * 3, -1)).resize((40, 30)).save(folder / "rgb_big.png")
    Image.fromarray(arr).save(folder / "grey.png")
    code, _, err = cli(capsys, "encode", "--model", run, "--images", folder, "--out", tmp_path / "i")
    assert code == 0, err
    assert "converted 3 image(s) to grey" in err and "RGBA 1 (alpha dropped)" in err and "P 1" in err
    assert "resized 1 image(s) to 28x28 with PIL bilinear" in err and "30x40 x1" in err
    idx = store.load_index(tmp_path / "i")
    codes = dict(zip(idx.names, map(bytes, idx.packed)))
    assert codes["rgba.png"] == codes["grey.png"] == codes["palette.png"]  # lossless conversions: same code
    assert idx.labels == [None] * 4  # a flat folder: no labels
    # an RGB model given a grey image converts it to RGB
    rgb_run = train_run(tmp_path / "rgb", pixels(class_images(8, size=32, channels=3)), bits=16, dataset="cifar10")
    code, _, err = cli(capsys, "encode", "--model", rgb_run, "--images", folder / "grey.png", "--out", tmp_path / "j")
    assert code == 0 and "converted 1 image(s) to RGB" in err and "resized 1 image(s) to 32x32" in err


def test_model_whose_input_size_does_not_match_the_features(tmp_path, grey, capsys):
    _, folder, _ = grey
    run = train_run(tmp_path / "run", np.random.default_rng(0).random((64, 20)))  # says mnist, takes 20 inputs
    assert_error(cli(capsys, "encode", "--model", run, "--images", folder, "--out", tmp_path / "i"),
                 "the model takes 20 inputs", "gives 784 features")
    assert not (tmp_path / "i").exists()


def test_index_of_another_model_or_other_feature_parameters_is_refused(grey, grey_index, tmp_path, capsys):
    run, folder, _ = grey
    other = train_run(tmp_path / "other", pixels(class_images(20, seed=3)), seed=1)
    before = snapshot(grey_index)
    assert_error(cli(capsys, "encode", "--model", other, "--images", folder, "--out", grey_index),
                 "was built with another model")
    assert snapshot(grey_index) == before
    # an index whose recorded feature parameters differ from what this rsgh computes
    index = tmp_path / "index"
    store.encode(run, folder, index, progress=False, quiet=True)
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["features"]["size"] = [32, 32]
    (index / "manifest.json").write_text(json.dumps(manifest))
    query = folder / "ant/000.png"
    assert_error(cli(capsys, "encode", "--model", run, "--images", folder, "--out", index),
                 "other feature parameters", "size: index [32, 32] vs now [28, 28]")
    assert_error(cli(capsys, "search", "--index", index, query), "other feature parameters")


def test_nan_or_infinite_features_are_an_error(grey, tmp_path, capsys, monkeypatch):
    run, folder, images = grey
    # a standardizing run whose saved scaling would make features infinite
    x = pixels(class_images(20, seed=1))
    srun = train_run(tmp_path / "srun", x)
    np.savez(srun / "feature_scaling.npz", mean=x.mean(0), std=np.zeros(784))
    assert_error(cli(capsys, "encode", "--model", srun, "--images", folder, "--out", tmp_path / "i"),
                 "non-positive")
    (srun / "feature_scaling.npz").unlink()
    assert_error(cli(capsys, "encode", "--model", srun, "--images", folder, "--out", tmp_path / "i"),
                 "feature_scaling.npz not found")
    # features that come out NaN (whatever the cause) are never hashed
    real = encoder.image_features
    monkeypatch.setattr(encoder, "image_features", lambda im, spec: np.where(np.arange(784) == 3, np.nan, real(im, spec)))
    assert_error(cli(capsys, "encode", "--model", run, "--images", folder, "--out", tmp_path / "i"),
                 "contain NaN or infinite values")
    assert not (tmp_path / "i").exists()


def test_missing_or_corrupt_index(grey, grey_index, tmp_path, capsys):
    run, folder, _ = grey
    query = folder / "ant/000.png"
    assert_error(cli(capsys, "search", "--index", tmp_path / "nowhere", query), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_error(cli(capsys, "search", "--index", tmp_path / "empty", query), "not an rsgh index")

    def damaged(change, *fragments):
        index = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        store.encode(run, folder, index, progress=False, quiet=True)
        change(index)
        assert_error(cli(capsys, "search", "--index", index, query), *fragments)

    damaged(lambda i: (i / "manifest.json").write_text("{not json"), "not a readable rsgh index manifest")
    damaged(lambda i: (i / "manifest.json").write_text('{"format": "other"}'), "not a readable rsgh index manifest")
    damaged(lambda i: (i / "shard-00000.faissbin").unlink(), "shard-00000.faissbin", "is missing")
    damaged(lambda i: (i / "shard-00000.faissbin").write_bytes(b"\0" * 40), "does not match its sha256")
    damaged(lambda i: (i / "shard-00000.csv").write_text("name,label,sha1\n"), "shard-00000.csv does not match")
    damaged(lambda i: (i / "model.pt").write_bytes(b"garbage"), "model.pt does not match its sha256")

    def unreadable_shard(i):  # a shard that matches the manifest but is not a faiss index
        (i / "shard-00000.faissbin").write_bytes(b"garbage")
        m = json.loads((i / "manifest.json").read_text())
        m["shards"][0]["codes_sha256"] = encoder.sha256(i / "shard-00000.faissbin")
        (i / "manifest.json").write_text(json.dumps(m))

    damaged(unreadable_shard, "is not a faiss IndexBinaryFlat")


@pytest.mark.parametrize("top", ["0", "-3"])
def test_top_must_be_positive(grey, grey_index, capsys, top):
    _, folder, _ = grey
    assert_error(cli(capsys, "search", "--index", grey_index, folder / "ant/000.png", "--top", top),
                 f"--top must be a positive integer, got {top}")


def test_other_user_mistakes(grey, grey_index, tmp_path, capsys):
    run, folder, _ = grey
    query = folder / "ant/000.png"
    out = tmp_path / "i"
    cases = [
        (["encode", "--model", tmp_path / "norun", "--images", folder, "--out", out], "does not exist"),
        (["encode", "--model", folder, "--images", folder, "--out", out], "model.pt not found"),
        (["encode", "--model", run, "--images", tmp_path / "none", "--out", out], "does not exist"),
        (["encode", "--model", run, "--images", run, "--out", out], "no image files"),
        (["encode", "--model", run, "--images", folder, "--out", run], "holds other files"),
        (["encode", "--model", run, "--images", folder, "--out", query], "is a file, not an index folder"),
        (["encode", "--images", folder, "--out", out], "give --model RUN_DIR"),
        (["search", "--index", grey_index, tmp_path / "missing.png"], "does not exist"),
        (["search", "--index", grey_index, folder], "is a folder"),
        (["evaluate", "--index", grey_index, "--queries", folder, "--k", "0"], "--k must be positive"),
        (["evaluate", "--index", grey_index, "--queries", folder, "--radius", "-1"], "--radius must be"),
    ]
    for args, fragment in cases:
        assert_error(cli(capsys, *args), fragment)
    assert not out.exists()
    (tmp_path / "junk.png").write_bytes(b"junk")
    result = cli(capsys, "search", "--index", grey_index, tmp_path / "junk.png")
    assert_error(result, "none of the 1 query image(s) could be decoded")
    bad_model = tmp_path / "badrun"
    bad_model.mkdir()
    (bad_model / "model.pt").write_bytes(b"not a model")
    assert_error(cli(capsys, "encode", "--model", bad_model, "--images", folder, "--out", out),
                 "model.pt is not a readable rsgh file", "get an intact copy")


def test_evaluate_needs_labels_that_share_classes(grey, grey_index, tmp_path, capsys):
    run, folder, images = grey
    flat = save_images(tmp_path / "flat", {"a.png": next(iter(images.values()))})
    assert_error(cli(capsys, "evaluate", "--index", grey_index, "--queries", flat), "have no label")
    other = save_images(tmp_path / "other", {"emu/a.png": next(iter(images.values()))})
    assert_error(cli(capsys, "evaluate", "--index", grey_index, "--queries", other), "share no class")
    store.encode(run, flat, tmp_path / "flat_index", progress=False, quiet=True)
    assert_error(cli(capsys, "evaluate", "--index", tmp_path / "flat_index", "--queries", folder),
                 "unlabelled image(s)")


def test_errors_from_a_real_process_are_one_line_without_traceback(tmp_path):
    for args, fragment in [(["search", "--index", str(tmp_path), "x.png"], "not an rsgh index"),
                           (["encode", "--model", str(tmp_path), "--images", ".", "--out", str(tmp_path / "i")],
                            "model.pt not found")]:
        p = subprocess.run([sys.executable, "-m", "rsgh", *args], capture_output=True, text=True)
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert p.stderr.strip().count("\n") == 0 and fragment in p.stderr


def test_the_main_command_line_registers_the_subcommands():
    from rsgh.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"train", "summarize", "reproduce", "encode", "search", "evaluate"} <= set(commands)
    for name in ("encode", "search", "evaluate"):
        p = subprocess.run([sys.executable, "-m", "rsgh", name, "--help"], capture_output=True, text=True)
        assert p.returncode == 0 and "usage:" in p.stdout


# ---------------------------------------------------------------------------------------------- atomicity


def failing_write(monkeypatch, n):
    """Make the n-th atomic file write of rsgh.index.store (1-based) fail, as a full disk would."""
    calls = []
    real = store._write_atomic

    def write(path, fn):
        calls.append(path.name)
        if len(calls) == n:
            raise OSError(28, "No space left on device (simulated)", str(path))
        real(path, fn)

    monkeypatch.setattr(store, "_write_atomic", write)
    return calls


@pytest.mark.parametrize("step", [1, 2, 3])  # the new shard's codes, its list, the manifest
def test_a_failure_at_any_step_of_an_append_leaves_the_index_intact(grey, tmp_path, capsys, monkeypatch, step):
    run, folder, images = grey
    index = tmp_path / "index"
    store.encode(run, folder, index, progress=False, quiet=True)
    before = snapshot(index)
    query = folder / "ant/000.png"
    results = index_query.search(index, [query], top=5, quiet=True)
    more = save_images(tmp_path / "more", {f"eel/{i}.png": im for i, im in enumerate(class_images(1, 7).values())})
    calls = failing_write(monkeypatch, step)
    assert_error(cli(capsys, "encode", "--images", more, "--out", index), "the disk is full")
    assert calls == ["shard-00001.faissbin", "shard-00001.csv", "manifest.json"][:step]
    monkeypatch.undo()
    after = snapshot(index)
    assert all(after[name] == before[name] for name in before)  # nothing committed was touched
    assert len(store.load_index(index)) == len(images)
    assert index_query.search(index, [query], top=5, quiet=True) == results
    # the next encode replaces any orphan shard and commits
    assert cli(capsys, "encode", "--images", more, "--out", index, "--quiet")[0] == 0
    assert len(store.load_index(index)) == len(images) + 4


@pytest.mark.parametrize("step", [1, 2, 3, 4, 5])  # model copy, scaling copy, codes, list, manifest
def test_a_failure_at_any_step_of_a_first_encode_leaves_nothing(grey, tmp_path, capsys, monkeypatch, step):
    run, folder, images = grey
    index = tmp_path / "index"
    calls = failing_write(monkeypatch, step)
    assert_error(cli(capsys, "encode", "--model", run, "--images", folder, "--out", index), "the disk is full")
    assert calls[-1] == ["model.pt", "feature_scaling.npz", "shard-00000.faissbin", "shard-00000.csv",
                         "manifest.json"][step - 1]
    monkeypatch.undo()
    assert not index.exists()


# One real process for every SIGKILL scenario (importing torch is the slow part): it imports, then
# per scenario forks a child that patches one step to SIGKILL itself and runs the command line.
KILLER = textwrap.dedent("""
    import json, os, pathlib, signal, sys
    import faiss, torch
    import rsgh.cli as rs_cli
    import rsgh.index.store as rs_store

    def kill(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)

    def half_then_kill(path, data):  # a shard file half written (the shard is the one write_bytes), then the kill
        real_write(path, data[:len(data) // 2])
        kill()

    real_write = pathlib.Path.write_bytes
    statuses = []
    for when, argv in json.loads(sys.argv[1]):
        pid = os.fork()
        if pid == 0:
            if when == "before-manifest":
                rs_store._write_manifest = kill
            else:
                pathlib.Path.write_bytes = half_then_kill
            rs_cli.main(argv)
            os._exit(0)
        statuses.append(os.waitpid(pid, 0)[1])
    print(json.dumps([os.WIFSIGNALED(s) and os.WTERMSIG(s) == signal.SIGKILL for s in statuses]))
""")


@pytest.mark.slow
def test_sigkill_while_writing_leaves_the_previous_index(grey, tmp_path):
    """SIGKILL in the middle of writing a shard, or between the shard and the manifest: the index
    is what it was (a first encode leaves no index), and the next encode completes it."""
    run, folder, images = grey
    more = save_images(tmp_path / "more", {f"eel/{i}.png": im for i, im in enumerate(class_images(1, 7).values())})
    scenarios, before = [], {}
    for when in ("before-manifest", "inside-shard-write"):
        index = tmp_path / f"append-{when}"
        store.encode(run, folder, index, progress=False, quiet=True)
        before[index] = snapshot(index)
        scenarios.append((when, ["encode", "--images", str(more), "--out", str(index), "--quiet"]))
    first = tmp_path / "first"
    scenarios.append(("before-manifest", ["encode", "--model", str(run), "--images", str(folder), "--out", str(first),
                                          "--quiet"]))
    p = subprocess.run([sys.executable, "-c", KILLER, json.dumps(scenarios)], capture_output=True, text=True)
    assert p.returncode == 0 and json.loads(p.stdout) == [True, True, True], p.stderr
    for index, snap in before.items():
        after = snapshot(index)
        assert all(after[name] == snap[name] for name in snap)
        assert any(name.startswith(".rsgh-tmp-shard-00001") or name == "shard-00001.faissbin" for name in after)
        assert len(store.load_index(index)) == len(images)
        assert rsgh_cli.main(["encode", "--images", str(more), "--out", str(index), "--quiet"]) == 0
        assert len(store.load_index(index)) == len(images) + 4
        assert not [f.name for f in index.iterdir() if f.name.endswith(".tmp")]
    assert (first / "shard-00000.faissbin").exists() and not (first / "manifest.json").exists()
    assert rsgh_cli.main(["search", "--index", str(first), str(folder / "ant/000.png")]) == 2  # not an index
    assert rsgh_cli.main(["encode", "--model", str(run), "--images", str(folder), "--out", str(first), "--quiet"]) == 0
    assert len(store.load_index(first)) == len(images)


# ---------------------------------------------------------------------------------------------- picture


def test_result_grid_saves_a_png(grey, grey_index, tmp_path):
    pytest.importorskip("matplotlib")
    _, folder, _ = grey
    out = index_query.result_grid(grey_index, [folder / "ant/000.png", folder / "dog/001.png"], 4, tmp_path / "g.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 100
