"""What each simulated site asks Ray for (CPUs and a share of the GPUs), how the Flower CLI's
answers are read, and how a simulation's processes are found and stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from factories import derm_config

from server.simulate import (
    flwr_json,
    main,
    processes_of,
    signals_ignored,
    site_resources,
    stop_leftovers,
    terminate_as_exit,
)


def federation_yaml(ham_phantom: Path, tmp: Path, rounds: int) -> Path:
    """A three-site federation of the small derm model on the HAM10000 phantoms."""
    raw = derm_config(ham_phantom, tmp).model_dump(mode="json")
    raw["train"]["epochs"] = 1
    raw["federation"] = {
        "id": "sim-test",
        "rounds": rounds,
        "min_sites": 3,
        "partition": {"method": "site"},
        "sites": [
            {"name": name, "tasks": ["lesion"]}
            for name in ("rosendahl", "vidir_modern", "vidir_molemax")
        ],
    }
    path = tmp / "federation.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def started_as(process: subprocess.Popen, name: str) -> None:
    """Wait until ``process`` has exec'd into a program whose command line starts with ``name``."""
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{process.pid}/cmdline").read_bytes().startswith(name.encode()):
        assert time.monotonic() < deadline, f"{process.args} never became {name}"
        time.sleep(0.05)


def test_sites_share_the_gpus_when_the_device_allows_it() -> None:
    assert site_resources(4, "auto", cpus=16, gpus=1) == (4, 0.25)
    assert site_resources(2, "cuda", cpus=16, gpus=4) == (8, 1.0)
    assert site_resources(3, "cuda:0", cpus=2, gpus=1) == (1, pytest.approx(1 / 3))


def test_cpu_device_or_no_gpu_keeps_sites_on_the_cpu() -> None:
    assert site_resources(4, "cpu", cpus=16, gpus=2) == (4, 0.0)
    assert site_resources(4, "auto", cpus=2, gpus=0) == (1, 0.0)


def test_an_explicit_share_wins() -> None:
    assert site_resources(4, "auto", cpus=16, gpus=1, gpus_per_site=0) == (4, 0)
    assert site_resources(4, "cpu", cpus=16, gpus=1, gpus_per_site=0.5) == (4, 0.5)


def test_a_gpu_that_is_not_there_is_refused_before_ray_waits_for_it() -> None:
    with pytest.raises(ValueError, match="sees no GPU"):
        site_resources(3, "cuda", cpus=2, gpus=0)
    with pytest.raises(ValueError, match="wait for one forever"):
        site_resources(3, "auto", cpus=2, gpus=0, gpus_per_site=0.5)
    with pytest.raises(ValueError, match="at least 0"):
        site_resources(3, "auto", cpus=2, gpus=1, gpus_per_site=-1)


def test_cli_names_the_missing_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["--gpus-per-site", "0.5"]) == 2
    assert "sees no GPU" in capsys.readouterr().err


def test_a_flwr_command_without_json_output_names_the_command_and_its_output(tmp_path) -> None:
    with pytest.raises(RuntimeError, match=r"(?s)flwr ls gave no JSON: Usage: .*no-such-flag"):
        flwr_json(tmp_path, "ls", "--no-such-flag")


@pytest.mark.parametrize("rounds", ["0", "-3", "two"])
def test_a_bad_rounds_value_is_refused_before_anything_starts(
    rounds: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--rounds", rounds])
    assert exited.value.code == 2
    assert f"argument --rounds: must be a whole number >= 1, got {rounds!r}" in (
        capsys.readouterr().err
    )


def test_resume_without_a_server_state_is_refused_before_anything_starts(
    ham_phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = federation_yaml(ham_phantom, tmp_path, rounds=1)
    output = tmp_path / "out"
    assert main(["--config", str(path), "--output-dir", str(output), "--resume"]) == 2
    captured = capsys.readouterr()
    expected = output / "sim-test" / "server-state.pt"
    assert f"nothing to resume: {expected} does not exist" in captured.err
    assert "private FLWR_HOME" not in captured.out


def test_a_ray_agent_that_ignores_sigterm_is_found_by_its_open_log_and_killed(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    (home / "ray").mkdir(parents=True)
    agent_program = 'trap "" TERM; exec -a ray::DashboardAgent sleep 60'
    bare = {"PATH": os.environ["PATH"]}
    with (home / "ray" / "dashboard_agent.log").open("w") as log:
        agent = subprocess.Popen(["bash", "-c", agent_program], stdout=log, env=bare)
    elsewhere = subprocess.Popen(["bash", "-c", agent_program], stdout=subprocess.DEVNULL, env=bare)
    try:
        started_as(agent, "ray::")
        started_as(elsewhere, "ray::")
        assert processes_of(home) == [agent.pid]
        stop_leftovers(home, timeout=1)
        assert agent.wait(timeout=5) == -signal.SIGKILL
        assert processes_of(home) == [] and elsewhere.poll() is None
    finally:
        for process in (agent, elsewhere):
            process.kill()
            process.wait()


def test_cleanup_ignores_a_second_interrupt_and_the_handler_comes_back() -> None:
    with terminate_as_exit():
        with signals_ignored():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
        with pytest.raises(SystemExit) as exited:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert exited.value.code == 128 + signal.SIGINT


def test_ray_keeps_its_default_folder_under_a_home_too_long_for_its_sockets() -> None:
    from server.simulate import flower_env

    assert flower_env(Path("/tmp/ctan-flwr-home-abcdefgh"))["RAY_TMPDIR"] == (
        "/tmp/ctan-flwr-home-abcdefgh"
    )
    long_home = Path("/var/folders/xy/0123456789abcdefghij/T/ctan-flwr-home-abcdefgh")
    assert flower_env(long_home).get("RAY_TMPDIR") == os.environ.get("RAY_TMPDIR"), "inherited"
