"""Run a whole federation on this machine with Flower's simulation engine, and clean up.

    python -m server.simulate --config configs/demo.yaml

Starts a private SuperLink in simulation mode (own ``FLWR_HOME``, free ports on 127.0.0.1,
telemetry, update checks and runtime dependency installation off), submits the app with
``flwr run`` pointing at the YAML, streams its log, checks that the run really completed
(``flwr run --stream`` exits 0 even when the run failed), and stops the SuperLink it started by
its PID and every helper of it (SuperExec, the simulation runtime, Ray's processes, found by the
private home), also on failure, Ctrl-C or SIGTERM; signals are ignored while it cleans up, so a
second Ctrl-C cannot leave processes behind. The private home is removed at the end unless the
run failed (its logs stay) or ``--keep-flwr-home`` is given. ``--resume`` without a server state
to resume is refused before anything starts. ``flwr run .`` from the project root works as well.
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
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ctan.config import Config, load_config

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONNECTION = "simulation"
FINISHED = "finished"
#: signals that end a simulation early: SIGTERM, a closed terminal (SIGHUP), Ctrl-C (SIGINT)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: the longest home path under which Ray's socket paths (about 70 more bytes:
#: ``/ray/session_<time>_<pid>/sockets/plasma_store``) stay within a Unix socket path's 107
RAY_TMPDIR_MAX_LENGTH = 36


def flower_env(home: Path) -> dict[str, str]:
    """The environment for every Flower process of this simulation.

    Ray's temporary folder (``RAY_TMPDIR``: sockets, session logs) lies in the private home too,
    so that Ray's agents, which keep their logs open there, can be told apart from another
    simulation's, and no session folder is left in the system's ``/tmp/ray``; unless the home's
    path is so long (a long ``TMPDIR``) that Ray's socket paths below it would pass the 107
    bytes a Unix socket path may have: Ray then keeps its default folder.
    """
    env = os.environ.copy()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if len(str(home)) <= RAY_TMPDIR_MAX_LENGTH:
        env["RAY_TMPDIR"] = str(home)
    env.update(
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
    )
    return env


def site_resources(
    sites: int, device: str, cpus: int, gpus: int, gpus_per_site: float | None = None
) -> tuple[int, float]:
    """CPUs and the share of a GPU that each simulated site's worker asks Ray for.

    Ray hides every GPU from a worker that asked for none (it sets ``CUDA_VISIBLE_DEVICES`` to
    an empty string), so a site sees a GPU only when it is given a share of one. By default, with
    ``train.device`` ``auto`` or ``cuda`` and GPUs on this machine, the GPUs are shared evenly
    among the sites, at most one whole GPU each.

    Args:
        sites: simulated sites.
        device: the config's ``train.device``.
        cpus, gpus: what this machine has.
        gpus_per_site: an explicit share (0 keeps the sites on the CPU).

    Raises:
        ValueError: a GPU share is asked for (or ``device`` is ``cuda``) but there is no GPU.
    """
    cpus_per_site = max(1, cpus // sites)
    if gpus_per_site is None:
        if device.startswith("cuda") and not gpus:
            raise ValueError(f"train.device is {device!r} but torch sees no GPU on this machine")
        gpus_per_site = min(1.0, gpus / sites) if gpus and device != "cpu" else 0.0
    if gpus_per_site < 0:
        raise ValueError(f"gpus per site must be at least 0, got {gpus_per_site}")
    if gpus_per_site > 0 and not gpus:
        raise ValueError(
            f"{gpus_per_site} GPU per site asked for, but torch sees no GPU on this machine "
            "(Ray would wait for one forever)"
        )
    return cpus_per_site, gpus_per_site


def _bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def start_superlink(home: Path, port: int) -> subprocess.Popen:
    """Start a simulation SuperLink; returns once its HTTP API answers (or raises)."""
    log_file = home / "superlink.log"
    command = [
        _bin("flower-superlink"),
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database",
        str(home / "state.db"),
        "--log-file",
        str(log_file),
        "--disable-runtime-dependency-installation",
    ]
    process = subprocess.Popen(
        command,
        env=flower_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(process, port, log_file)
    except BaseException:
        stop(process)
        raise
    return process


def wait_for_port(process: subprocess.Popen, port: int, log_file: Path) -> None:
    """Return once ``process`` listens on ``port`` of 127.0.0.1 (60 s at most).

    Raises:
        RuntimeError: it exited first, or did not listen within 60 s (its log is named).
    """
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the SuperLink exited with code {process.returncode}; see {log_file}"
            )
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise RuntimeError(f"the SuperLink did not start within 60 s; see {log_file}")


def stop(process: subprocess.Popen) -> None:
    """Stop a process group started here: SIGTERM, then SIGKILL after 10 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def holds_file_under(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` has a file inside ``folder`` open."""
    prefix = f"{folder}{os.sep}"
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(fd).startswith(prefix):
                return True
    return False


def processes_of(home: Path) -> list[int]:
    """PIDs of the live processes of the simulation whose private ``FLWR_HOME`` is ``home``.

    The SuperLink's helpers (SuperExec, the simulation runtime, Ray's raylet and workers) leave
    its process group, so they are found by the ``FLWR_HOME`` they inherit instead. Ray's agents
    (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) start with a cleared environment and
    outlive their raylet; they are found by the session logs they keep open under ``home``
    (``RAY_TMPDIR``, see :func:`flower_env`).
    """
    marker = f"FLWR_HOME={home}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid() or not running(pid):
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in environ or (cmdline.startswith(b"ray::") and holds_file_under(pid, home)):
            found.append(pid)
    return found


def stop_leftovers(home: Path, timeout: float = 10.0) -> None:
    """SIGTERM every process of this simulation still alive, SIGKILL those that stay."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = processes_of(home)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = [p for p in pids if running(p)]
        if not pids:
            return


def write_connection(home: Path, port: int) -> None:
    """``$FLWR_HOME/config.toml`` naming this SuperLink as the default connection."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )


def flwr_json(home: Path, *args: str) -> dict:
    """The JSON that ``flwr <args> --format json`` prints, run against the private home.

    Raises:
        RuntimeError: the command printed no JSON object (its output is in the message).
    """
    result = subprocess.run(
        [_bin("flwr"), *args, "--format", "json"],
        env=flower_env(home),
        capture_output=True,
        text=True,
        check=False,
        cwd=PROJECT_ROOT,
    )
    try:
        payload = json.loads(result.stdout)
    except json.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        output = " ".join(part for part in (result.stdout.strip(), result.stderr.strip()) if part)
        raise RuntimeError(f"flwr {args[0]} gave no JSON: {output}")
    return payload


def run_status(home: Path, run_id: int) -> dict:
    """``flwr ls --run-id`` as a dict (status fields as Flower reports them)."""
    payload = flwr_json(home, "ls", CONNECTION, "--run-id", str(run_id))
    runs = payload.get("runs", [])
    return runs[0] if runs else payload


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM, SIGHUP (a closed terminal or dropped SSH session) and SIGINT (Ctrl-C)
    into ``SystemExit(128 + signal)`` while inside, so ``finally`` blocks still run.

    Python's default SIGTERM and SIGHUP end the process at once, which would leave the SuperLink
    and its helpers running (they live in sessions of their own, so no hangup reaches them).
    Only the main thread can take signals; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {signum: signal.signal(signum, leave) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Ignore SIGTERM, SIGHUP and SIGINT while inside: for cleanup, which a second Ctrl-C must
    not cut short (that would leave processes and the private home behind). The previous
    handlers come back on leaving; only the main thread can change them, elsewhere this does
    nothing. Processes started inside inherit the ignored signals.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def require_state_to_resume(config: Config, output_dir: Path | None) -> None:
    """Refuse ``--resume`` before anything starts when there is no server state to resume.

    Raises:
        FileNotFoundError: names ``<output dir>/<federation id>/server-state.pt``.
    """
    from server.rounds import STATE_NAME

    base = output_dir.resolve() if output_dir is not None else config.experiment.output_dir
    state = base / config.federation.id / STATE_NAME
    if not state.is_file():
        raise FileNotFoundError(
            f"nothing to resume: {state} does not exist (start the run without --resume)"
        )


def simulate(
    config_path: Path,
    rounds: int,
    output_dir: Path | None,
    state_dir: Path | None,
    resume: bool,
    keep_home: bool,
    gpus_per_site: float | None = None,
) -> int:
    """Run the simulation; returns 0 when the run completed, 1 otherwise.

    Raises:
        ValueError: the config has no sites, its sites do not fit its partition, or it asks
            for a GPU this machine lacks.
        FileNotFoundError: ``resume`` is set but there is no server state to resume.
    """
    import torch

    from ctan.federation import partition_problems, simulated_partition

    config = load_config(config_path)
    if config.federation is None or not config.federation.sites:
        raise ValueError(f"{config_path} needs a federation section with sites to simulate")
    try:
        partition = simulated_partition(config)
    except ValueError as err:
        raise ValueError(f"{config_path}: {err}") from err
    problems = partition_problems(config, partition)
    if problems:
        raise ValueError(f"{config_path}: " + "; ".join(problems))
    if resume:
        require_state_to_resume(config, output_dir)
    sites = len(config.federation.sites)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cpus, gpu_share = site_resources(
        sites, config.train.device, os.cpu_count() or 1, gpus, gpus_per_site
    )
    home = Path(tempfile.mkdtemp(prefix="ctan-flwr-home-"))
    port = free_port()
    write_connection(home, port)
    run_config = {"config": str(config_path.resolve()), "resume": resume}
    if rounds:
        run_config["rounds"] = rounds
    if output_dir is not None:
        run_config["output-dir"] = str(output_dir.resolve())
    if state_dir is not None:
        run_config["state-dir"] = str(state_dir.resolve())
    overrides = " ".join(
        f"{k}={json.dumps(v) if isinstance(v, str) else str(v).lower()}"
        for k, v in run_config.items()
    )
    gpu_text = f", {gpu_share:g} of a GPU" if gpu_share else ""
    print("cases per site: " + ", ".join(f"{n} {len(c)}" for n, c in partition.items()))
    print(
        f"simulating {sites} sites ({cpus} CPU{gpu_text} each); private FLWR_HOME {home}, "
        f"SuperLink on 127.0.0.1:{port}"
    )
    with terminate_as_exit():
        superlink: subprocess.Popen | None = None
        try:
            superlink = start_superlink(home, port)
            submitted = flwr_json(
                home,
                "run",
                str(PROJECT_ROOT),
                CONNECTION,
                "--run-config",
                overrides,
                "--federation-config",
                f"num-supernodes={sites} client-resources-num-cpus={cpus} "
                f"client-resources-num-gpus={gpu_share}",
            )
            try:
                run_id = int(submitted["run-id"])
            except (KeyError, TypeError, ValueError) as err:
                raise RuntimeError(f"flwr run submitted no run: {submitted}") from err
            print(f"run {run_id} submitted; streaming its log")
            subprocess.run(
                [_bin("flwr"), "log", str(run_id), CONNECTION, "--stream"],
                env=flower_env(home),
                check=False,
                cwd=PROJECT_ROOT,
            )
            status = run_status(home, run_id)
            deadline = time.monotonic() + 60
            while FINISHED not in str(status.get("status", "")) and time.monotonic() < deadline:
                time.sleep(1)
                status = run_status(home, run_id)
            text = str(status.get("status", status))
            if "completed" in text and "failed" not in text:
                print(f"run {run_id} completed")
                return 0
            print(
                f"run {run_id} did not complete: {text}; SuperLink log: {home / 'superlink.log'}",
                file=sys.stderr,
            )
            keep_home = True
            return 1
        except RuntimeError:
            keep_home = True  # the error names a log in it
            raise
        finally:
            with signals_ignored():
                if superlink is not None:
                    stop(superlink)
                stop_leftovers(home)
                if not keep_home:
                    shutil.rmtree(home, ignore_errors=True)


def at_least_one(text: str) -> int:
    """An argument that must be a whole number of at least 1 (``--rounds``, ``--cases``)."""
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server.simulate",
        description="Simulate a whole federation on this machine with Flower's simulation engine.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=PROJECT_ROOT / "configs" / "demo.yaml",
        help="experiment YAML with a federation section (default: the demo)",
    )
    parser.add_argument(
        "--rounds", type=at_least_one, default=0, help="override federation.rounds (>= 1)"
    )
    parser.add_argument("--output-dir", type=Path, help="override experiment.output_dir")
    parser.add_argument(
        "--state-dir", type=Path, help="site state folder (default: <output_dir>/site-state)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run (needs <output_dir>/<federation id>/server-state.pt)",
    )
    parser.add_argument(
        "--keep-flwr-home",
        action="store_true",
        help="keep the private FLWR_HOME (logs) after a successful run",
    )
    parser.add_argument(
        "--gpus-per-site",
        type=float,
        help="share of a GPU each site asks for (default: the GPUs split evenly among the sites "
        "when train.device is auto or cuda; 0 keeps every site on the CPU)",
    )
    args = parser.parse_args(argv)
    try:
        return simulate(
            args.config,
            args.rounds,
            args.output_dir,
            args.state_dir,
            args.resume,
            args.keep_flwr_home,
            args.gpus_per_site,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"simulate: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
