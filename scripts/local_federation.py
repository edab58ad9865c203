"""A whole federation over TLS on this machine, driven through the deployment scripts.

Plays every party of a real deployment on 127.0.0.1 with the same shell scripts they use: the
coordinator makes a certificate authority and the SuperLink certificate, starts the SuperLink
with TLS and SuperNode authentication, registers each hospital's public key and launches the
run; each hospital makes its key pair and joins with ``join_federation.sh`` (its own data,
tasks, state folder and health port). Every process started is stopped by its PID (process
group), also when something fails or the script is sent SIGTERM. The deployment tests and
the federated benchmark's deployment overhead use it; a coordinator can use it to rehearse a
federation before the hospitals join.

    python scripts/local_federation.py --config configs/federated/derm-natural.yaml \\
        --work runs/local-tls --cases 60

Each site named in the YAML's ``federation.sites`` joins with phantom data of the YAML's
``data.format`` written for it alone (``--cases`` cases, seed = site index + 1), all written
before anything starts; the run folder lands under ``--work``/runs/<federation id>/. Running
again in the same ``--work`` reuses its certificates, site keys and phantom data; the SuperLink
starts with a fresh state, so the keys are registered anew. Expected failures end with a
one-line error and exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from server.simulate import at_least_one, signals_ignored, terminate_as_exit  # noqa: E402

SCRIPTS = ROOT / "scripts"
FLOWER_BIN = Path(sys.executable).parent
#: data formats the phantom generators write (``ctan data synth``)
PHANTOM_LAYOUTS = ("ham10000", "openkbp", "stoic")
#: what ``make_certificates.sh`` writes and the SuperLink needs
CERTIFICATE_FILES = ("ca.crt", "server.pem", "server.key")
#: what a coordinator's app folder holds: this project's code and its configs
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


def script_env(home: Path | None = None) -> dict[str, str]:
    """The environment the deployment scripts run in: Flower beside this Python, offline."""
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
    """Run ``scripts/<name>`` to completion, capturing its output.

    The script runs in a session of its own. When waiting for it ends early (its timeout, or
    SIGTERM turned into ``SystemExit``), its whole process group is stopped, so no Flower CLI
    it started (``flwr log --stream`` holds a connection the SuperLink waits for) outlives it.
    """
    command = ["bash", str(SCRIPTS / name), *args]
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=script_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:
        stop_process(process)
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every half second; ``TimeoutError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


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
    """Stop a process started in its own session, reaping it (a zombie keeps its group)."""
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


def is_superlink(pid: int) -> bool:
    """Whether ``pid`` is a running ``flower-superlink`` (not a PID reused since)."""
    try:
        return b"flower-superlink" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def script_failure(name: str, result: subprocess.CompletedProcess) -> str:
    """One line saying that script ``name`` failed and why (the last line it printed)."""
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    reason = lines[-1].strip() if lines else f"exit code {result.returncode}"
    return f"{name} failed: {reason.removeprefix('error: ')}"


def stage_app(folder: Path, config: Mapping[str, Any], name: str) -> tuple[Path, Path]:
    """A coordinator's app folder (this project's code) with the run's YAML in ``configs/``.

    Returns:
        ``(app folder, YAML path inside it)``.
    """
    import yaml

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for entry in APP_FILES:
        source = ROOT / entry
        if source.is_dir():
            shutil.copytree(source, folder / entry, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, folder / entry)
    path = folder / "configs" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return folder, path


class LocalFederation:
    """A SuperLink with TLS and SuperNode authentication plus the sites that joined it.

    Use as a context manager: entering makes the certificates (or reuses those ``work``
    holds) and starts the SuperLink with a fresh state database; leaving stops every site and
    the SuperLink (with its detached helpers) by PID, ignoring further signals meanwhile.

    Attributes:
        work: the folder everything is written under (certificates, keys, homes, logs).
        home: the coordinator folder (``start_superlink.sh --home``).
        port: the SuperLink's Fleet API port on 127.0.0.1.
        sites: the ``join_federation.sh`` processes started, by site name.
        superlink_output: what ``start_superlink.sh`` printed.
    """

    def __init__(self, work: Path) -> None:
        self.work = work.resolve()
        self.home = self.work / "coordinator"
        self.port = 0
        self.sites: dict[str, subprocess.Popen] = {}
        self.superlink_output = ""
        self._superlink_pid: int | None = None
        self._pid_before: int | None = None

    @property
    def ca(self) -> Path:
        """The federation's CA certificate, which every site needs to dial the SuperLink."""
        return self.work / "certs" / "ca.crt"

    def __enter__(self) -> LocalFederation:
        """Make (or reuse) the certificates and start the SuperLink with a fresh state.

        Whatever fails or interrupts this (Ctrl-C, SIGTERM turned into ``SystemExit``) stops
        what was started before the error goes on: the SuperLink runs in a session of its own
        and would outlive this process otherwise.
        """
        try:
            self._start()
        except BaseException:
            self._adopt_superlink()
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        self._pid_before = self._pid_in_file()
        if self._pid_before is not None and is_superlink(self._pid_before):
            raise RuntimeError(
                f"a SuperLink from {self.home} still runs as PID {self._pid_before}; stop it "
                f"with scripts/stop_superlink.sh --home {self.home}"
            )
        self.work.mkdir(parents=True, exist_ok=True)
        if not all((self.work / "certs" / name).is_file() for name in CERTIFICATE_FILES):
            made = run_script(
                "make_certificates.sh", "--out", str(self.work / "certs"), cwd=self.work
            )
            if made.returncode != 0:
                raise RuntimeError(script_failure("make_certificates.sh", made))
        for database in self.home.glob("state.db*"):
            database.unlink()
        self.port = free_port()
        started = run_script(
            "start_superlink.sh",
            "--home",
            str(self.home),
            "--certs",
            str(self.work / "certs"),
            "--port",
            str(self.port),
            cwd=self.work,
            timeout=90,
        )
        self.superlink_output = started.stdout + started.stderr
        if started.returncode != 0:
            raise RuntimeError(script_failure("start_superlink.sh", started))
        self._adopt_superlink()

    def _pid_in_file(self) -> int | None:
        """The PID in ``superlink.pid``, if there is one."""
        try:
            return int((self.home / "superlink.pid").read_text())
        except (OSError, ValueError):
            return None

    def _adopt_superlink(self) -> None:
        """Take the SuperLink that ``start_superlink.sh`` started (its PID file names a PID
        other than before) as this federation's, to stop on leaving."""
        pid = self._pid_in_file()
        if pid is not None and pid != self._pid_before:
            self._superlink_pid = pid

    def __exit__(self, *exc: object) -> None:
        with signals_ignored():
            for process in self.sites.values():
                stop_process(process)
            if self._superlink_pid is not None:
                helpers = children_of(self._superlink_pid)
                run_script("stop_superlink.sh", "--home", str(self.home), cwd=self.work)
                for group in (self._superlink_pid, *helpers):
                    stop_group(group)
                self._superlink_pid = None

    def make_key(self, name: str) -> Path:
        """A site's key pair (``make_site_key.sh``, or the one an earlier run made); returns the
        private key's path."""
        out = self.work / f"key-{name}"
        if not ((out / "node").is_file() and (out / "node.pub").is_file()):
            made = run_script("make_site_key.sh", "--out", str(out), "--name", name, cwd=self.work)
            if made.returncode != 0:
                raise RuntimeError(script_failure("make_site_key.sh", made))
        return out / "node"

    def register(self, key: Path) -> str:
        """Register a site's public key with the SuperLink; returns its node id."""
        done = run_script("register_site.sh", "--home", str(self.home), f"{key}.pub", cwd=self.work)
        if done.returncode != 0:
            raise RuntimeError(script_failure("register_site.sh", done))
        return next(word for word in done.stdout.split() if word.isdigit())

    def node_statuses(self) -> dict[str, str]:
        """``{node id: status}`` of every registered site (``list_sites.sh --json``)."""
        listed = run_script("list_sites.sh", "--home", str(self.home), "--json", cwd=self.work)
        if listed.returncode != 0:
            raise RuntimeError(script_failure("list_sites.sh", listed))
        return {n["node-id"]: n["status"] for n in json.loads(listed.stdout)["nodes"]}

    def join_args(
        self, name: str, key: Path, data_format: str, data_root: Path, tasks: Sequence[str]
    ) -> list[str]:
        """``join_federation.sh`` arguments for a site on this machine (free ports)."""
        return [
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--ca",
            str(self.ca),
            "--key",
            str(key),
            "--site",
            name,
            "--data-format",
            data_format,
            "--data-root",
            str(data_root),
            "--tasks",
            ",".join(tasks),
            "--home",
            str(self.work / f"home-{name}"),
            "--runtime-port",
            str(free_port()),
            "--health-address",
            f"127.0.0.1:{free_port()}",
        ]

    def join(self, name: str, *args: str) -> subprocess.Popen:
        """Start ``join_federation.sh`` for site ``name`` (log ``<work>/<name>.log``)."""
        with (self.work / f"{name}.log").open("w") as log:
            process = subprocess.Popen(
                ["bash", str(SCRIPTS / "join_federation.sh"), *args],
                cwd=self.work,
                env=script_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.sites[name] = process
        return process

    def state_dir(self, name: str) -> Path:
        """Where site ``name`` keeps its state (``join_federation.sh``'s default)."""
        return self.work / f"home-{name}" / "state"

    def wait_online(self, nodes: Sequence[str], timeout: float = 90) -> None:
        """Wait until every node id in ``nodes`` is online."""
        wait_until(
            lambda: all(self.node_statuses().get(n) == "online" for n in nodes),
            timeout,
            f"nodes {list(nodes)} online",
        )

    def launch(
        self, app: Path, config: Path, output_dir: Path, timeout: float = 3600
    ) -> subprocess.CompletedProcess:
        """``launch_run.sh``: submit the run and follow it to its end."""
        return run_script(
            "launch_run.sh",
            "--home",
            str(self.home),
            "--app",
            str(app),
            "--config",
            str(config),
            "--output-dir",
            str(output_dir),
            cwd=self.work,
            timeout=timeout,
        )


def phantom_site_root(data_format: str, work: Path, cases: int, seed: int) -> Path:
    """One site's own phantom data in the layout ``data_format`` names, under
    ``<work>/phantoms/<format>-<cases>-cases-seed-<seed>``; the same settings write the same
    bytes, so a folder an earlier run wrote is used again."""
    from ctan.data.phantoms import write_phantoms

    if data_format not in PHANTOM_LAYOUTS:
        raise ValueError(
            f"no phantom layout for data.format {data_format!r}; allowed: {PHANTOM_LAYOUTS}"
        )
    folder = work / "phantoms" / f"{data_format}-{cases}-cases-seed-{seed}"
    if folder.is_dir():
        return folder
    return write_phantoms(data_format, folder, cases=cases, sites=1, seed=seed)


def run_local_federation(
    config: Mapping[str, Any], work: Path, cases: int, timeout: float = 3600
) -> dict[str, Any]:
    """Stand a federation up, run ``config`` on it and take it down again.

    The phantom data is written before anything starts. Certificates, site keys and phantom
    data that an earlier run left in ``work`` are used again; the SuperLink starts with a fresh
    state (the keys are registered anew) and the run gets a new run folder.

    Args:
        config: the experiment as a dict (with ``data`` and ``federation`` sections).
        work: the folder for certificates, keys, site homes, data, logs and run folders.
        cases: phantom cases written for each site.
        timeout: seconds the run may take.

    Returns:
        ``{"run": run folder, "stdout": launch output, "sites": {site: state folder}}``.

    Raises:
        ValueError: ``cases`` is below 1, or no phantom layout for the data format.
        RuntimeError: a step failed, or the run did not complete (its output is in
            ``<work>/launch.log``).
    """
    if cases < 1:
        raise ValueError(f"cases per site must be at least 1, got {cases}")
    federation = config["federation"]
    data_format = config["data"]["format"]
    work = work.resolve()
    roots = {
        site["name"]: phantom_site_root(data_format, work, cases, index + 1)
        for index, site in enumerate(federation["sites"])
    }
    with LocalFederation(work) as local:
        nodes = []
        for site in federation["sites"]:
            key = local.make_key(site["name"])
            nodes.append(local.register(key))
            local.join(
                site["name"],
                *local.join_args(
                    site["name"], key, data_format, roots[site["name"]], site["tasks"]
                ),
            )
        local.wait_online(nodes)
        app, path = stage_app(local.work / "app", config, federation["id"])
        output = local.work / "runs"
        launched = local.launch(app, path, output, timeout)
        log = local.work / "launch.log"
        log.write_text(launched.stdout + launched.stderr)
        if launched.returncode != 0 or "finished:completed" not in launched.stdout:
            raise RuntimeError(f"{script_failure('launch_run.sh', launched)}; output in {log}")
        run = max((output / federation["id"]).glob("run-*"))
        return {
            "run": run,
            "stdout": launched.stdout,
            "sites": {s["name"]: local.state_dir(s["name"]) for s in federation["sites"]},
        }


def main(argv: Sequence[str] | None = None) -> int:
    """Rehearse a federation; 0 when its run completed, 1 with a one-line error otherwise."""
    parser = argparse.ArgumentParser(
        prog="local_federation.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--config", type=Path, required=True, help="experiment YAML (federated)")
    parser.add_argument(
        "--work",
        type=Path,
        default=ROOT / "runs" / "local-federation",
        help="folder for certificates, site keys, phantom data, site homes, logs and run folders "
        "(default: runs/local-federation). Running again in the same folder reuses the "
        "certificates, keys and phantom data, registers the keys with a freshly started "
        "SuperLink and adds a run folder under runs/<federation id>/",
    )
    parser.add_argument(
        "--cases", type=at_least_one, default=60, help="phantom cases per site (default 60)"
    )
    parser.add_argument("--rounds", type=at_least_one, help="override federation.rounds (>= 1)")
    args = parser.parse_args(argv)

    from ctan.config import load_config

    try:
        config = load_config(args.config).model_dump(mode="json")
    except (OSError, ValueError) as err:
        parser.error(str(err))
    if not config.get("federation", {}).get("sites"):
        parser.error(f"{args.config} has no federation.sites to join")
    if args.rounds is not None:
        config["federation"]["rounds"] = args.rounds
    try:
        with terminate_as_exit():
            result = run_local_federation(config, args.work, args.cases)
    except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    print(result["stdout"])
    print(f"run folder: {result['run']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
