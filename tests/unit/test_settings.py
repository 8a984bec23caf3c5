"""Settings: the example file is valid and complete; bad files fail check-config naming file and field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from evacuator.cli import main
from evacuator.errors import ConfigError
from evacuator.settings import PeerSettings, Settings, load_settings, parse_settings
from evacuator.wiring.peers import peer_trust
from notifiers.connection import blocking_connection_factory, broker_password, connection_parameters
from notifiers.errors import BrokerUnavailable
from notifiers.settings import BrokerSettings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "evacuator.example.yaml"
MINIMAL = ("host: {name: hv-01, migration_address: 192.0.2.11}\n"
           "peers: [{name: hv-02, libvirt_uri: 'qemu+tls://hv-02/system'}]\n")


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
    peers = {f"peers.{p}" for p in PeerSettings.model_fields}
    expected = (_model_paths(Settings) - {"peers"}) | peers
    assert sorted(expected - written) == [], "fields missing from config/evacuator.example.yaml"
    assert sorted(written - expected) == [], "example fields the model does not know"


def test_minimal_settings_take_defaults() -> None:
    settings = parse_settings(MINIMAL, Path("minimal.yaml"))
    assert settings.evacuation.default_window_seconds == 600
    channel = settings.data_channel  # on, and encrypted unless the admin writes `none`
    assert (channel.enabled, channel.encryption, channel.port) == (True, "tls", 16529)
    assert (channel.listen_address, channel.allow_from) == (None, None)
    assert settings.broker.peers_vhost is None and settings.peers[0].broker_user is None
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


def test_a_peer_that_is_this_host_is_refused_naming_its_position() -> None:
    text = ("host: {name: hv-01, migration_address: 10.0.0.1}\n"
            "peers: [{name: hv-02, libvirt_uri: 'qemu:///system'}, {name: hv-01, libvirt_uri: 'qemu:///system'}]\n")
    with pytest.raises(ConfigError, match=re.escape("peers[1].name is host.name: peers must not include")):
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


# --- the hosts' addresses and identities (issue 18) ---


def _settings(host: str = "{name: hv-01}", peers: str = "[{name: hv-02, libvirt_uri: 'qemu+tls://hv-02/system'}]",
              extra: str = "") -> Settings:
    return parse_settings(f"host: {host}\npeers: {peers}\n{extra}\n", Path("evacuator.yaml"))


def test_an_enabled_data_channel_without_an_address_is_refused_saying_why() -> None:
    with pytest.raises(ConfigError) as caught:
        _settings()
    message = str(caught.value)
    assert "data_channel.listen_address or host.migration_address must be set" in message
    assert "never on every interface" in message


@pytest.mark.parametrize(("host", "channel", "listen"), [
    ("{name: hv-01, migration_address: 192.0.2.11}", "", "192.0.2.11"),
    ("{name: hv-01}", "data_channel: {listen_address: 127.0.0.1}", "127.0.0.1"),
    ("{name: hv-01, migration_address: 192.0.2.11}", "data_channel: {listen_address: 0.0.0.0}", "0.0.0.0"),
    ("{name: hv-01}", "data_channel: {enabled: false}", None),
], ids=["migration_address", "listen_address", "explicit_any", "disabled"])  # fmt: skip
def test_the_channel_listens_on_its_own_address_else_the_migration_one(
    host: str, channel: str, listen: str | None
) -> None:
    assert _settings(host, extra=channel).data_channel_listen_address() == listen


def test_peers_reach_the_channel_at_the_advertised_address_else_the_migration_one() -> None:
    host = "{name: hv-01, migration_address: mig-01.example.net}"
    assert _settings(host).data_channel_advertise_address() == "mig-01.example.net"
    advertised = _settings(host, extra="data_channel: {advertise_address: 192.0.2.99}")
    assert advertised.data_channel_advertise_address() == "192.0.2.99"
    bare = _settings(extra="data_channel: {listen_address: 127.0.0.1}")
    assert bare.data_channel_advertise_address() is None


def test_the_channel_takes_connections_from_each_peers_migration_address_else_its_libvirt_host() -> None:
    peers = ("[{name: hv-02, libvirt_uri: 'qemu+tls://hv-02.example.net/system',"
             " migration_address: 192.0.2.12},"
             " {name: hv-03, libvirt_uri: 'qemu+ssh://root@[2001:db8::3]/system'},"
             " {name: hv-04, libvirt_uri: 'qemu+unix:///system?socket=/run/hv4/libvirt-sock'},"
             " {name: hv-05, libvirt_uri: 'qemu+tcp://192.0.2.12:16510/system'}]")
    settings = _settings("{name: hv-01, migration_address: 192.0.2.11}", peers)
    # hv-04's URI names no host: it runs on this machine, and connects from loopback.
    assert settings.data_channel_allowed_addresses() == ("192.0.2.12", "2001:db8::3", "127.0.0.1", "::1")


def test_allow_from_replaces_the_peers_addresses() -> None:
    settings = _settings("{name: hv-01, migration_address: 192.0.2.11}",
                         extra="data_channel: {allow_from: [192.0.2.20, mig-21.example.net, 192.0.2.20]}")
    assert settings.data_channel_allowed_addresses() == ("192.0.2.20", "mig-21.example.net")


@pytest.mark.parametrize(("extra", "field"), [
    ("data_channel: {listen_address: '192.0.2.1:16529'}", "data_channel.listen_address"),
    ("data_channel: {listen_address: ''}", "data_channel.listen_address"),
    ("data_channel: {allow_from: ['tcp://192.0.2.1']}", "data_channel.allow_from[0]"),
    ("data_channel: {allow_from: []}", "data_channel.allow_from"),
], ids=["port", "empty", "scheme", "empty_list"])  # fmt: skip
def test_an_address_is_an_ip_or_a_host_name_and_nothing_more(extra: str, field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"  {field}: ")):
        _settings("{name: hv-01, migration_address: 192.0.2.11}", extra=extra)


def test_a_bad_migration_address_is_named_without_being_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        _settings("{name: hv-01, migration_address: 'amqp://u:Pw-9x@mq'}")
    assert "host.migration_address: expected an IP address or a host name" in str(caught.value)
    assert "Pw-9x" not in str(caught.value)


def test_every_peer_is_its_own_broker_user_host_dot_name_by_default() -> None:
    peers = ("[{name: hv-02, libvirt_uri: 'qemu+tls://hv-02/system'},"
             " {name: hv-03, libvirt_uri: 'qemu+tls://hv-03/system', broker_user: evacuator-hv3}]")
    settings = _settings("{name: hv-01, migration_address: 192.0.2.11}", peers)
    assert [p.user for p in settings.peers] == ["host.hv-02", "evacuator-hv3"]


def test_two_peers_with_one_broker_user_are_refused() -> None:
    peers = ("[{name: hv-02, libvirt_uri: 'qemu+tls://hv-02/system'},"
             " {name: hv-03, libvirt_uri: 'qemu+tls://hv-03/system', broker_user: host.hv-02}]")
    with pytest.raises(ConfigError, match=r"broker users .* must be unique"):
        _settings("{name: hv-01, migration_address: 192.0.2.11}", peers)


def test_encryption_auto_is_still_accepted() -> None:
    settings = parse_settings(MINIMAL + "data_channel: {encryption: auto}\n", Path("evacuator.yaml"))
    assert settings.data_channel.encryption == "auto"


# --- the broker's password and virtual host ---


@pytest.mark.parametrize(("broker", "why"), [
    ("{url: 'amqp://svc@mq/%2F', password_file: /a, password_env: B}", "give at most one of password_file"),
    ("{url: 'amqp://svc:Pw-9x@mq/%2F', password_file: /a}", "url holds a password and password_file"),
    ("{url: 'amqp://svc:Pw-9x@mq/%2F', password_env: EVACUATOR_BROKER_PASSWORD}", "url holds a password"),
    ("{url: 'amqp://mq/%2F', password_env: EVACUATOR_BROKER_PASSWORD}", "url must name the user"),
], ids=["both", "file_and_url", "env_and_url", "no_user"])  # fmt: skip
def test_the_broker_password_comes_from_one_place_only(broker: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(MINIMAL + f"broker: {broker}\n", Path("evacuator.yaml"))
    assert f"  broker: {why}" in str(caught.value) and "Pw-9x" not in str(caught.value)


def test_a_password_env_must_be_a_variable_name() -> None:
    text = MINIMAL + "broker: {url: 'amqp://svc@mq/%2F', password_env: 'Pw 9x'}\n"
    with pytest.raises(ConfigError, match=re.escape("  broker.password_env: String should match pattern")):
        parse_settings(text, Path("e.yaml"))


@pytest.mark.parametrize("url", [
    "amqp://svc:Zq/Zw9x@mq/%2F",  # an unencoded slash: urllib reads "Zq" as the port and would quote it
    "amqp://svc:Zq#Zw9x@mq/%2F",
    "http://svc:ZqZw9x@mq/%2F",
])  # fmt: skip
def test_a_bad_broker_url_is_explained_without_a_piece_of_it(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(MINIMAL + f"broker: {{url: '{url}'}}\n", Path("evacuator.yaml"))
    message = str(caught.value)
    assert "  broker.url: expected amqp://USER:PASSWORD@HOST" in message
    assert "Zq" not in message and "Zw9x" not in message


def test_the_peers_vhost_is_the_urls_unless_set() -> None:
    assert BrokerSettings.model_validate({"url": "amqp://u:p@mq:5672/%2F"}).peers_virtual_host == "/"
    assert BrokerSettings.model_validate({"url": "amqp://u:p@mq:5672/cloud"}).peers_virtual_host == "cloud"
    assert BrokerSettings.model_validate({"url": "amqp://u:p@mq"}).peers_virtual_host == "/"
    own = BrokerSettings.model_validate({"url": "amqp://u:p@mq/%2F", "peers_vhost": "evacuator-peers"})
    assert own.peers_virtual_host == "evacuator-peers"
    with pytest.raises(ValidationError):
        BrokerSettings.model_validate({"url": "amqp://u:p@mq/%2F", "peers_vhost": ""})


def _broker(tmp_path: Path, **fields: object) -> BrokerSettings:
    return BrokerSettings.model_validate({"url": "amqp://host.hv-01@mq.example.net:5672/cloud", **fields})


def test_the_password_is_read_from_the_files_first_line_at_connection_time(tmp_path: Path) -> None:
    secret = tmp_path / "broker.password"
    settings = _broker(tmp_path, password_file=str(secret))
    secret.write_text("  p@ss/w:rd#1 \nsecond line\n", encoding="utf-8")
    assert broker_password(settings) == "p@ss/w:rd#1"
    parameters = connection_parameters(settings.url.get_secret_value(), password=broker_password(settings))
    assert (parameters.credentials.username, parameters.credentials.password) == ("host.hv-01", "p@ss/w:rd#1")
    assert parameters.virtual_host == "cloud" and settings.redacted_url == "amqp://host.hv-01@mq.example.net:5672/cloud"


def test_the_password_is_read_from_the_named_variable(tmp_path: Path) -> None:
    settings = _broker(tmp_path, password_env="EVACUATOR_BROKER_PASSWORD")
    assert broker_password(settings, {"EVACUATOR_BROKER_PASSWORD": "from-env"}) == "from-env"
    assert broker_password(BrokerSettings()) is None  # the URL's own password


@pytest.mark.parametrize(("fields", "named"), [
    ({"password_file": "/nonexistent/broker.password"}, "broker.password_file /nonexistent/broker.password: "
                                                        "cannot read it (No such file or directory)"),
    ({"password_env": "EVACUATOR_NO_SUCH_VARIABLE"}, "the environment variable EVACUATOR_NO_SUCH_VARIABLE is "
                                                     "not set or empty"),
], ids=["file", "variable"])  # fmt: skip
def test_a_missing_password_source_is_named_when_connecting(
    tmp_path: Path, fields: dict[str, object], named: str
) -> None:
    connect = blocking_connection_factory(_broker(tmp_path, **fields), connection_name="test")
    with pytest.raises(BrokerUnavailable, match=re.escape(named)):
        connect()


def test_an_empty_password_file_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n", encoding="utf-8")
    with pytest.raises(BrokerUnavailable, match="empty: its first line is empty"):
        broker_password(_broker(tmp_path, password_file=str(tmp_path / "empty")))


def test_a_factory_may_connect_to_another_vhost_than_the_urls() -> None:
    url = "amqp://u:p@mq/%2F"
    assert connection_parameters(url).virtual_host == "/"
    assert connection_parameters(url, vhost="evacuator-peers").virtual_host == "evacuator-peers"


# --- nothing given is echoed ---


@pytest.mark.parametrize(("text", "where"), [
    ("host: {name: hv-01}\nbroker: {url: 'amqp://u:{Pw-9x@mq/'\n", "line 2"),
    ("host: {name: hv-01}\nmonitors: {sources: {ipmi: {password: {Pw-9x\n",
     "line 3, column 1 (in what starts at line 2, column 39)"),
    ("host:\n  name: hv-01\n\tpassword: Pw-9x\n", "line 3, column 1"),
    ("host: {name: *Pw-9x}\n", "line 1, column 14"),
    ("host: {name: !Pw-9x x}\n", "line 1, column 14"),
    ("host: {name: 'Pw-9x\x07'}\n", "line 1, column 20"),
], ids=["unclosed_quote", "unclosed_brace", "tab", "alias", "tag", "control_character"])  # fmt: skip
def test_a_yaml_error_gives_line_and_column_never_the_text(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, Path("/etc/evacuator/bad.yaml"))
    message = str(caught.value)
    assert message.startswith("/etc/evacuator/bad.yaml: not valid YAML at ") and where in message, message
    assert "Pw-9x" not in message and "\n" not in message


def test_a_model_level_error_never_echoes_the_file() -> None:
    text = ("host: {name: hv-01, migration_address: 10.0.0.1}\n"
            "peers: [{name: hv-01, libvirt_uri: 'qemu+tcp://u:Lv-9x@hv-02/system'}]\n"
            "broker: {url: 'amqp://u:Pw-9x@mq/%2F'}\nmonitors: {sources: {ipmi: {password: Ip-9x}}}\n")
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, Path("self.yaml"))
    message = str(caught.value)
    assert "peers must not include this host" in message
    assert not {"Lv-9x", "Pw-9x", "Ip-9x"} & set(re.findall(r"\w\w-9x", message))


def test_an_unknown_key_that_is_not_a_field_name_is_not_shown() -> None:
    # `{...}` around a URL makes it a key: the error names where, not what.
    with pytest.raises(ConfigError) as caught:
        parse_settings(MINIMAL + "broker: {amqp://u:Pw-9x@mq/}\n", Path("e.yaml"))
    message = str(caught.value)
    assert "  broker: an unknown field whose name is not shown" in message and "Pw-9x" not in message
    with pytest.raises(ConfigError, match=re.escape("  broker.passwrd: unknown field")):
        parse_settings(MINIMAL + "broker: {passwrd: x}\n", Path("e.yaml"))


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.encode() + b"broker: {url: 'amqp://u:\xe9t\xe9@mq/'}\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte \d+\)$"):
        load_settings(path)


def test_settings_errors_never_echo_their_input_even_raised_directly() -> None:
    # Code that validates settings itself (tests, the demo) prints pydantic's own text: no input there either.
    with pytest.raises(ValidationError) as caught:
        Settings.model_validate({
            "host": {"name": "hv-01", "libvirt_uri": "qemu+tcp://u:Lv-9x@h/system"},
            "peers": [{"name": "hv-01", "libvirt_uri": "x"}],
            "monitors": {"sources": {"ipmi": {"password": "Ip-9x", "password_env": "X"}}},
        })
    assert "Lv-9x" not in str(caught.value) and "Ip-9x" not in str(caught.value)


_CLOUD = ("host: {name: hv-01, migration_address: 192.0.2.11, "
          "advertised_libvirt_uri: 'qemu+tls://hv-01.example.net/system'}\n")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("host: {name: hv-01, migration_address: 192.0.2.11}\n", "peers must list at least one host"),
        ("host: {name: hv-01, migration_address: 192.0.2.11}\nplacement: {scope: cloud}\n"
         "data_channel: {allow_from: [192.0.2.0]}\n", "needs host.advertised_libvirt_uri"),
        (_CLOUD + "placement: {scope: cloud}\n", "needs data_channel.allow_from"),
        (_CLOUD + "placement: {scope: cloud, use_host_view: false}\ndata_channel: {enabled: false}\n",
         "needs placement.use_host_view"),
        ("host: {name: hv-01, advertised_libvirt_uri: 'hv-01 system'}\ndata_channel: {enabled: false}\n"
         "placement: {scope: cloud}\n", "host.advertised_libvirt_uri"),
    ],
    ids=["no-peers", "no-advertised-uri", "channel-open-to-peers-only", "no-host-view", "bad-uri"],
)
def test_a_cloud_scope_missing_what_it_needs_is_refused_saying_what(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, Path("evacuator.yaml"))
    assert why in str(caught.value)


def test_a_cloud_scope_needs_no_peers_and_trusts_any_host_user() -> None:
    settings = parse_settings(_CLOUD + "placement: {scope: cloud}\ndata_channel: {allow_from: [192.0.2.0]}\n",
                              Path("evacuator.yaml"))  # fmt: skip
    assert settings.peers == [] and settings.placement.scope == "cloud"
    trust = peer_trust(settings)
    assert trust.any_host and trust.user_of("hv-77") == "host.hv-77"
    assert not peer_trust(parse_settings(MINIMAL, Path("evacuator.yaml"))).any_host
