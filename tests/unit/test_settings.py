"""Settings: the example file is valid and complete; bad files fail check-config naming file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from evacuator.cli import main
from evacuator.errors import ConfigError
from evacuator.settings import Settings, load_settings, parse_settings
from notifiers.settings import BrokerSettings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "evacuator.example.yaml"
MINIMAL = "host: {name: hv-01}\npeers: [{name: hv-02, libvirt_uri: 'qemu+tcp://hv-02/system'}]\n"


def _model_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths |= _model_paths(annotation, f"{prefix}{name}.")
        else:
            paths.add(f"{prefix}{name}")
    return paths


def _yaml_paths(data: Any, prefix: str = "") -> set[str]:
    if isinstance(data, dict):
        return set().union(*(_yaml_paths(v, f"{prefix}{k}.") for k, v in data.items()))
    if isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        return set().union(*(_yaml_paths(item, prefix) for item in data))
    return {prefix.rstrip(".")}


def test_example_settings_are_valid() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.host.name == "hv-01" and settings.peers[0].name == "hv-02"


def test_example_settings_document_every_field() -> None:
    written = _yaml_paths(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8")))
    peers = {f"peers.{p}" for p in ("name", "libvirt_uri", "storage_pool")}
    expected = (_model_paths(Settings) - {"peers"}) | peers
    assert sorted(expected - written) == [], "fields missing from config/evacuator.example.yaml"
    assert sorted(written - expected) == [], "example fields the model does not know"


def test_minimal_settings_take_defaults() -> None:
    settings = parse_settings(MINIMAL, Path("minimal.yaml"))
    assert settings.evacuation.default_window_seconds == 600
    channel = settings.data_channel  # on, encrypted as libvirt is, unless the admin says otherwise
    assert (channel.enabled, channel.encryption, channel.port) == (True, "auto", 16529)
    assert settings.host.libvirt_uri == "qemu:///system"


@pytest.mark.parametrize(
    ("extra", "field", "why"),
    [
        ("evacuation: {default_window_secs: 5}", "evacuation.default_window_secs", "unknown field"),
        ("evacuation: {default_window_seconds: soon}", "evacuation.default_window_seconds", "integer"),
        (
            "monitors: {temperature: {threshold_celsius: hot}}",
            "monitors.temperature.threshold_celsius",
            "number",
        ),
        ("monitors: {poll_interval_seconds: -1}", "monitors.poll_interval_seconds", "greater than 0"),
        ("colour: blue", "colour", "unknown field"),
        ("evacuation: {default_window_seconds: 7200}", "evacuation", "must not exceed max_window_seconds"),
        ("data_channel: {encryption: aes}", "data_channel.encryption", "'auto', 'tls' or 'none'"),
        ("data_channel: {port: 70000}", "data_channel.port", "less than or equal to 65535"),
        ("data_channel: {stall_timeout_seconds: 0}", "data_channel.stall_timeout_seconds", "greater than 0"),
    ],
)
def test_bad_field_is_named_in_the_error(extra: str, field: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(MINIMAL + extra + "\n", Path("/etc/evacuator/bad.yaml"))
    message = str(caught.value)
    assert message.startswith("/etc/evacuator/bad.yaml: ")
    assert f"  {field}: " in message and why in message


def test_a_peer_that_is_this_host_is_refused() -> None:
    text = "host: {name: hv-01}\npeers: [{name: hv-01, libvirt_uri: 'qemu:///system'}]\n"
    with pytest.raises(ConfigError, match="must not include this host"):
        parse_settings(text, Path("self.yaml"))


@pytest.mark.parametrize("text", [
    "host: {name: all}\npeers: [{name: hv-02, libvirt_uri: 'qemu:///system'}]\n",
    "host: {name: hv-01}\npeers: [{name: all, libvirt_uri: 'qemu:///system'}]\n",
], ids=["this_host", "a_peer"])  # fmt: skip
def test_no_host_may_be_named_as_the_replies_to_every_host(text: str) -> None:
    with pytest.raises(ConfigError, match="'all' is reserved"):
        parse_settings(text, Path("all.yaml"))


def test_broker_password_never_appears_in_an_error() -> None:
    text = MINIMAL + "broker: {url: 'http://svc:s3cr3t-pw@mq/'}\n"
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, Path("pw.yaml"))
    assert "broker.url" in str(caught.value) and "s3cr3t-pw" not in str(caught.value)


def test_check_config_exits_nonzero_naming_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "evacuator.yaml"
    bad.write_text(MINIMAL + "evacuation: {shutdown_timeout_secnds: 3}\n", encoding="utf-8")
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "evacuation.shutdown_timeout_secnds: unknown field" in err


@pytest.mark.parametrize(
    ("content", "why"), [("host: [unclosed\n", "not valid YAML"), ("- a list\n", "expected a mapping")]
)
def test_check_config_rejects_files_that_are_not_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, why: str
) -> None:
    bad = tmp_path / "evacuator.yaml"
    bad.write_text(content, encoding="utf-8")
    assert main(["check-config", str(bad)]) == 1
    assert why in capsys.readouterr().err


def test_check_config_names_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "nope.yaml")]) == 1
    assert "nope.yaml: cannot read settings" in capsys.readouterr().err


def test_check_config_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("evacuation", "expected"),
    [
        ("", None),
        ("evacuation: {max_total_transfers: 6}\n", (6, None)),
        ("evacuation: {incoming_caps_cloud_wide: true, max_incoming_moves_per_peer: 3}\n", (None, 3)),
        ("evacuation: {max_total_transfers: 4, incoming_caps_cloud_wide: true}\n", (4, 2)),
    ],
)
def test_cloud_wide_caps_are_built_only_when_configured(
    evacuation: str, expected: tuple[int | None, int | None] | None
) -> None:
    from evacuator.moves.transfer_slots import NoClusterCap
    from evacuator.peers.cloud_slots import BrokerCloudCaps
    from evacuator.wiring.peers import cluster_slots_for

    caps = cluster_slots_for(parse_settings(MINIMAL + evacuation, Path("evacuator.yaml")))
    if expected is None:
        assert isinstance(caps, NoClusterCap)
    else:
        assert isinstance(caps, BrokerCloudCaps) and (caps.total, caps.incoming_per_host) == expected


def test_a_cloud_wide_total_below_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_total_transfers"):
        parse_settings(MINIMAL + "evacuation: {max_total_transfers: 0}\n", Path("evacuator.yaml"))


def test_a_peers_exchange_name_too_long_for_its_queue_names_is_refused() -> None:
    # `<peers_exchange>.alive.<host of 63>.<32 hex>` must stay within AMQP's 255-byte queue names.
    assert BrokerSettings(peers_exchange="p" * 150).peers_exchange == "p" * 150
    with pytest.raises(ValidationError):
        BrokerSettings(peers_exchange="p" * 151)
