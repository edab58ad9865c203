"""Deployment scripts: certificates, site keys, SuperLink with TLS + SuperNode auth, joining.

The slow test starts a real ``flower-superlink`` and real ``flower-supernode`` processes on
127.0.0.1 (free ports chosen at run time), each with its own FLWR_HOME under ``tmp_path``.
Every process is stopped by its PID (process group) in a finalizer, also when a test fails.
"""

from __future__ import annotations

import io
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import local_federation as local
import pytest
import yaml

FLOWER_BIN = local.FLOWER_BIN
script_env, run_script, free_port = local.script_env, local.run_script, local.free_port
stop_group, stop_process, children_of = local.stop_group, local.stop_process, local.children_of
wait_until = local.wait_until
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


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Popen objects started in their own session; all their groups are stopped at the end."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        stop_process(process)


def site_args(federation, key: Path, name: str) -> list[str]:
    """Join arguments for a site whose data folder is empty (enough to connect)."""
    data = federation.work / "data"
    data.mkdir(exist_ok=True)
    return federation.join_args(name, key, "ham10000", data, ["lesion", "diagnosis"])


@pytest.fixture
def federation(tmp_path: Path) -> Iterator:
    """A SuperLink with TLS and SuperNode auth, started by the script and stopped by PID."""
    with local.LocalFederation(tmp_path) as started:
        assert (started.home / "superlink.pid").is_file()
        assert str(started.home / "logs") in started.superlink_output
        yield started


@pytest.mark.slow
@NEEDS_TOOLS
@NEEDS_FLOWER
def test_registered_site_connects_and_others_are_refused(
    federation, processes: list[subprocess.Popen]
) -> None:
    key_a, key_b, key_c = (federation.make_key(n) for n in "abc")
    node_a = federation.register(key_a)
    node_c = federation.register(key_c)
    assert federation.node_statuses() == {node_a: "registered", node_c: "registered"}

    federation.join("a", *site_args(federation, key_a, "a"))
    federation.wait_online([node_a], timeout=60)

    # b: key never registered; c: registered, but dials without the federation CA.
    refused = federation.join("b", *site_args(federation, key_b, "b"), "--max-wait-time", "10")
    assert refused.wait(timeout=60) != 0
    assert "2004" in (federation.work / "b.log").read_text()
    log = (federation.work / "c.log").open("w")
    no_ca = subprocess.Popen(
        [
            str(FLOWER_BIN / "flower-supernode"),
            "--superlink",
            f"127.0.0.1:{federation.port}",
            "--auth-supernode-private-key",
            str(key_c),
            "--port",
            str(free_port()),
            "--max-wait-time",
            "10",
        ],
        cwd=federation.work,
        env=script_env(federation.work / "home-c"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    processes.append(no_ca)
    assert no_ca.wait(timeout=60) != 0
    assert "CERTIFICATE_VERIFY_FAILED" in (federation.work / "c.log").read_text()
    assert federation.node_statuses() == {node_a: "online", node_c: "registered"}


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
            for group in (pid, *helpers):
                stop_group(group)
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
    assert "IP Address:0:0:0:0:0:0:0:1" in san
    assert stat.S_IMODE((out / "ca.key").stat().st_mode) == 0o600
    again = run_script("make_certificates.sh", "--out", str(out), cwd=tmp_path)
    assert again.returncode != 0 and "--server-only" in again.stderr and "--force" in again.stderr

    ca = (out / "ca.crt").read_bytes()
    renewed = run_script(
        "make_certificates.sh",
        "--out",
        str(out),
        "--server-only",
        "DNS:new.example.org",
        cwd=tmp_path,
    )
    assert renewed.returncode == 0, renewed.stderr
    assert (out / "ca.crt").read_bytes() == ca
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(out / "ca.crt"), str(out / "server.pem")],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr
    check = ["openssl", "x509", "-in", str(out / "server.pem"), "-noout", "-checkhost"]
    covered = subprocess.run([*check, "new.example.org"], capture_output=True, text=True)
    assert "does match" in covered.stdout
    empty = tmp_path / "empty"
    refused = run_script("make_certificates.sh", "--out", str(empty), "--server-only", cwd=tmp_path)
    assert refused.returncode != 0 and "ca.key" in refused.stderr

    other = tmp_path / "other"
    assert run_script("make_certificates.sh", "--out", str(other), cwd=tmp_path).returncode == 0
    shutil.copy2(other / "ca.key", out / "ca.key")
    pair = {name: (out / name).read_bytes() for name in ("server.key", "server.pem")}
    wrong = run_script("make_certificates.sh", "--out", str(out), "--server-only", cwd=tmp_path)
    assert wrong.returncode != 0 and "do not match" in wrong.stderr
    assert {name: (out / name).read_bytes() for name in pair} == pair
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "ca.key", "server.key", "server.pem"]

    before = {p.name: p.read_bytes() for p in other.iterdir()}
    typo = run_script(
        "make_certificates.sh", "--out", str(other), "--force", "IP:fl.example.org", cwd=tmp_path
    )
    assert typo.returncode != 0 and "a name goes as DNS:fl.example.org" in typo.stderr
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before


@NEEDS_TOOLS
def test_join_refuses_open_or_wrong_private_keys(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    assert run_script("make_certificates.sh", "--out", str(certs), cwd=tmp_path).returncode == 0
    federation = local.LocalFederation(tmp_path)  # not entered: no SuperLink is started
    federation.port = 1
    key = federation.make_key("a")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.with_suffix(".pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    args = site_args(federation, key, "a")

    key.chmod(0o644)
    result = run_script("join_federation.sh", *args, cwd=tmp_path)
    assert result.returncode != 0 and "mode 644" in result.stderr and "chmod 600" in result.stderr

    key.write_text("not a key\n")
    key.chmod(0o600)
    result = run_script("join_federation.sh", *args, cwd=tmp_path)
    assert result.returncode != 0 and "not an OpenSSH private key" in result.stderr

    pem = tmp_path / "pem"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-m", "PEM", "-N", "", "-f", str(pem)],
        check=True,
    )
    assert "BEGIN EC PRIVATE KEY" in pem.read_text()
    args[args.index(str(key))] = str(pem)
    result = run_script("join_federation.sh", *args, cwd=tmp_path)
    assert result.returncode != 0 and f"ssh-keygen -p -N '' -f {pem}" in result.stderr
    args[args.index(str(pem))] = str(key)

    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "ed")], check=True
    )
    args[args.index(str(key))] = str(tmp_path / "ed")
    result = run_script("join_federation.sh", *args, cwd=tmp_path)
    assert result.returncode != 0 and "needs ECDSA" in result.stderr

    result = run_script(
        "register_site.sh", "--home", str(tmp_path), str(tmp_path / "ed.pub"), cwd=tmp_path
    )
    assert result.returncode != 0 and "not an OpenSSH ECDSA public key" in result.stderr
    args[args.index(str(tmp_path / "ed"))] = str(key)
    for flag, value, message in (
        ("--target-epsilon", "abc", "--target-epsilon must be a number"),
        ("--delta", "1e-6", "--delta needs --target-epsilon"),
        ("--state-dir", str(tmp_path / 'say "hi"'), "must not hold"),
    ):
        result = run_script("join_federation.sh", *args, flag, value, cwd=tmp_path)
        assert result.returncode != 0 and message in result.stderr, result.stderr


@NEEDS_TOOLS
@NEEDS_FLOWER
def test_superlink_refuses_a_busy_port_and_warns_on_an_open_address(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    assert run_script("make_certificates.sh", "--out", str(certs), cwd=tmp_path).returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        home = ["--home", str(tmp_path / "home"), "--certs", str(certs), "--port", port]
        result = run_script("start_superlink.sh", *home, "--host", "0.0.0.0", cwd=tmp_path)
    assert result.returncode != 0
    assert f"something already listens on 127.0.0.1:{port}" in result.stderr
    assert "the control API" in result.stderr and "Allow only coordinator" in result.stderr
    assert f"{certs}/ca.key, which signs certificates" in result.stderr
    assert not (tmp_path / "home" / "superlink.pid").exists()


@NEEDS_FLOWER
def test_listing_sites_as_json_fails_when_the_superlink_is_unreachable(tmp_path: Path) -> None:
    cli = tmp_path / "home" / "cli"
    cli.mkdir(parents=True)
    (cli / "config.toml").write_text(
        '[superlink]\ndefault = "fedctan"\n\n[superlink.fedctan]\n'
        f'address = "127.0.0.1:{free_port()}"\ninsecure = true\n'
    )
    result = run_script("list_sites.sh", "--home", str(tmp_path / "home"), "--json", cwd=tmp_path)
    assert result.returncode != 0 and '"success": false' in result.stdout
    assert "flwr supernode list failed" in result.stderr


def test_app_bundle_holds_the_code_and_configs_only(tmp_path: Path) -> None:
    """What ``flwr run`` sends to every site, built from a copy of the tracked files with a
    coordinator folder inside it, as the guide's layout leaves one after a few runs."""
    from flwr.cli.build import build_fab_from_disk

    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=local.ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    app = tmp_path / "app"
    for name in filter(None, tracked):
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local.ROOT / name, app / name)
    nested = app / "coordinator" / "superlink" / "apps" / "a" / "b" / "c" / "d" / "e" / "f" / "g"
    nested.mkdir(parents=True)
    (nested / "deep.py").write_text("")
    fab = build_fab_from_disk(app)
    with zipfile.ZipFile(io.BytesIO(fab)) as bundle:
        names = bundle.namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {".info", "pyproject.toml", "LICENSE", "ctan", "client", "server", "configs"}
    assert {"server/server_app.py", "client/client_app.py", "configs/demo.yaml"} <= set(names)
    assert len(fab) < 10 * 2**20


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
    assert f"-c {tmp_path / 'wh'}/requirements-lock.txt fedctan" in result.stdout
    assert not (tmp_path / "wh").exists()

    older = ["--platform", "manylinux2014_x86_64", "--python-version", "3.10", "--dry-run"]
    result = run_script("build_wheelhouse.sh", "--python", sys.executable, *older, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\nexceptiongroup" in result.stdout, "anyio needs it below Python 3.11"
    alone = run_script("build_wheelhouse.sh", "--python-version", "3.10", "--dry-run", cwd=tmp_path)
    assert alone.returncode != 0 and "--python-version needs --platform" in alone.stderr


def tls_config(federation: dict) -> dict:
    """A small federated experiment (the data root is each site's own, from its node config)."""
    return {
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


@pytest.mark.slow
@NEEDS_TOOLS
@NEEDS_FLOWER
def test_federated_run_over_tls_completes_and_a_lost_quorum_fails(federation) -> None:
    sites = {"a": ["lesion", "diagnosis"], "b": ["lesion"]}
    nodes = []
    for seed, (name, tasks) in enumerate(sites.items(), start=1):
        key = federation.make_key(name)
        nodes.append(federation.register(key))
        data = local.phantom_site_root("ham10000", federation.work / f"data-{name}", 20, seed)
        own = ["--cache-dir", str(federation.work / "cache-b"), "--skip-bad"] if name == "b" else []
        federation.join(name, *federation.join_args(name, key, "ham10000", data, tasks), *own)
    federation.wait_online(nodes)

    app, config = local.stage_app(
        federation.work / "app",
        tls_config({"id": "tls-test", "rounds": 2, "min_sites": 2, "round_timeout": 180}),
        "tls-test",
    )
    out = federation.work / "runs"
    launched = federation.launch(app, config, out, timeout=600)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-2000:]
    assert "finished:completed" in launched.stdout
    run = next((out / "tls-test").glob("run-*"))
    rows = (run / "metrics.csv").read_text()
    assert "train/a,diagnosis.loss" in rows and "train/b,lesion.loss" in rows
    assert (run / "report.md").is_file() and (run / "global_model.pt").is_file()
    payloads = (federation.state_dir("b") / "tls-test" / "b" / "payloads.jsonl").read_text()
    assert '"groups": ["encoder", "task.lesion"]' in payloads
    assert any((federation.work / "cache-b").rglob("*.npy")), "site b's own cache folder unused"

    app, config = local.stage_app(
        federation.work / "app-quorum",
        tls_config({"id": "tls-quorum", "rounds": 1, "min_sites": 3, "round_timeout": 5}),
        "tls-quorum",
    )
    started = time.monotonic()
    failed = federation.launch(app, config, out, timeout=300)
    assert failed.returncode != 0
    assert "finished:failed" in failed.stdout + failed.stderr
    assert (
        "only 2 sites connected and 0 admitted within 5 s (federation.round_timeout); "
        "federation.min_sites is 3; refused: none"
    ) in failed.stdout
    assert time.monotonic() - started < 240


def signed_certificate(certs: Path, name: str, san: str) -> tuple[Path, Path]:
    """A server certificate for ``san`` signed by the CA in ``certs`` (not the SuperLink's)."""
    key, request, cert = (certs / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
    extensions = certs / f"{name}.ext"
    extensions.write_text(f"subjectAltName={san}\n")
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "rsa:2048",
            "-keyout",
            str(key),
            "-out",
            str(request),
            "-subj",
            f"/CN={name}",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            str(request),
            "-CA",
            str(certs / "ca.crt"),
            "-CAkey",
            str(certs / "ca.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            str(cert),
            "-extfile",
            str(extensions),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_listener(processes: list[subprocess.Popen]) -> Callable[[Path, Path], int]:
    """Start a plain TLS server on 127.0.0.1 serving a given certificate; returns its port."""

    def start(cert: Path, key: Path) -> int:
        port = free_port()
        server = subprocess.Popen(
            [
                "openssl",
                "s_server",
                "-accept",
                f"127.0.0.1:{port}",
                "-cert",
                str(cert),
                "-key",
                str(key),
                "-quiet",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        processes.append(server)
        wait_until(lambda: local_port_open(port), 10, f"TLS listener on port {port}")
        return port

    return start


def local_port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@NEEDS_TOOLS
def test_join_stops_when_the_certificate_does_not_cover_the_address(
    tmp_path: Path, tls_listener: Callable[[Path, Path], int]
) -> None:
    federation = local.LocalFederation(tmp_path)  # not entered: a plain TLS server stands in
    assert run_script("make_certificates.sh", "--out", str(tmp_path / "certs"), cwd=tmp_path)
    cert, key = signed_certificate(tmp_path / "certs", "elsewhere", "DNS:fl.elsewhere.example")
    federation.port = tls_listener(cert, key)
    site_key = federation.make_key("a")
    result = run_script("join_federation.sh", *site_args(federation, site_key, "a"), cwd=tmp_path)
    assert result.returncode != 0
    assert "does not cover '127.0.0.1'" in result.stderr
    assert "DNS:fl.elsewhere.example" in result.stderr and "IP:127.0.0.1" in result.stderr


@NEEDS_TOOLS
def test_join_stops_when_the_certificate_is_not_from_the_federation_ca(
    tmp_path: Path, tls_listener: Callable[[Path, Path], int]
) -> None:
    federation = local.LocalFederation(tmp_path)
    other = tmp_path / "other-ca"
    assert run_script("make_certificates.sh", "--out", str(tmp_path / "certs"), cwd=tmp_path)
    assert run_script("make_certificates.sh", "--out", str(other), cwd=tmp_path).returncode == 0
    federation.port = tls_listener(other / "server.pem", other / "server.key")
    site_key = federation.make_key("a")
    result = run_script("join_federation.sh", *site_args(federation, site_key, "a"), cwd=tmp_path)
    assert result.returncode != 0
    assert f"not signed by the CA in {federation.ca}" in result.stderr


def test_certificate_check_only_warns_when_nothing_answers(tmp_path: Path) -> None:
    port = free_port()
    script = (
        f"source {local.SCRIPTS / 'deploy_common.sh'}; "
        f"check_superlink_certificate 127.0.0.1:{port} {tmp_path / 'ca.crt'}"
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert f"nothing answers at 127.0.0.1:{port} now" in result.stderr
    assert "keeps retrying" in result.stderr
    bad = subprocess.run(
        ["bash", "-c", script.replace(f"127.0.0.1:{port}", "no-port-given")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode != 0 and "must be HOST:PORT" in bad.stderr


def processes_naming(text: str) -> list[int]:
    """PIDs of live processes whose command line or environment contains ``text``.

    The environment finds what the command line does not name: Flower's helpers and the
    ``flwr`` CLI carry the ``FLWR_HOME`` under the work folder they were started with.
    """
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if any(text.encode() in (entry / part).read_bytes() for part in ("cmdline", "environ")):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def local_federation_process(config: Path, work: Path, cases: int) -> subprocess.Popen:
    """``local_federation.py`` in a session of its own, as a terminal would start it."""
    command = [sys.executable, str(local.SCRIPTS / "local_federation.py"), "--config", str(config)]
    return subprocess.Popen(
        [*command, "--work", str(work), "--cases", str(cases)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.mark.slow
@NEEDS_TOOLS
@NEEDS_FLOWER
def test_sigterm_takes_the_whole_local_federation_down(tmp_path: Path) -> None:
    sites = [{"name": "a", "tasks": ["lesion", "diagnosis"]}, {"name": "b", "tasks": ["lesion"]}]
    federation = {"id": "sigterm-test", "rounds": 50, "min_sites": 2, "sites": sites}
    config = tmp_path / "federation.yaml"
    config.write_text(yaml.safe_dump(tls_config(federation)))
    work = tmp_path / "work"
    process = local_federation_process(config, work, cases=20)
    try:
        wait_until(lambda: (work / "runs").is_dir(), 180, "the run's launch")
        pid = int((work / "coordinator" / "superlink.pid").read_text())
        assert Path(f"/proc/{pid}").exists() and len(processes_naming(str(work))) >= 3
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 128 + signal.SIGTERM
        assert not Path(f"/proc/{pid}").exists()
        assert processes_naming(str(work)) == []
    finally:
        stop_process(process)
        for leftover in processes_naming(str(work)):
            stop_group(leftover)


def test_a_stale_superlink_pid_file_is_removed_not_obeyed(tmp_path: Path) -> None:
    home = tmp_path / "coordinator"
    home.mkdir()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (home / "superlink.pid").write_text(f"{bystander.pid}\n")
        stop = ["stop_superlink.sh", "--home", str(home)]
        late = run_script(*stop, "--timeout", "20s", cwd=tmp_path)
        assert late.returncode != 0 and "--timeout must be a whole number" in late.stderr
        stopped = run_script(*stop, cwd=tmp_path)
        assert stopped.returncode == 0, stopped.stderr
        assert f"no SuperLink runs as PID {bystander.pid}" in stopped.stdout
        assert not (home / "superlink.pid").exists() and bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


@NEEDS_TOOLS
def test_coordinator_commands_name_a_wrong_home_or_a_private_key(tmp_path: Path) -> None:
    typo = str(tmp_path / "typo")
    for script, *args in (("list_sites.sh",), ("stop_run.sh", "5")):
        refused = run_script(script, "--home", typo, *args, cwd=tmp_path)
        assert refused.returncode != 0
        assert "give the --home that start_superlink.sh was given" in refused.stderr
    assert not (tmp_path / "typo").exists()
    made = run_script("make_site_key.sh", "--out", str(tmp_path / "key"), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    key = str(tmp_path / "key" / "node")
    leaked = run_script("register_site.sh", "--home", typo, key, cwd=tmp_path)
    assert leaked.returncode != 0 and "is a PRIVATE key, which must never leave" in leaked.stderr


@NEEDS_TOOLS
def test_join_stops_on_a_port_another_supernode_holds(tmp_path: Path) -> None:
    assert run_script("make_certificates.sh", "--out", "certs", cwd=tmp_path).returncode == 0
    assert run_script("make_site_key.sh", "--out", "key", cwd=tmp_path).returncode == 0
    (tmp_path / "data").mkdir()
    args = ["--superlink", "127.0.0.1:1", "--ca", "certs/ca.crt", "--key", "key/node"]
    args += ["--site", "a", "--data-format", "ham10000", "--data-root", "data", "--tasks", "lesion"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        runtime = run_script("join_federation.sh", *args, "--runtime-port", port, cwd=tmp_path)
        health = run_script(
            "join_federation.sh",
            *args,
            *("--runtime-port", str(free_port()), "--health-address", f"127.0.0.1:{port}"),
            cwd=tmp_path,
        )
    assert runtime.returncode != 0 and "give this one its own --runtime-port" in runtime.stderr
    assert health.returncode != 0 and "another SuperNode's health service" in health.stderr


class FakeScripts:
    """Stands in for ``run_script``: records the scripts run; ``start_superlink.sh`` starts a
    ``sleep`` in a session of its own as the SuperLink and writes its PID file, like the real
    one, then fails with ``interrupt`` if one is given (a signal arriving while it waits)."""

    def __init__(self, interrupt: BaseException | None = None) -> None:
        self.interrupt = interrupt
        self.ran: list[str] = []
        self.superlink: subprocess.Popen | None = None

    def __call__(self, name: str, *args: str, cwd: Path, timeout: float = 60):
        self.ran.append(name)
        if name == "start_superlink.sh":
            home = Path(args[args.index("--home") + 1])
            home.mkdir(parents=True, exist_ok=True)
            self.superlink = subprocess.Popen(["sleep", "60"], start_new_session=True)
            threading.Thread(target=self.superlink.wait, daemon=True).start()
            (home / "superlink.pid").write_text(f"{self.superlink.pid}\n")
            if self.interrupt is not None:
                raise self.interrupt
        return subprocess.CompletedProcess([name], 0, "", "")

    def stop(self) -> None:
        if self.superlink is not None and self.superlink.poll() is None:
            self.superlink.kill()


def test_an_interrupt_while_the_superlink_starts_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripts = FakeScripts(interrupt=KeyboardInterrupt())
    monkeypatch.setattr(local, "run_script", scripts)
    try:
        with pytest.raises(KeyboardInterrupt), local.LocalFederation(tmp_path):
            pass
        assert scripts.superlink is not None
        wait_until(lambda: scripts.superlink.poll() is not None, 10, "the SuperLink to stop")
        assert scripts.ran == ["make_certificates.sh", "start_superlink.sh", "stop_superlink.sh"]
    finally:
        scripts.stop()


def test_a_second_run_reuses_certificates_and_keys_and_starts_a_fresh_superlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in local.CERTIFICATE_FILES:
        (tmp_path / "certs").mkdir(exist_ok=True)
        (tmp_path / "certs" / name).write_text("from an earlier run")
    (tmp_path / "key-a").mkdir()
    (tmp_path / "key-a" / "node").write_text("private")
    (tmp_path / "key-a" / "node.pub").write_text("public")
    (tmp_path / "coordinator").mkdir()
    (tmp_path / "coordinator" / "state.db").write_text("keys registered by an earlier run")
    scripts = FakeScripts()
    monkeypatch.setattr(local, "run_script", scripts)
    try:
        with local.LocalFederation(tmp_path) as federation:
            assert federation.make_key("a") == tmp_path / "key-a" / "node"
            assert not (tmp_path / "coordinator" / "state.db").exists()
        assert scripts.ran == ["start_superlink.sh", "stop_superlink.sh"]
        assert scripts.superlink is not None and scripts.superlink.poll() is not None
    finally:
        scripts.stop()


def test_phantom_data_of_an_earlier_run_is_used_again(tmp_path: Path) -> None:
    first = local.phantom_site_root("ham10000", tmp_path, cases=3, seed=2)
    assert first == tmp_path / "phantoms" / "ham10000-3-cases-seed-2"
    written = sorted(p.relative_to(first) for p in first.rglob("*"))
    assert local.phantom_site_root("ham10000", tmp_path, cases=3, seed=2) == first
    assert sorted(p.relative_to(first) for p in first.rglob("*")) == written
    assert local.phantom_site_root("ham10000", tmp_path, cases=4, seed=2) != first


@pytest.mark.parametrize("option", ["--cases", "--rounds"])
@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_a_bad_count_is_refused_before_anything_starts(
    option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "federation.yaml"
    sites = [{"name": "a", "tasks": ["lesion"]}]
    config.write_text(yaml.safe_dump(tls_config({"id": "counts", "sites": sites})))
    work = tmp_path / "work"
    with pytest.raises(SystemExit) as exited:
        local.main(["--config", str(config), "--work", str(work), option, value])
    assert exited.value.code == 2
    expected = f"argument {option}: must be a whole number >= 1, got {value!r}"
    assert expected in capsys.readouterr().err
    assert not work.exists()


def test_an_expected_failure_ends_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_openssl(name: str, *args: str, cwd: Path, timeout: float = 60):
        return subprocess.CompletedProcess([name], 1, "", "warning: a\nerror: openssl is needed\n")

    monkeypatch.setattr(local, "run_script", no_openssl)
    config = tmp_path / "federation.yaml"
    sites = [{"name": "a", "tasks": ["lesion"]}]
    config.write_text(yaml.safe_dump(tls_config({"id": "no-openssl", "sites": sites})))
    work = tmp_path / "work"
    assert local.main(["--config", str(config), "--work", str(work), "--cases", "2"]) == 1
    error = capsys.readouterr().err
    assert error == "local_federation.py: error: make_certificates.sh failed: openssl is needed\n"
    assert not (work / "coordinator").exists()


@pytest.mark.slow
@NEEDS_TOOLS
@NEEDS_FLOWER
def test_sigterm_while_the_superlink_starts_stops_it(tmp_path: Path) -> None:
    sites = [{"name": "a", "tasks": ["lesion"]}]
    config = tmp_path / "federation.yaml"
    config.write_text(yaml.safe_dump(tls_config({"id": "early-sigterm", "sites": sites})))
    work = tmp_path / "work"
    process = local_federation_process(config, work, cases=4)
    pid_file = work / "coordinator" / "superlink.pid"
    try:
        deadline = time.monotonic() + 120
        while not pid_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.02)
        pid = int(pid_file.read_text())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 128 + signal.SIGTERM
        assert not local.is_superlink(pid)
        assert processes_naming(str(work)) == []
    finally:
        stop_process(process)
        for leftover in processes_naming(str(work)):
            stop_group(leftover)


@pytest.mark.slow
@NEEDS_TOOLS
@NEEDS_FLOWER
def test_a_second_federation_in_the_same_folder_registers_the_same_key_again(
    tmp_path: Path,
) -> None:
    nodes, cas = [], []
    for _ in range(2):
        with local.LocalFederation(tmp_path) as federation:
            nodes.append(federation.register(federation.make_key("a")))
            cas.append(federation.ca.read_bytes())
            assert federation.node_statuses() == {nodes[-1]: "registered"}
    assert cas[0] == cas[1]
