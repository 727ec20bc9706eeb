"""compose.yaml, the Kubernetes manifests and the alert rules cannot run here (no Docker engine);
these tests hold them to the code: every worker the CLI knows runs, with documented settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from libs.observability import metrics
from libs.settings import Settings
from services import catalog

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _env_name(field: str) -> str:
    return "SETTLE_" + field.upper()


def test_every_worker_the_cli_knows_is_a_compose_service_running_it() -> None:
    services = _compose()["services"]
    for worker in catalog.worker_names():
        assert worker in services, f"compose.yaml has no service for worker {worker!r}"
        command = services[worker]["command"]
        assert command[:2] == ["run", worker], f"{worker} runs {command}"
        assert services[worker]["build"]["dockerfile"] == "deploy/Dockerfile"


def test_compose_uses_real_kafka_in_kraft_mode_and_postgres() -> None:
    services = _compose()["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["migrate"]["command"] == ["migrate"]
    assert services["topics"]["command"] == ["topics", "create"]


def test_compose_environment_uses_only_documented_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    known = {_env_name(f) for f in Settings.model_fields}
    for name, service in _compose()["services"].items():
        for key in service.get("environment") or {}:
            if key.startswith("SETTLE_"):
                assert key in known, f"{name} sets {key}, which Settings does not read"
                assert f"`{key}`" in readme, f"{key} (used by compose service {name}) is not documented in README"


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`(SETTLE_[A-Z0-9_]+)`", readme))
    expected = {_env_name(f) for f in Settings.model_fields}
    assert expected <= documented, f"undocumented settings: {sorted(expected - documented)}"
    assert documented <= expected, f"README documents settings that do not exist: {sorted(documented - expected)}"


def test_every_worker_has_a_kubernetes_deployment() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy/k8s/settle.yaml").read_text()))
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for worker in catalog.worker_names():
        spec = deployments[f"settle-{worker}"]["spec"]["template"]["spec"]["containers"][0]
        assert spec["args"][:2] == ["run", worker]
        assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert any(
        d["kind"] == "Job" and d["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"] for d in docs
    )


def test_alert_rules_only_use_exported_metrics() -> None:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    from services.payments import metrics as payments_metrics
    from services.payouts import metrics as payouts_metrics
    from services.saga import metrics as saga_metrics

    exported = {
        m._name
        for module in (metrics, payments_metrics, saga_metrics, payouts_metrics)
        for m in vars(module).values()
        if hasattr(m, "_name")
    }
    exported |= {f"{name}_total" for name in exported} | {f"{name}_bucket" for name in exported}
    for group in rules["groups"]:
        for rule in group["rules"]:
            for name in re.findall(r"\b(settle_[a-z_]+)", rule["expr"]):
                assert name in exported, f"alert {rule['alert']} uses {name}, which no worker exports"
