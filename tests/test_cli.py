import json
import subprocess
import sys
from dataclasses import fields

import pandas as pd
import pytest

from rsgh.cli import main
from rsgh.config import Config


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "rsgh", *args], capture_output=True, text=True, env=env)


def test_help_documents_every_parameter_and_default():
    out = run_cli("train", "--help")
    assert out.returncode == 0
    for f in fields(Config):
        assert f"  {f.name} (" in out.stdout and f"default {f.default!r}" in out.stdout
    for preset in ("e1-sgh", "e1-rsgh", "sgh-reference"):
        assert preset in out.stdout


@pytest.mark.slow
def test_train_from_the_command_line_on_real_mnist(tmp_path, mnist_root, capsys):
    out = tmp_path / "run"
    args = ["train", "--config", "e1-rsgh", "--set", "iterations=60", "--set", "eval_every=30",
            "--out", str(out), "--data-root", str(mnist_root), "--quiet"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    m = pd.read_csv(out / "metrics.csv")
    assert m["iteration"].tolist() == [0, 30, 60]
    assert printed["recon_mse"] == m["recon_mse"].iloc[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data_source"] == "MNIST" and summary["config"]["iterations"] == 60
    # a second run into the same folder is refused, with the fix in one line
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.slow
def test_user_mistakes_give_one_line_errors(tmp_path):
    for args, msg in [
        (["--set", "bitz=3"], "did you mean bits"),
        (["--set", "bits=x"], "type int"),
        (["--set", "method=fancy"], "not one of"),
    ]:
        out = run_cli("train", "--config", "e1-sgh", *args, "--out", str(tmp_path / "x"))
        assert out.returncode == 2 and msg in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_missing_data_is_a_clear_error(tmp_path):
    out = run_cli("train", "--config", "e1-sgh", "--out", str(tmp_path / "x"), "--data-root", str(tmp_path / "none"),
                  env={"PATH": "", "RSGH_OFFLINE": "1"})
    assert out.returncode == 2 and "missing" in out.stderr and "Traceback" not in out.stderr
