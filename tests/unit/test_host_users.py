"""host_grants (the permissions of a host's broker user, checked against what each name must match and must
not) and provision_host / remove_host over a fake rabbitmqctl. The real broker enforcing them is
tests/security/test_host_impersonation.py."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from evacuator.peers.host_users import (
    HOST_TAG,
    HostGrants,
    HostOutcome,
    host_grants,
    host_user,
    provision_host,
    remove_host,
)
from notifiers.errors import InvalidName, ProvisioningError, ProvisioningRefused
from tests.fakes import rabbitmqctl as fake

FAKE = Path(fake.__file__)
EXCHANGES = {"notices_exchange": "evacuator.notices", "replies_exchange": "evacuator.replies",
             "peers_exchange": "evacuator.peers"}  # fmt: skip


def grants(name: str = "hv-01", *, peers_vhost: str = "evacuator-peers") -> HostGrants:
    return host_grants(name, vhost="/", peers_vhost=peers_vhost, **EXCHANGES)


def matches(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None  # as RabbitMQ does: the patterns are anchored themselves


def grant_for(host_grants_: HostGrants, vhost: str) -> Any:
    (found,) = [grant for grant in host_grants_.grants if grant.vhost == vhost]
    return found


def topic_for(host_grants_: HostGrants, exchange: str) -> Any:
    (found,) = [topic for topic in host_grants_.topics if topic.exchange == exchange]
    return found


@pytest.mark.parametrize(
    ("vhost", "kind", "name", "allowed"),
    [
        ("/", "configure", "evacuator.notices", True),
        ("/", "configure", "evacuator.replies", True),
        ("/", "configure", "evacuator.replies.hv-01", True),
        ("/", "configure", "evacuator.replies.hv-02", False),  # another host's replies queue
        ("/", "configure", "acme.notices", True),  # declared and bound by whichever host notifies first
        ("/", "configure", "evacuator.peers", False),  # the peers live in their own vhost
        ("/", "read", "evacuator.replies.hv-01", True),
        ("/", "read", "evacuator.replies.hv-02", False),
        ("/", "read", "acme.notices", False),  # a tenant's notices are the tenant's to read
        ("/", "write", "evacuator.replies", False),  # replies come from tenants only
        ("/", "write", "evacuator.notices", True),
        ("/", "write", "evacuator.notices.x", False),  # anchored: no prefix match
        ("evacuator-peers", "configure", "evacuator.peers.digest.hv-01", True),
        ("evacuator-peers", "configure", "evacuator.peers.digest.hv-02", False),
        ("evacuator-peers", "read", "evacuator.peers.digest.hv-02", False),
        ("evacuator-peers", "configure", "evacuator.peers.alive.hv-01.0a1b", True),
        ("evacuator-peers", "configure", "evacuator.peers.alive.hv-02.0a1b", False),
        ("evacuator-peers", "configure", "evacuator.peers.total-slot.3", True),
        ("evacuator-peers", "configure", "evacuator.peers.incoming-slot.hv-02.1", True),
        ("evacuator-peers", "configure", "amq.gen-Xy12", True),
        ("evacuator-peers", "write", "amq.default", True),  # replies go through the default exchange
        ("evacuator-peers", "configure", "amq.default", False),
        ("evacuator-peers", "configure", "evacuator.notices", False),
    ],
)
def test_a_host_user_may_touch_only_its_own_objects(vhost: str, kind: str, name: str, allowed: bool) -> None:
    assert matches(getattr(grant_for(grants(), vhost), kind), name) is allowed


@pytest.mark.parametrize(
    ("exchange", "kind", "key", "allowed"),
    [
        ("evacuator.notices", "write", "acme.hv-01.evacuation_scheduled", True),
        ("evacuator.notices", "write", "acme.hv-02.evacuation_scheduled", False),  # a notice as another host
        ("evacuator.notices", "write", "acme.hv-01x.vm_evacuated", False),
        ("evacuator.notices", "read", "acme.#", True),
        ("evacuator.notices", "read", "#", False),  # a queue bound to every tenant's notices
        ("evacuator.replies", "read", "*.hv-01", True),
        ("evacuator.replies", "read", "*.all", True),
        ("evacuator.replies", "read", "*.hv-02", False),  # another host's replies
        ("evacuator.replies", "read", "#", False),
        ("evacuator.replies", "write", "acme.hv-01", False),
        ("evacuator.peers", "write", "digest.hv-02", True),
        ("evacuator.peers", "write", "digest.hv-02.more", False),
        ("evacuator.peers", "read", "digest.hv-01", True),
        ("evacuator.peers", "read", "digest.hv-02", False),  # another host's requests
        ("evacuator.peers", "read", "digest.*", False),
        ("evacuator.peers", "read", "#", False),
        ("evacuator.peers", "write", "state.hv-01", True),  # its own state
        ("evacuator.peers", "write", "state.hv-02", False),  # another host's state
        ("evacuator.peers", "write", "state.*", False),
        ("evacuator.peers", "write", "state.hv-01.x", False),
        ("evacuator.peers", "write", "state.hv-01x", False),
        ("evacuator.peers", "read", "state.*", True),  # every host's state
        ("evacuator.peers", "read", "state.#", False),
        ("evacuator.peers", "read", "digest.#", False),
    ],
)
def test_topic_permissions_pin_routing_keys_to_the_host(
    exchange: str, kind: str, key: str, allowed: bool
) -> None:
    assert matches(getattr(topic_for(grants(), exchange), kind), key) is allowed


def test_names_with_regex_characters_are_escaped() -> None:
    found = host_grants("hv-01", vhost="/", peers_vhost="p", notices_exchange="n.x", replies_exchange="r",
                        peers_exchange="p+q")  # fmt: skip
    assert matches(grant_for(found, "/").configure, "n.x")
    assert not matches(grant_for(found, "/").configure, "nax")
    assert matches(grant_for(found, "p").configure, "p+q.digest.hv-01")
    assert not matches(grant_for(found, "p").configure, "ppq.digest.hv-01")


def test_one_vhost_for_peers_and_tenants_gets_one_grant_holding_both() -> None:
    one = grants(peers_vhost="/")
    (grant,) = one.grants
    assert matches(grant.configure, "evacuator.peers.digest.hv-01")
    assert matches(grant.configure, "evacuator.replies.hv-01")
    assert not matches(grant.read, "evacuator.peers.digest.hv-02")
    assert {topic.vhost for topic in one.topics} == {"/"}


def test_a_host_name_must_be_a_routing_key_word() -> None:
    with pytest.raises(InvalidName):
        grants("hv-01.example.com")
    with pytest.raises(InvalidName):
        host_user("a b")


class Ctl:
    def __init__(self, tmp_path: Path, users: dict[str, dict[str, Any]], **options: Any) -> None:
        self.state = tmp_path / "rabbitmq.json"
        fake.write_state(self.state, users, **options)
        self.prefix = (sys.executable, str(FAKE), str(self.state))

    def read(self) -> dict[str, Any]:
        return fake.read_state(self.state)

    def add(self, password: str = "pw", **options: Any) -> HostOutcome:
        return provision_host("hv-01", password, grants=grants(), rabbitmqctl=self.prefix, **options)


def test_a_new_host_gets_its_tag_its_vhost_and_exactly_its_grants(tmp_path: Path) -> None:
    ctl = Ctl(tmp_path, {})
    assert ctl.add() is HostOutcome.CREATED
    state = ctl.read()
    assert state["users"] == {"host.hv-01": {"password": "pw", "tags": [HOST_TAG]}}
    assert "evacuator-peers" in state["vhosts"]
    expected = grants()
    assert state["permissions"]["host.hv-01"] == {
        grant.vhost: [grant.configure, grant.write, grant.read] for grant in expected.grants
    }
    assert state["topic_permissions"]["host.hv-01"] == {
        f"{topic.vhost} {topic.exchange}": [topic.write, topic.read] for topic in expected.topics
    }
    assert ctl.add() is HostOutcome.UNCHANGED  # again: the vhost exists, nothing fails
    assert ctl.read()["users"]["host.hv-01"]["password"] == "pw"


def test_an_existing_host_gets_a_new_password_only_when_asked(tmp_path: Path) -> None:
    ctl = Ctl(tmp_path, {"host.hv-01": {"password": "old", "tags": [HOST_TAG, "management"]}})
    assert ctl.add("new") is HostOutcome.UNCHANGED
    assert ctl.read()["users"]["host.hv-01"] == {"password": "old", "tags": [HOST_TAG]}
    assert ctl.add("new", reset_password=True) is HostOutcome.PASSWORD_RESET
    assert ctl.read()["users"]["host.hv-01"]["password"] == "new"


@pytest.mark.parametrize(
    "tags", [["administrator"], [], ["evacuator-tenant"]], ids=["admin", "none", "tenant"]
)
def test_a_user_of_that_name_that_is_no_host_is_refused_and_left_alone(
    tmp_path: Path, tags: list[str]
) -> None:
    ctl = Ctl(tmp_path, {"host.hv-01": {"password": "old", "tags": tags}})
    with pytest.raises(ProvisioningRefused, match=HOST_TAG):
        ctl.add(reset_password=True)
    with pytest.raises(ProvisioningRefused):
        remove_host("hv-01", rabbitmqctl=ctl.prefix)
    state = ctl.read()
    assert state["users"]["host.hv-01"] == {"password": "old", "tags": tags}
    assert "host.hv-01" not in state.get("permissions", {})


def test_a_new_user_whose_tag_cannot_be_set_is_deleted_again(tmp_path: Path) -> None:
    ctl = Ctl(tmp_path, {}, failing=("set_user_tags",))
    with pytest.raises(ProvisioningError):
        ctl.add()
    assert ctl.read()["users"] == {}


def test_remove_deletes_the_host_user_and_is_idempotent(tmp_path: Path) -> None:
    ctl = Ctl(tmp_path, {})
    ctl.add()
    assert remove_host("hv-01", rabbitmqctl=ctl.prefix) is True
    assert remove_host("hv-01", rabbitmqctl=ctl.prefix) is False
    assert ctl.read()["users"] == {}
    assert ctl.read()["permissions"] == {}
