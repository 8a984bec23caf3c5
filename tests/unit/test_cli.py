"""The admin commands `sensors`, `simulate` and `tenant` (its refusals), run as an admin would, on committed
fixture data and a fake rabbitmqctl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from evacuator.cli import EXIT_BROKEN_PIPE, main
from notifiers.provisioning import TENANT_TAG
from tests.fakes import rabbitmqctl as fake_rabbitmqctl

ROOT = Path(__file__).resolve().parents[2]
TREE = ROOT / "tests" / "data" / "sysfs" / "intel-2s"
EXAMPLE = ROOT / "config" / "evacuator.example.yaml"
TRACE = ROOT / "docs" / "trace.example.jsonl"


def _evacuator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evacuator.cli", *args], capture_output=True, text=True, check=False, cwd=ROOT
    )


def test_version_names_the_installed_package() -> None:
    done = _evacuator("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"evacuator {version('evacuator')}")


def test_every_command_reads_the_settings_file_named_by_evacuator_config(tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.yaml"
    config.write_text(EXAMPLE.read_text())
    env = {**os.environ, "EVACUATOR_CONFIG": str(config)}
    for args in (["check-config"], ["check-config", "--config", str(config)], ["check-config", str(config)]):
        done = subprocess.run([sys.executable, "-m", "evacuator.cli", *args], capture_output=True, text=True,
                              check=False, cwd=ROOT, env=env if len(args) == 1 else None)  # fmt: skip
        assert (done.returncode, done.stdout.split(":")[0]) == (0, str(config)), (args, done.stderr)
    missing = subprocess.run([sys.executable, "-m", "evacuator.cli", "check-config"], capture_output=True,
                             text=True, check=False, cwd=ROOT,
                             env={**os.environ, "EVACUATOR_CONFIG": str(tmp_path / "none.yaml")})  # fmt: skip
    assert missing.returncode == 1 and "none.yaml" in missing.stderr


def test_a_reader_that_goes_away_ends_the_output_without_a_traceback() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "evacuator.cli", "sensors", "--sysfs-root", str(TREE), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # as `| head` does once it has what it wants: before the report is written
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == EXIT_BROKEN_PIPE
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_sensors_json_is_one_object_in_the_documented_shape() -> None:
    done = _evacuator("sensors", "--sysfs-root", str(TREE), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # nothing but the report on stdout: logs go to stderr
    temperature = report["temperatures"][0]
    assert {"chip", "hwmon", "sensor", "label", "celsius", "max_celsius", "crit_celsius"} <= set(temperature)
    assert all(not t["chip"].startswith("hwmon") for t in report["temperatures"])
    mc = report["memory_controllers"][0]
    assert {
        "controller",
        "ce_count",
        "ue_count",
        "ce_noinfo_count",
        "ue_noinfo_count",
        "csrows",
        "dimms",
    } <= set(mc)
    assert mc["controller"] == "mc0"
    dimm = mc["dimms"][0]
    assert {"dimm", "label", "ce_count", "ue_count"} <= set(dimm)


def test_sensors_json_shows_csrows_with_channels(tmp_path: Path) -> None:
    trees = [p for p in (ROOT / "tests" / "data" / "sysfs").iterdir() if p.is_dir() and p.name != "golden"]
    csrows = []
    for tree in trees:
        done = _evacuator("sensors", "--sysfs-root", str(tree), "--json")
        assert done.returncode == 0, done.stderr
        csrows += [c for mc in json.loads(done.stdout)["memory_controllers"] for c in mc["csrows"]]
    assert csrows, "at least one fixture tree has legacy csrows"
    assert {"csrow", "ce_count", "ue_count", "channels"} <= set(csrows[0])
    assert {"channel", "ce_count", "dimm_label"} <= set(csrows[0]["channels"][0])


def test_sensors_text_lists_the_chips(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sensors", "--sysfs-root", str(TREE)]) == 0
    out = capsys.readouterr().out
    assert "coretemp-platform-coretemp.0" in out and "Package id 0" in out


def test_simulate_prints_one_severe_transition_for_the_example_trace() -> None:
    done = _evacuator("simulate", "--config", str(EXAMPLE), "--trace", str(TRACE))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    transitions = [line for line in lines if "->" in line]
    # One hot sample (91 °C between 46 and 47) is noise; three in a row at 92-94 °C make the host severe.
    assert transitions == [
        "2026-11-25T12:01:10+00:00  healthy -> severe: notify each tenant, then evacuate its VMs when its "
        "preprocessing window ends"
    ]
    assert lines[-1].startswith("15 samples; transitions into severe=1")


def test_simulate_names_the_bad_line(tmp_path: Path) -> None:
    trace = tmp_path / "bad.jsonl"
    trace.write_text('{"at": "2026-11-25T12:00:00+00:00"}\n{"at": "yesterday"}\n', encoding="utf-8")
    done = _evacuator("simulate", "--config", str(EXAMPLE), "--trace", str(trace))
    assert done.returncode == 1
    assert "trace line 2: field at" in done.stderr


def test_simulate_names_a_missing_trace(tmp_path: Path) -> None:
    done = _evacuator("simulate", "--config", str(EXAMPLE), "--trace", str(tmp_path / "none.jsonl"))
    assert done.returncode == 1 and "none.jsonl: cannot read trace" in done.stderr



# --- tenant: what it refuses before reaching the broker (the rest: tests/integration, tests/security) ------


def _tenant_config(tmp_path: Path, service_user: str) -> Path:
    # Port 1: nothing listens, so a command that got past its refusals would fail to connect.
    path = tmp_path / "evacuator.yaml"
    path.write_text(
        "host: {name: hv1}\n"
        "peers: [{name: hv2, libvirt_uri: 'qemu+tcp://hv2/system'}]\n"
        "data_channel: {enabled: false}\n"
        f"broker: {{url: 'amqp://{service_user}:pw@127.0.0.1:1/%2F'}}\n"
    )
    return path


def _fake_ctl(tmp_path: Path, users: dict[str, dict[str, Any]]) -> tuple[Path, str]:
    state = tmp_path / "users.json"
    fake_rabbitmqctl.write_state(state, users)
    return state, f"{sys.executable} {fake_rabbitmqctl.__file__} {state}"


@pytest.mark.parametrize(
    ("action", "extra"),
    [("add", []), ("add", ["--reset-password"]), ("remove", [])],
    ids=["add", "add_reset_password", "remove"],
)
def test_tenant_refuses_an_administrator_and_leaves_it_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str, extra: list[str]
) -> None:
    admin = {"password": "old", "tags": ["administrator"]}
    state, ctl = _fake_ctl(tmp_path, {"ops": admin})
    config = str(_tenant_config(tmp_path, "evacuator"))
    assert main(["tenant", action, "ops", "--config", config, "--rabbitmqctl", ctl, *extra]) == 1
    assert "'ops' exists and is not a tenant (tags: administrator;" in capsys.readouterr().err
    assert fake_rabbitmqctl.read_state(state)["users"] == {"ops": admin}


def test_tenant_add_refuses_the_user_the_service_connects_as(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, ctl = _fake_ctl(tmp_path, {"svc": {"password": "old", "tags": [TENANT_TAG]}})
    config = str(_tenant_config(tmp_path, "svc"))
    assert main(["tenant", "add", "svc", "--config", config, "--rabbitmqctl", ctl, "--reset-password"]) == 1
    assert "the broker user the service connects as" in capsys.readouterr().err
    assert fake_rabbitmqctl.read_state(state)["calls"] == []


def test_tenant_add_keeps_a_password_unless_told_to_reset_it() -> None:
    from evacuator.cli import _parser

    assert _parser().parse_args(["tenant", "add", "acme"]).reset_password is False
    assert _parser().parse_args(["tenant", "add", "acme", "--reset-password"]).reset_password is True
