"""config/prometheus-alerts.yaml: promtool accepts it, and every metric it names is one the daemon exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from evacuator.metrics import EventMetrics

RULES = Path(__file__).resolve().parents[2] / "config" / "prometheus-alerts.yaml"


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: scripts/setup installs Debian's prometheus package"
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 8 rules found" in done.stdout


def test_every_metric_the_rules_name_is_exported() -> None:
    exported = {
        sample_name
        for family in EventMetrics().registry.collect()
        for sample_name in (family.name, f"{family.name}_total")
    }
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    named = {name for rule in rules for name in re.findall(r"\bevacuator_[a-z_]+", rule["expr"])}
    assert named and named <= exported, named - exported
    assert all(rule["labels"]["severity"] in {"critical", "warning", "info"} for rule in rules)
