"""The run link init exports (``mlflow-run-url``) opens that run in the real MLflow UI, in a browser."""

from __future__ import annotations

import pytest

from argofl.steps import tracking
from tests.browser import chromium, rendered_dom

pytestmark = pytest.mark.slow


def test_run_url_opens_the_run_in_the_mlflow_ui(mlflow_server, monkeypatch):
    chromium()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    ref = tracking.create_run(
        "link-check", run_name="link-check-wf-x7k2p", params={"rounds": "3"}, tags={"argo.workflow.name": "x"}
    )
    tracking.log_metrics(ref.run_id, {"test_accuracy": 0.5}, step=1)
    url = tracking.run_url(mlflow_server.uri + "/", ref)
    assert url == f"{mlflow_server.uri}/#/experiments/{ref.experiment_id}/runs/{ref.run_id}"

    page = rendered_dom(url)
    assert "link-check-wf-x7k2p" in page  # the run's name, rendered by the UI's JavaScript
    assert ref.run_id in page
    assert "test_accuracy" in page
    # a link with another run id does not show this run: the check above can fail
    assert "link-check-wf-x7k2p" not in rendered_dom(url.replace(ref.run_id, "0" * 32))


def test_run_url_needs_an_http_ui_address():
    ref = tracking.RunRef("1", "abc")
    assert tracking.run_url("https://mlflow.example.org/base/", ref) == (
        "https://mlflow.example.org/base/#/experiments/1/runs/abc"
    )
    assert tracking.run_url("", ref) == ""
    assert tracking.run_url("sqlite:///runs/mlflow.db", ref) == ""
