"""The coordinator side: a Flower ServerApp running the resumable task-aware round loop."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ctan.federation import config_from_run_config, resume_from_run_config
from server.rounds import run_federation

APP_ROOT = Path(__file__).resolve().parents[1]

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Read the coordinator's YAML (run config ``config``) and run or resume the federation."""
    config = config_from_run_config(context.run_config, APP_ROOT)
    run_federation(grid, config, resume=resume_from_run_config(context.run_config))
