"""The chart's alerting rules under Prometheus' own tools: `promtool check rules` on the
rendered PrometheusRule, and `promtool test rules` with tests/unit/promtool/alerts.test.yaml,
which makes every alert fire and resolve."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_chart import ALERTS, helm, one, render  # noqa: F401 - helm is a fixture

HERE = Path(__file__).resolve().parent / "promtool"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is missing: it comes with Debian's prometheus package "
            "(hack/lib/packages.tsv; `bash hack/lib/deps.sh install`)",
            pytrace=False,
        )
    return path


def _groups(helm: str) -> list[dict[str, Any]]:  # noqa: F811 - the fixture's value
    rule = one(render(helm, {"prometheusRule": {"enabled": True}}), "PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def test_rules_pass_promtool_check(helm: str, promtool: str, tmp_path: Path) -> None:  # noqa: F811
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": _groups(helm)}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout, result.stdout


def test_every_alert_fires_and_resolves(helm: str, promtool: str, tmp_path: Path) -> None:  # noqa: F811
    groups = _groups(helm)
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)  # their text is checked by test_chart
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    tests = tmp_path / "alerts.test.yaml"
    shutil.copy(HERE / "alerts.test.yaml", tests)
    spec = yaml.safe_load(tests.read_text())
    tested: dict[str, set[bool]] = {}
    for case in spec["tests"]:
        for check in case["alert_rule_test"]:
            tested.setdefault(check["alertname"], set()).add(bool(check["exp_alerts"]))
    assert set(tested) == ALERTS, "every alert needs a promtool test"
    for alert, outcomes in tested.items():
        assert outcomes == {True, False}, f"{alert}: test it firing and not firing"
    result = subprocess.run(
        [promtool, "test", "rules", str(tests)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
