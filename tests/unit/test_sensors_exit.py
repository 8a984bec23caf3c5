"""`evacuator sensors` says when a source failed: exit 1 with the source, what it was doing and the error's
type and text (or "no message"); exit 2 for a settings file it cannot use; 0 when every source was read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pyghmi.exceptions import IpmiException  # type: ignore[import-untyped]

from evacuator.cli import main
from monitors.errors import SourceError
from monitors.ipmi import IpmiSource, PyghmiClient, describe
from monitors.readings import SourceState

ROOT = Path(__file__).resolve().parents[2]
TREE = ROOT / "tests" / "data" / "sysfs" / "intel-2s"


@pytest.mark.parametrize(("error", "described"), [
    (IpmiException(None), "IpmiException: no message"),
    (IpmiException(), "IpmiException: no message"),
    (IpmiException("timeout", code=0xC3), "IpmiException: timeout (IPMI completion code 0xc3)"),
    (OSError(), "OSError: no message"),
    (ConnectionRefusedError(111, "Connection refused"),
     "ConnectionRefusedError: [Errno 111] Connection refused"),
    (KeyError("data"), "KeyError: 'data'"),
])  # fmt: skip
def test_an_error_is_described_by_its_type_and_text_or_no_message(error: Exception, described: str) -> None:
    assert describe(error) == described


def _client(connect: Any) -> PyghmiClient:
    return PyghmiClient(host="10.0.0.9", port=623, username="admin", password="S3cret!", connect=connect)


def test_a_bmc_that_never_answers_names_the_target_and_the_session() -> None:
    def silent() -> Any:
        raise IpmiException(None)  # what pyghmi raises when its login retries run out unanswered

    with pytest.raises(SourceError) as failed:
        _client(silent).read_sensors()
    assert str(failed.value) == ("BMC 10.0.0.9:623: opening the IPMI-over-LAN session failed: "
                                 "IpmiException: no message")  # fmt: skip
    result = IpmiSource(_client(silent)).poll()
    assert result.status.state is SourceState.FAILED and "no message" in result.status.detail
    assert "S3cret!" not in result.status.detail


class _Session:
    """A session that opens, then fails the command it is asked."""

    def raw_command(self, **_: Any) -> dict[str, Any]:
        return {"error": "Invalid command", "code": 0xC1}


def test_a_failed_command_names_it_and_its_completion_code() -> None:
    with pytest.raises(SourceError) as failed:
        _client(_Session).sel_last_addition()
    assert str(failed.value) == ("BMC 10.0.0.9:623: reading the SEL info (Get SEL Info) failed: "
                                 "IpmiException: Invalid command (IPMI completion code 0xc1)")  # fmt: skip


def _only_faults(tmp_path: Path) -> Path:
    """A sysfs tree whose one hwmon chip has nothing readable: the hwmon source fails."""
    chip = tmp_path / "sys" / "class" / "hwmon" / "hwmon0"
    chip.mkdir(parents=True)
    (chip / "name").write_text("coretemp\n")
    (chip / "temp1_input").write_text("garbage\n")
    return tmp_path / "sys"


@pytest.mark.parametrize("as_json", [False, True])
def test_a_failed_source_exits_1_after_the_report_and_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    args = ["sensors", "--sysfs-root", str(_only_faults(tmp_path))] + (["--json"] if as_json else [])
    assert main(args) == 1
    out, err = capsys.readouterr()
    if as_json:
        sources = {s["source"]: s["state"] for s in json.loads(out)["sources"]}
        assert sources["hwmon"] == "failed"
    else:
        assert "SOURCE hwmon: failed" in out
    assert "evacuator: sensor source hwmon failed: no reading (its faults are in the report)" in err


def test_every_source_read_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sensors", "--sysfs-root", str(TREE), "--json"]) == 0
    assert "failed" not in capsys.readouterr().err


def test_a_settings_file_it_cannot_use_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "evacuator.yaml"
    bad.write_text("monitors: {poll_interval_seconds: soon}\n", encoding="utf-8")
    assert main(["sensors", "--config", str(bad)]) == 2
    assert main(["sensors", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"evacuator: {bad}: invalid settings" in err and "missing.yaml: cannot read settings" in err
