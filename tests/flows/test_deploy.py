"""`mars deploy`: what a deployment carries, and the checks made before talking to a server."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from flows import deploy
from mars_core.config import MarsConfig, load_config


def test_search_parameters_carry_resolved_config():
    cfg = load_config(None, ["probes.max_rank=8"])
    params = deploy.search_parameters(cfg, run_name="nightly")
    assert MarsConfig.model_validate(params["config"]) == cfg
    assert params["run_name"] == "nightly"
    assert params["progress"] is False


def test_job_environment_keeps_results_under_workdir(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(None, [f"runtime.workdir={tmp_path}"])
    env = deploy.job_environment(cfg)
    assert env["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
    assert env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] == str(tmp_path / "prefect" / "results")
    assert "MLFLOW_TRACKING_URI" not in env


def test_job_environment_sets_given_tracking_uri():
    env = deploy.job_environment(MarsConfig(), tracking_uri="http://mlflow:5000")
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_job_environment_ignores_deployer_tracking_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    env = deploy.job_environment(MarsConfig())
    assert "MLFLOW_TRACKING_URI" not in env


def test_cron_schedule_uses_fixed_slug():
    (schedule,) = deploy.cron_schedules("0 2 * * *", "Europe/Paris")
    assert schedule.cron == "0 2 * * *"
    assert schedule.timezone == "Europe/Paris"
    assert schedule.slug == deploy.SCHEDULE_SLUG


def test_no_cron_leaves_schedules_alone():
    assert deploy.cron_schedules(None, "UTC") is None


def test_invalid_cron_is_rejected():
    with pytest.raises(deploy.DeployError, match="invalid cron expression"):
        deploy.cron_schedules("every night", "UTC")


def test_unknown_timezone_is_rejected():
    with pytest.raises(deploy.DeployError, match="unknown time zone"):
        deploy.cron_schedules("0 2 * * *", "Mars/Olympus_Mons")


def test_default_source_is_this_checkout():
    root = Path(deploy.__file__).resolve().parent.parent
    assert deploy.default_source() == str(root)


def test_source_without_entrypoint_is_rejected(tmp_path):
    with pytest.raises(deploy.DeployError, match="search.py not found"):
        deploy.load_flow(str(tmp_path))


def test_check_server_without_api_url_names_fix(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(deploy.DeployError, match="PREFECT_API_URL is not set"):
        deploy.check_server()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mars")
    deploy.add_deploy_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_deploy_parser_reads_options():
    args = _parser().parse_args(
        ["deploy", "--name", "nightly", "--work-pool", "cpu", "--cron", "0 2 * * *", "probes.max_rank=8"]
    )
    assert args.name == "nightly"
    assert args.work_pool == "cpu"
    assert args.cron == "0 2 * * *"
    assert args.overrides == ["probes.max_rank=8"]
    assert args.handler is deploy._cmd_deploy


def test_deploy_parser_rejects_pool_with_serve(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["deploy", "--name", "x", "--work-pool", "cpu", "--serve"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_deploy_parser_requires_name(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["deploy", "--serve"])
    assert "--name" in capsys.readouterr().err
