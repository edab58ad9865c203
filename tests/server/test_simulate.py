"""What each simulated site asks Ray for (CPUs and a share of the GPUs), and how the Flower CLI's
answers are read."""

from __future__ import annotations

import pytest

from server.simulate import flwr_json, main, site_resources


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
    assert f"--rounds must be a whole number >= 1, got {rounds!r}" in capsys.readouterr().err
