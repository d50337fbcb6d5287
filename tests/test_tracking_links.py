"""Asset metadata links each MLflow-logged asset to its run's page in the MLflow UI."""

from resources.tracking import TrackingResource


def test_run_link_points_at_the_run_page(tmp_path, monkeypatch):
    monkeypatch.setenv("FIRM_HOME", str(tmp_path))
    tracking = TrackingResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracking.create_run("firm-links", "a-run", {})
    experiment_id = tracking.experiment_id("firm-links")
    assert (
        tracking.run_link(run_id).url == f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}"
    )
    monkeypatch.setenv("FIRM_MLFLOW_UI", "https://mlflow.example.org/")
    assert tracking.run_link(run_id).url.startswith(
        f"https://mlflow.example.org/#/experiments/{experiment_id}/"
    )
