"""The local cluster's door (issue 36): the ``LocalCluster`` that ``study`` and ``reproduce`` start speaks
TLS with temporary credentials on 127.0.0.1, so a process of the machine that does not hold them
cannot connect, let alone run a task (Dask's scheduler runs whatever a connected client sends it);
Dask's HTTP pages serve nothing unless ``RSGH_DASHBOARD=1``, and then only on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from rsgh.book import schedule

# A process that tries to run a task which creates ``marker``: without credentials, with a plain TCP
# connection to the same port, or with credentials of its own (Security.temporary()).
ATTEMPT = """
import pathlib, sys
from distributed import Client, Security
address, marker, how = sys.argv[1:4]
kwargs = {"timeout": "10s"}
if how == "tcp":
    address = address.replace("tls://", "tcp://")
elif how == "own-credentials":
    kwargs["security"] = Security.temporary()
try:
    with Client(address, **kwargs) as client:
        client.submit(pathlib.Path(marker).touch, pure=False).result(timeout=30)
    print("RAN")
except Exception as err:
    print("REFUSED", type(err).__name__)
"""


@pytest.fixture(scope="module")
def local():
    """The local cluster of one worker that rsgh starts (closed after: other tests want theirs)."""
    saved = {k: os.environ.get(k) for k in ("RSGH_WORKERS", "RSGH_SCHEDULER", schedule.TLS_VAR)}
    os.environ["RSGH_WORKERS"] = "1"
    os.environ.pop("RSGH_SCHEDULER", None)
    schedule._close()
    client = schedule.get_client()
    yield client
    schedule._close()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def attempt(address: str, marker: Path, how: str, credentials: bool = False) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "RSGH_"))}
    if credentials:
        env[schedule.TLS_VAR] = os.environ[schedule.TLS_VAR]
    code = ATTEMPT if not credentials else ATTEMPT.replace(
        "try:", "from rsgh.book.schedule import shared_security\nkwargs['security'] = shared_security(address)\ntry:")
    done = subprocess.run([sys.executable, "-c", code, address, str(marker), how], capture_output=True, text=True,
                          env=env, timeout=120)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr


@pytest.mark.slow
def test_the_local_cluster_listens_with_tls_on_this_machine_only(local):
    address = local.scheduler.address
    assert address.startswith("tls://127.0.0.1:")
    workers = local.scheduler_info(n_workers=-1)["workers"]
    assert workers and all(w.startswith("tls://127.0.0.1:") for w in workers)
    folder = Path(os.environ[schedule.TLS_VAR])
    assert folder.stat().st_mode & 0o077 == 0  # the shared credentials: this user's alone
    assert all((folder / f).stat().st_mode & 0o077 == 0 for f in ("ca.pem", "cert.pem", "key.pem"))
    assert local.submit(sum, [1, 2], pure=False).result() == 3


@pytest.mark.slow
def test_dasks_http_pages_serve_nothing_without_rsgh_dashboard(local):
    port = local.scheduler_info()["services"].get("dashboard")
    if port is None:
        return  # no HTTP server at all
    for page in ("info/main/workers.html", "health", "metrics", "status", "json/identity.json"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/{page}", timeout=10)
        assert refused.value.code == 404, page


@pytest.mark.slow
@pytest.mark.parametrize("how", ["no-credentials", "tcp", "own-credentials"])
def test_a_process_without_the_credentials_cannot_run_a_task(local, tmp_path, how):
    marker = tmp_path / "MARKER"
    result = attempt(local.scheduler.address, marker, how)
    assert result.startswith("REFUSED"), result
    assert not marker.exists()
    assert local.submit(sum, [1, 2], pure=False).result() == 3  # the cluster goes on


@pytest.mark.slow
def test_a_child_holding_the_shared_credentials_can(local, tmp_path):
    """What reproduce's notebook kernels do (they inherit RSGH_SCHEDULER and RSGH_SCHEDULER_TLS)."""
    marker = tmp_path / "MARKER"
    assert attempt(local.scheduler.address, marker, "tls", credentials=True) == "RAN"
    assert marker.exists()


@pytest.mark.slow
def test_the_dashboard_when_asked_listens_on_this_machine_only(monkeypatch):
    monkeypatch.setenv(schedule.DASHBOARD_VAR, "1")
    monkeypatch.setenv("RSGH_WORKERS", "1")
    cluster, security = schedule.local_cluster()
    try:
        assert cluster.dashboard_link.startswith("http://127.0.0.1:")
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
    finally:
        cluster.close()


@pytest.mark.slow
def test_the_readmes_tls_setup_for_a_cluster_of_ones_own(tmp_path):
    """``dask scheduler --protocol tls`` and ``dask worker`` with certificate files, and rsgh's client
    with the certificate in Dask's configuration (the README's commands); without it, refused."""
    import re
    import time

    from distributed import Security

    creds = Security.temporary()  # in the README: a CA of one's own and a certificate per role
    for name, text in (("ca.pem", creds.tls_ca_file), ("cert.pem", creds.tls_client_cert),
                       ("key.pem", creds.tls_client_key)):
        (tmp_path / name).write_text(text)
    tls = ["--tls-ca-file", tmp_path / "ca.pem", "--tls-cert", tmp_path / "cert.pem", "--tls-key", tmp_path / "key.pem"]
    dask = Path(sys.executable).parent / "dask"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "RSGH_"))}
    log = open(tmp_path / "scheduler.log", "w")
    procs = [subprocess.Popen([dask, "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", *tls], stdout=log, stderr=log, env=env)]
    try:
        deadline, address = time.monotonic() + 120, None
        while address is None and time.monotonic() < deadline:
            found = re.search(r"Scheduler at:\s+(tls://[\d.]+:\d+)", (tmp_path / "scheduler.log").read_text())
            address = found and found.group(1)
            time.sleep(0.2)
        assert address, (tmp_path / "scheduler.log").read_text()
        procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-dashboard", *tls],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        configured = dict(env, DASK_DISTRIBUTED__COMM__TLS__CA_FILE=str(tmp_path / "ca.pem"),
                          DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=str(tmp_path / "cert.pem"),
                          DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=str(tmp_path / "key.pem"))
        code = ("import sys; from rsgh.book.schedule import get_client; c = get_client(sys.argv[1]); "
                "c.wait_for_workers(1, timeout=60); print(c.submit(sum, [1, 2], pure=False).result())")
        done = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, env=configured,
                              timeout=180)
        assert done.stdout.strip() == "3", done.stderr[-2000:]
        marker = tmp_path / "MARKER"
        assert attempt(address, marker, "no-credentials").startswith("REFUSED") and not marker.exists()
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=60)
        log.close()


# A command that waits on a task of the local cluster (as study and reproduce do), then is interrupted.
WAITING = """
import sys, time
import rsgh.cli as cli

def waiting(args):
    from rsgh.book.schedule import get_client
    future = get_client().submit(time.sleep, 120, pure=False)
    print("waiting", flush=True)
    future.result()
    return 0

cli.cmd_summarize = waiting
if __name__ == "__main__":
    sys.exit(cli.main(["summarize", "x"]))
"""


@pytest.mark.slow
def test_ctrl_c_during_a_task_is_one_line(tmp_path):
    """Ctrl-C reaches every process of the terminal's group: the workers ignore it, this process closes the
    cluster, and stderr holds the one line (before: the workers' tracebacks and the resource tracker's warnings)."""
    import signal

    script = tmp_path / "waiting.py"
    script.write_text(WAITING)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "RSGH_"))}
    env["RSGH_WORKERS"] = "2"
    proc = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "waiting"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130
    assert err.strip() == "interrupted: rerun the same command (train: with --resume) to continue", err


KERNEL_PROBE = """
import json, os, sys
import nbformat, papermill as pm
from rsgh.book.reproduce import ipc_kernel_manager
folder = sys.argv[1]
nb = nbformat.v4.new_notebook()
nb.cells = [nbformat.v4.new_code_cell(
    "import glob, json, os\\n"
    "from ipykernel.connect import get_connection_file\\n"
    "info = json.load(open(get_connection_file()))\\n"
    "print(json.dumps({'transport': info['transport'], 'ip': info['ip'], 'sockets': glob.glob(info['ip'] + '-*'),"
    " 'mode': os.stat(os.path.dirname(info['ip'])).st_mode & 0o777}))")]
nbformat.write(nb, os.path.join(folder, "probe.ipynb"))
pm.execute_notebook(os.path.join(folder, "probe.ipynb"), os.path.join(folder, "out.ipynb"), kernel_name="python3",
                    progress_bar=False, cwd=folder, kernel_manager_class=ipc_kernel_manager())
print(nbformat.read(os.path.join(folder, "out.ipynb"), 4).cells[0].outputs[0]["text"].strip())
"""


def test_the_pages_kernels_listen_on_unix_sockets_in_a_private_folder(tmp_path):
    """A page's kernel (``rsgh reproduce``) takes code on Unix sockets in a folder only the user can enter,
    not on TCP ports of localhost in plain text; nothing is left in the page's working directory, and the
    folder is gone when the process ends."""
    done = subprocess.run([sys.executable, "-c", KERNEL_PROBE, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["transport"] == "ipc" and info["mode"] == 0o700
    assert len(info["sockets"]) == 5 and not Path(info["ip"]).is_relative_to(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ipynb", "probe.ipynb"]
    assert not Path(info["ip"]).parent.exists()
    assert "without encryption" not in done.stderr
