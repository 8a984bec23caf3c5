"""Several broker nodes: the settings take a cluster's other nodes, the factory tries them in order, and no
error shows a password."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from evacuator.errors import ConfigError
from evacuator.settings import parse_settings
from notifiers.connection import blocking_connection_factory, node_parameters
from notifiers.errors import BrokerUnavailable
from notifiers.settings import MAX_FAILOVER_URLS, BrokerSettings

MINIMAL = ("host: {name: hv-01, migration_address: 192.0.2.11}\n"
           "peers: [{name: hv-02, libvirt_uri: 'qemu+tls://hv-02/system'}]\n")  # fmt: skip
SECRET = "Pw-9x"


def _broker(text: str) -> BrokerSettings:
    return parse_settings(MINIMAL + f"broker: {text}\n", Path("evacuator.yaml")).broker


def _refused(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _broker(text)
    message = str(caught.value)
    assert SECRET not in message and "9x" not in message, message
    return message


def test_a_file_with_one_url_is_valid_as_before_and_names_one_node() -> None:
    broker = _broker(f"{{url: 'amqp://svc:{SECRET}@mq:5672/%2F'}}")
    assert broker.failover_urls == () and broker.node_urls == (f"amqp://svc:{SECRET}@mq:5672/%2F",)


def test_the_nodes_are_tried_in_the_order_written_url_first() -> None:
    broker = _broker(f"{{url: 'amqp://svc:{SECRET}@mq-1:5672/%2F', "
                     "failover_urls: ['amqp://svc@mq-3:5672/%2F', 'amqp://svc@mq-2/%2F']}")  # fmt: skip
    hosts = [p.host for _, p in node_parameters(broker, connection_name="test")]
    assert hosts == ["mq-1", "mq-3", "mq-2"]
    assert broker.redacted_node_urls == "amqp://svc:***@mq-1:5672/%2F, amqp://svc@mq-3:5672/%2F, amqp://svc@mq-2/%2F"
    assert SECRET not in repr(broker) and "mq-3" in repr(broker)


@pytest.mark.parametrize(("password_from", "fields"), [
    ("url", f"url: 'amqp://svc:{SECRET}@mq-1/%2F'"),
    ("file", "url: 'amqp://svc@mq-1/%2F', password_file: PASSWORD_FILE"),
    ("env", "url: 'amqp://svc@mq-1/%2F', password_env: EVACUATOR_TEST_BROKER_PASSWORD"),
])  # fmt: skip
def test_the_one_password_serves_every_node(
    password_from: str, fields: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "password").write_text(f"{SECRET}\n", encoding="utf-8")
    monkeypatch.setenv("EVACUATOR_TEST_BROKER_PASSWORD", SECRET)
    text = fields.replace("PASSWORD_FILE", str(tmp_path / "password"))
    broker = _broker(f"{{{text}, failover_urls: ['amqp://svc@mq-2/%2F', 'amqp://svc@mq-3:5673/%2F']}}")
    nodes = node_parameters(broker, connection_name="test", vhost="evacuator-peers")
    assert [(p.host, p.port) for _, p in nodes] == [("mq-1", 5672), ("mq-2", 5672), ("mq-3", 5673)]
    assert {p.virtual_host for _, p in nodes} == {"evacuator-peers"}
    for shown, parameters in nodes:
        assert (parameters.credentials.username, parameters.credentials.password) == ("svc", SECRET)
        assert parameters.client_properties == {"connection_name": "test"}
        assert SECRET not in shown


def test_each_amqps_node_verifies_its_own_host_name() -> None:
    broker = _broker("{url: 'amqps://svc:pw@mq-1.example.net:5671/%2F', "
                     "failover_urls: ['amqps://svc@mq-2.example.net:5671/%2F']}")  # fmt: skip
    names = [p.ssl_options.server_hostname for _, p in node_parameters(broker, connection_name="test")]
    assert names == ["mq-1.example.net", "mq-2.example.net"]


@pytest.mark.parametrize(("failover", "why"), [
    (f"['amqp://svc:{SECRET}@mq-2/%2F']", "broker.failover_urls[0]: holds a password: give it once"),
    (f"['amqp://svc@mq-2/%2F', 'http://svc:{SECRET}@mq-3/']", "broker.failover_urls[1]: expected amqp://"),
    (f"['amqp://svc:Zq/{SECRET}@mq-2/%2F']", "broker.failover_urls[0]: expected amqp://"),
    ("['amqps://svc@mq-2/%2F']", "broker: failover_urls[0] must use url's scheme"),
    ("['amqp://other@mq-2/%2F']", "broker: failover_urls[0] must name url's user and virtual host"),
    ("['amqp://mq-2/%2F']", "broker: failover_urls[0] must name url's user and virtual host"),
    ("['amqp://svc@mq-2/cloud']", "broker: failover_urls[0] must name url's user and virtual host"),
    ("['amqp://svc@mq-1:5672/%2F']", "broker: failover_urls[0] names a node (host and port) already listed"),
    ("['amqp://svc@mq-2/%2F', 'amqp://svc@MQ-2:5672/%2F']", "failover_urls[1] names a node (host and port)"),
    (f"'amqp://svc:{SECRET}@mq-2/%2F'", "broker.failover_urls: Input should be a valid tuple"),
], ids=["password", "scheme", "unencoded", "tls_differs", "other_user", "no_user", "other_vhost", "url_again",
        "twice", "not_a_list"])  # fmt: skip
def test_a_failover_url_that_does_not_fit_is_refused_without_a_piece_of_it(failover: str, why: str) -> None:
    message = _refused(f"{{url: 'amqp://svc:{SECRET}@mq-1/%2F', failover_urls: {failover}}}")
    assert why in message, message


def test_no_failover_url_may_hold_a_password_even_when_a_file_gives_it() -> None:
    message = _refused("{url: 'amqp://svc@mq-1/%2F', password_env: EVACUATOR_BROKER_PASSWORD, "
                       f"failover_urls: ['amqp://svc:{SECRET}@mq-2/%2F']}}")  # fmt: skip
    assert "broker.failover_urls[0]: holds a password" in message


def test_a_cluster_has_a_handful_of_nodes() -> None:
    nodes = [f"amqp://u@mq-{i}/%2F" for i in range(2, MAX_FAILOVER_URLS + 3)]
    with pytest.raises(ValidationError, match="at most 8 items"):
        BrokerSettings.model_validate({"url": "amqp://u:p@mq-1/%2F", "failover_urls": nodes})


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # nothing listens once the probe is closed: a connection is refused at once


def test_when_no_node_answers_the_error_names_each_without_the_password() -> None:
    first, second = _closed_port(), _closed_port()
    broker = BrokerSettings.model_validate({
        "url": f"amqp://svc:{SECRET}@127.0.0.1:{first}/%2F",
        "failover_urls": [f"amqp://svc@127.0.0.1:{second}/%2F"],
    })  # fmt: skip
    with pytest.raises(BrokerUnavailable) as caught:
        blocking_connection_factory(broker, connection_name="test")()
    message = str(caught.value)
    assert message.startswith("cannot connect to any node of the broker: ")
    assert f"amqp://svc:***@127.0.0.1:{first}/%2F: " in message
    assert f"; amqp://svc@127.0.0.1:{second}/%2F: " in message
    assert SECRET not in message and SECRET not in repr(caught.value.__cause__)


def test_a_single_node_is_named_as_before() -> None:
    port = _closed_port()
    broker = BrokerSettings.model_validate({"url": f"amqp://svc:{SECRET}@127.0.0.1:{port}/%2F"})
    shown = f"cannot connect to amqp://svc:***@127.0.0.1:{port}/%2F: "
    with pytest.raises(BrokerUnavailable, match=re.escape(shown)):
        blocking_connection_factory(broker, connection_name="test")()
