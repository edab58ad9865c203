"""Deployment scripts: certificates, site keys, SuperLink with TLS + SuperNode auth, joining.

The slow test starts a real ``flower-superlink`` and real ``flower-supernode`` processes on
127.0.0.1 (free ports chosen at run time), each with its own FLWR_HOME under ``tmp_path``.
Every process is stopped by its PID (process group) in a finalizer, also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
FLOWER_BIN = Path(sys.executable).parent
NEEDS_TOOLS = pytest.mark.skipif(
    shutil.which("openssl") is None or shutil.which("ssh-keygen") is None,
    reason="openssl and ssh-keygen are needed to make certificates and site keys",
)
NEEDS_FLOWER = pytest.mark.skipif(
    not (FLOWER_BIN / "flower-superlink").exists(),
    reason=f"flower-superlink not installed beside {sys.executable}",
)
DEPLOY_SCRIPTS = [
    "make_certificates.sh",
    "start_superlink.sh",
    "stop_superlink.sh",
    "register_site.sh",
    "list_sites.sh",
    "make_site_key.sh",
    "join_federation.sh",
    "build_wheelhouse.sh",
]


def script_env(home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLWR_BIN=str(FLOWER_BIN),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PATH=f"{FLOWER_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    if home is not None:
        env["FLWR_HOME"] = str(home)
    return env


def run_script(
    name: str, *args: str, cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPTS / name), *args],
        cwd=cwd,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def stop_group(pid: int, timeout: float = 15) -> None:
    """SIGTERM the process group led by ``pid``, SIGKILL it if it outlives ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def stop_process(process: subprocess.Popen) -> None:
    """Stop a process we started in its own session, reaping it (a zombie keeps its group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    stop_group(process.pid, timeout=5)


def children_of(parent_pid: int) -> list[int]:
    """Detached helpers Flower starts with ``--parent-pid`` (the SuperLink's SuperExec)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            b"--parent-pid" in cmdline
            and cmdline[cmdline.index(b"--parent-pid") + 1] == str(parent_pid).encode()
        ):
            found.append(int(proc.name))
    return found


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Popen objects started in their own session; all their groups are stopped at the end."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        stop_process(process)


def start_site(
    processes: list[subprocess.Popen], tmp_path: Path, name: str, *args: str
) -> subprocess.Popen:
    log = (tmp_path / f"{name}.log").open("w")
    process = subprocess.Popen(
        ["bash", str(SCRIPTS / "join_federation.sh"), *args],
        cwd=tmp_path,
        env=script_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    processes.append(process)
    return process


def site_args(tmp_path: Path, port: int, ca: Path, key: Path, name: str) -> list[str]:
    (tmp_path / "data").mkdir(exist_ok=True)
    return [
        "--superlink",
        f"127.0.0.1:{port}",
        "--ca",
        str(ca),
        "--key",
        str(key),
        "--site",
        name,
        "--data-format",
        "ham10000",
        "--data-root",
        str(tmp_path / "data"),
        "--tasks",
        "lesion,diagnosis",
        "--home",
        str(tmp_path / f"home-{name}"),
        "--runtime-port",
        str(free_port()),
        "--health-address",
        f"127.0.0.1:{free_port()}",
    ]


@pytest.fixture
def superlink(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A SuperLink with TLS and SuperNode auth, started by the script and stopped by PID."""
    certs = tmp_path / "certs"
    result = run_script("make_certificates.sh", "--out", str(certs), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    home, port = tmp_path / "coordinator", free_port()
    started = run_script(
        "start_superlink.sh",
        "--home",
        str(home),
        "--certs",
        str(certs),
        "--port",
        str(port),
        cwd=tmp_path,
        timeout=90,
    )
    pid_file = home / "superlink.pid"
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert str(home / "logs") in started.stdout
        yield home, port
    finally:
        if pid is not None:
            helpers = children_of(pid)
            run_script("stop_superlink.sh", "--home", str(home), cwd=tmp_path)
            stop_group(pid)
            for helper in helpers:
                wait_until(lambda h=helper: not Path(f"/proc/{h}").exists(), 15, "SuperExec exit")


def node_statuses(home: Path, tmp_path: Path) -> dict[str, str]:
    result = run_script("list_sites.sh", "--home", str(home), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return {n["node-id"]: n["status"] for n in json.loads(result.stdout)["nodes"]}


def make_key(tmp_path: Path, name: str) -> Path:
    out = tmp_path / f"key-{name}"
    result = run_script("make_site_key.sh", "--out", str(out), "--name", name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return out / "node"


def register(home: Path, tmp_path: Path, key: Path) -> str:
    result = run_script("register_site.sh", "--home", str(home), f"{key}.pub", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return next(w for w in result.stdout.split() if w.isdigit())


@pytest.mark.slow
@NEEDS_TOOLS
@NEEDS_FLOWER
def test_registered_site_connects_and_others_are_refused(
    superlink: tuple[Path, int], tmp_path: Path, processes: list[subprocess.Popen]
) -> None:
    home, port = superlink
    ca = tmp_path / "certs" / "ca.crt"
    key_a, key_b, key_c = (make_key(tmp_path, n) for n in "abc")
    node_a = register(home, tmp_path, key_a)
    node_c = register(home, tmp_path, key_c)
    assert node_statuses(home, tmp_path) == {node_a: "registered", node_c: "registered"}

    start_site(processes, tmp_path, "a", *site_args(tmp_path, port, ca, key_a, "a"))
    wait_until(lambda: node_statuses(home, tmp_path)[node_a] == "online", 60, "site a online")

    # b: key never registered; c: registered, but dials without the federation CA.
    refused = start_site(
        processes,
        tmp_path,
        "b",
        *site_args(tmp_path, port, ca, key_b, "b"),
        "--max-wait-time",
        "10",
    )
    assert refused.wait(timeout=60) != 0
    assert "2004" in (tmp_path / "b.log").read_text()
    log = (tmp_path / "c.log").open("w")
    no_ca = subprocess.Popen(
        [
            str(FLOWER_BIN / "flower-supernode"),
            "--superlink",
            f"127.0.0.1:{port}",
            "--auth-supernode-private-key",
            str(key_c),
            "--port",
            str(free_port()),
            "--max-wait-time",
            "10",
        ],
        cwd=tmp_path,
        env=script_env(tmp_path / "home-c"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    processes.append(no_ca)
    assert no_ca.wait(timeout=60) != 0
    assert "CERTIFICATE_VERIFY_FAILED" in (tmp_path / "c.log").read_text()
    assert node_statuses(home, tmp_path) == {node_a: "online", node_c: "registered"}


@pytest.mark.slow
@NEEDS_TOOLS
@NEEDS_FLOWER
def test_insecure_superlink_needs_the_flag_and_warns(tmp_path: Path) -> None:
    home = tmp_path / "coordinator"
    missing = run_script("start_superlink.sh", "--home", str(home), cwd=tmp_path)
    assert missing.returncode != 0 and "make_certificates.sh" in missing.stderr
    port = free_port()
    started = run_script(
        "start_superlink.sh", "--home", str(home), "--port", str(port), "--insecure", cwd=tmp_path
    )
    pid = int((home / "superlink.pid").read_text()) if (home / "superlink.pid").exists() else None
    try:
        assert started.returncode == 0, started.stderr
        assert "WITHOUT TLS" in started.stderr
    finally:
        if pid is not None:
            helpers = children_of(pid)
            stopped = run_script("stop_superlink.sh", "--home", str(home), cwd=tmp_path)
            stop_group(pid)
            for helper in helpers:
                wait_until(lambda h=helper: not Path(f"/proc/{h}").exists(), 15, "SuperExec exit")
    assert stopped.returncode == 0, stopped.stderr
    assert not Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize("name", DEPLOY_SCRIPTS)
def test_every_script_has_help(name: str, tmp_path: Path) -> None:
    result = run_script(name, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage:")


@NEEDS_TOOLS
def test_certificates_cover_extra_names(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    result = run_script(
        "make_certificates.sh", "--out", str(out), "DNS:fl.example.org", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    san = subprocess.run(
        ["openssl", "x509", "-in", str(out / "server.pem"), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:localhost" in san and "IP Address:127.0.0.1" in san and "DNS:fl.example.org" in san
    assert stat.S_IMODE((out / "ca.key").stat().st_mode) == 0o600
    again = run_script("make_certificates.sh", "--out", str(out), cwd=tmp_path)
    assert again.returncode != 0 and "--force" in again.stderr


@NEEDS_TOOLS
def test_join_refuses_open_or_wrong_private_keys(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    assert run_script("make_certificates.sh", "--out", str(certs), cwd=tmp_path).returncode == 0
    key = make_key(tmp_path, "a")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.with_suffix(".pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    args = site_args(tmp_path, 1, certs / "ca.crt", key, "a")

    key.chmod(0o644)
    result = run_script("join_federation.sh", *args, cwd=tmp_path)
    assert result.returncode != 0 and "mode 644" in result.stderr and "chmod 600" in result.stderr

    key.write_text("not a key\n")
    key.chmod(0o600)
    result = run_script("join_federation.sh", *args, cwd=tmp_path)
    assert result.returncode != 0 and "not an OpenSSH/PEM private key" in result.stderr

    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "ed")], check=True
    )
    args[args.index(str(key))] = str(tmp_path / "ed")
    result = run_script("join_federation.sh", *args, cwd=tmp_path)
    assert result.returncode != 0 and "needs ECDSA" in result.stderr

    result = run_script(
        "register_site.sh", "--home", str(tmp_path), str(tmp_path / "ed"), cwd=tmp_path
    )
    assert result.returncode != 0 and "not an OpenSSH ECDSA public key" in result.stderr


def test_wheelhouse_dry_run_pins_installed_versions(tmp_path: Path) -> None:
    result = run_script(
        "build_wheelhouse.sh",
        "--python",
        sys.executable,
        "--dest",
        str(tmp_path / "wh"),
        "--dry-run",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "flwr==1.42" in result.stdout
    assert "\ntorch==" not in result.stdout.split("# commands:")[0]
    assert "torch==" in result.stdout and "--index-url" in result.stdout
    assert "pip install --no-index --find-links" in result.stdout
    assert not (tmp_path / "wh").exists()


APP_FILES = (
    "ctan",
    "client",
    "server",
    "configs",
    "pyproject.toml",
    "LICENSE",
    "README.md",
    ".gitignore",
)


def staged_app(tmp_path: Path, federation: dict) -> tuple[Path, Path]:
    """A coordinator's app folder (this project's code) with its federation YAML inside."""
    import yaml

    app = tmp_path / "app"
    app.mkdir(parents=True)
    for name in APP_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, app / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, app / name)
    config = {
        "experiment": {"name": "tls", "seed": 0},
        "model": {
            "arch": "ctan",
            "spatial_dims": 2,
            "in_channels": 3,
            "image_size": [32, 32],
            "widths": [8, 16, 32],
        },
        "tasks": [
            {"name": "lesion", "kind": "segmentation", "classes": 1},
            {"name": "diagnosis", "kind": "classification", "classes": 7},
        ],
        "data": {
            "format": "ham10000",
            "root": "unused-on-the-server",
            "split": {"validation": 0.25, "test": 0.25},
        },
        "train": {"batch_size": 8},
        "federation": federation,
    }
    path = app / "configs" / "tls-test.yaml"
    path.write_text(yaml.safe_dump(config))
    return app, path


def hospital_args(
    tmp_path: Path, port: int, ca: Path, key: Path, name: str, tasks: str, seed: int
) -> list[str]:
    """Join arguments for a site holding its own phantom HAM10000 data."""
    from ctan.data.phantoms import write_phantoms

    data = write_phantoms("ham10000", tmp_path / f"data-{name}", cases=20, sites=1, seed=seed)
    args = site_args(tmp_path, port, ca, key, name)
    args[args.index("--data-root") + 1] = str(data)
    args[args.index("--tasks") + 1] = tasks
    return args


@pytest.mark.slow
@NEEDS_TOOLS
@NEEDS_FLOWER
def test_federated_run_over_tls_completes_and_a_lost_quorum_fails(
    superlink: tuple[Path, int], tmp_path: Path, processes: list[subprocess.Popen]
) -> None:
    home, port = superlink
    ca = tmp_path / "certs" / "ca.crt"
    keys = {name: make_key(tmp_path, name) for name in ("a", "b")}
    nodes = {name: register(home, tmp_path, key) for name, key in keys.items()}
    start_site(
        processes,
        tmp_path,
        "a",
        *hospital_args(tmp_path, port, ca, keys["a"], "a", "lesion,diagnosis", 1),
    )
    start_site(
        processes, tmp_path, "b", *hospital_args(tmp_path, port, ca, keys["b"], "b", "lesion", 2)
    )
    wait_until(
        lambda: set(node_statuses(home, tmp_path).values()) == {"online"},
        90,
        f"sites {sorted(nodes)} online",
    )

    app, config = staged_app(
        tmp_path, {"id": "tls-test", "rounds": 2, "min_sites": 2, "round_timeout": 180}
    )
    out = tmp_path / "runs"
    launched = run_script(
        "launch_run.sh",
        "--home",
        str(home),
        "--app",
        str(app),
        "--config",
        str(config),
        "--output-dir",
        str(out),
        cwd=tmp_path,
        timeout=600,
    )
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-2000:]
    assert "finished:completed" in launched.stdout
    run = next((out / "tls-test").glob("run-*"))
    rows = (run / "metrics.csv").read_text()
    assert "train/a,diagnosis.loss" in rows and "train/b,lesion.loss" in rows
    assert (run / "report.md").is_file() and (run / "global_model.pt").is_file()
    payloads = (tmp_path / "home-b" / "state" / "tls-test" / "b" / "payloads.jsonl").read_text()
    assert '"groups": ["encoder", "task.lesion"]' in payloads

    app, config = staged_app(
        tmp_path / "quorum", {"id": "tls-quorum", "rounds": 1, "min_sites": 3, "round_timeout": 5}
    )
    started = time.monotonic()
    failed = run_script(
        "launch_run.sh",
        "--home",
        str(home),
        "--app",
        str(app),
        "--config",
        str(config),
        "--output-dir",
        str(out),
        cwd=tmp_path,
        timeout=300,
    )
    assert failed.returncode != 0
    assert "finished:failed" in failed.stdout + failed.stderr
    assert "only 2 sites connected within 5 s; federation.min_sites is 3" in failed.stdout
    assert time.monotonic() - started < 240
