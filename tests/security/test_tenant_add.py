"""Attack: `evacuator tenant add NAME` over a broker user that is not a tenant (issue 18, item 4), for real.

Before: it re-passworded any existing user and left its tags, so `tenant add` over an administrator (or the
service's own user) handed its password to whoever asked for the "tenant". Now a tenant is a user bearing the
`evacuator-tenant` tag; any other user, and the user the service connects as, is refused and left untouched
(its old password still logs in), and a tenant's password changes only with --reset-password.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest
import yaml

from evacuator.cli import main
from evacuator.lab.broker import LabBroker
from notifiers.provisioning import TENANT_TAG
from notifiers.settings import BrokerSettings
from notifiers.topology import tenant_queue
from tests.fixtures.broker import BrokerJanitor, _with_credentials

pytestmark = pytest.mark.integration


class Users:
    """Broker users made for one test through the real rabbitmqctl, all deleted afterwards."""

    def __init__(self, broker: LabBroker) -> None:
        self._broker = broker
        self.made: list[str] = []

    def ctl(self, *arguments: str, stdin: str = "") -> str:
        done = subprocess.run([*self._broker.rabbitmqctl, "--quiet", *arguments], input=stdin,
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def make(self, prefix: str, tags: tuple[str, ...]) -> tuple[str, str]:
        """A user with `tags` and every permission on `/`, as an operator would make one; (name, password)."""
        name, password = f"{prefix}-{secrets.token_hex(4)}", secrets.token_urlsafe(12)
        self.ctl("add_user", name, stdin=password)
        self.made.append(name)
        self.ctl("set_user_tags", name, *tags)
        self.ctl("set_permissions", "-p", "/", name, ".*", ".*", ".*")
        return name, password

    def tags(self, name: str) -> set[str]:
        rows = json.loads(self.ctl("list_users", "--formatter", "json"))
        [row] = [row for row in rows if row["user"] == name]
        return set(row["tags"])

    def permissions(self, name: str) -> list[dict[str, str]]:
        output = self.ctl("list_user_permissions", name, "--formatter", "json")
        rows: list[dict[str, str]] = json.loads(output)
        return rows

    def logs_in(self, name: str, password: str) -> bool:
        try:
            url = _with_credentials(self._broker.url, name, password)
            pika.BlockingConnection(pika.URLParameters(url)).close()
        except pika.exceptions.ProbableAuthenticationError:
            return False
        return True

    def delete_all(self) -> None:
        for name in self.made:
            subprocess.run([*self._broker.rabbitmqctl, "--quiet", "delete_user", name], capture_output=True,
                           timeout=60, check=False)  # fmt: skip


@pytest.fixture
def users(lab_broker: LabBroker) -> Iterator[Users]:
    made = Users(lab_broker)
    yield made
    made.delete_all()


def _config(tmp_path: Path, settings: BrokerSettings, url: str) -> Path:
    path = tmp_path / "evacuator.yaml"
    path.write_text(yaml.safe_dump({
        "host": {"name": "hv1"},
        "peers": [{"name": "hv2", "libvirt_uri": "qemu+tcp://hv2/system"}],
        "data_channel": {"enabled": False},
        "broker": {"url": url, "notices_exchange": settings.notices_exchange,
                   "replies_exchange": settings.replies_exchange},
    }))  # fmt: skip
    return path


def _password_file(tmp_path: Path, name: str) -> tuple[str, str]:
    password = "new-" + secrets.token_urlsafe(12)
    path = tmp_path / name
    path.write_text(password + "\n")
    return str(path), password


def _tenant(lab_broker: LabBroker, config: Path, *arguments: str) -> int:
    ctl = " ".join(lab_broker.rabbitmqctl)
    return main(["tenant", *arguments, "--config", str(config), "--rabbitmqctl", ctl])


@pytest.mark.parametrize("reset", [[], ["--reset-password"]], ids=["add", "add_reset_password"])
def test_tenant_add_over_an_administrator_is_refused_and_leaves_it_as_it_was(
    tmp_path: Path, lab_broker: LabBroker, broker_settings: BrokerSettings, broker_janitor: BrokerJanitor,
    users: Users, capsys: pytest.CaptureFixture[str], reset: list[str],
) -> None:  # fmt: skip
    admin, old = users.make("admin", ("administrator",))
    broker_janitor.queue(tenant_queue(admin))
    before = users.permissions(admin)
    config = _config(tmp_path, broker_settings, lab_broker.url)
    file, new = _password_file(tmp_path, "password")
    assert _tenant(lab_broker, config, "add", admin, "--password-file", file, *reset) == 1
    assert f"{admin!r} exists and is not a tenant (tags: administrator;" in capsys.readouterr().err
    assert users.tags(admin) == {"administrator"} and users.permissions(admin) == before
    assert users.logs_in(admin, old) and not users.logs_in(admin, new)
    # Nor may `tenant remove` delete it.
    assert _tenant(lab_broker, config, "remove", admin) == 1
    assert users.logs_in(admin, old)


def test_tenant_add_over_the_services_own_user_is_refused_and_leaves_it_as_it_was(
    tmp_path: Path, lab_broker: LabBroker, broker_settings: BrokerSettings, users: Users,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    # Even tagged as a tenant (by hand, by mistake): the user in broker.url is never a tenant.
    service, old = users.make("svc", (TENANT_TAG, "monitoring"))
    before = users.permissions(service)
    config = _config(tmp_path, broker_settings, _with_credentials(lab_broker.url, service, old))
    file, new = _password_file(tmp_path, "password")
    assert _tenant(lab_broker, config, "add", service, "--password-file", file, "--reset-password") == 1
    assert "the broker user the service connects as" in capsys.readouterr().err
    assert users.tags(service) == {TENANT_TAG, "monitoring"} and users.permissions(service) == before
    assert users.logs_in(service, old) and not users.logs_in(service, new)


def test_a_hosts_user_cannot_be_named_as_a_tenant(
    tmp_path: Path, lab_broker: LabBroker, broker_settings: BrokerSettings, users: Users,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    host, old = users.make("host.hv9", ("evacuator-host",))
    config = _config(tmp_path, broker_settings, lab_broker.url)
    assert _tenant(lab_broker, config, "add", host, "--reset-password") == 1
    assert "cannot be a routing key word" in capsys.readouterr().err
    assert users.tags(host) == {"evacuator-host"} and users.logs_in(host, old)


def test_tenant_add_gives_exactly_the_tenant_tag_and_changes_a_password_only_when_told(
    tmp_path: Path, lab_broker: LabBroker, broker_settings: BrokerSettings, broker_janitor: BrokerJanitor,
    users: Users, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    name = f"acme-{secrets.token_hex(4)}"
    users.made.append(name)
    broker_janitor.queue(tenant_queue(name))
    config = _config(tmp_path, broker_settings, lab_broker.url)
    first, first_password = _password_file(tmp_path, "first")
    second, second_password = _password_file(tmp_path, "second")

    assert _tenant(lab_broker, config, "add", name, "--password-file", first) == 0
    assert "user created" in capsys.readouterr().out
    assert users.tags(name) == {TENANT_TAG} and users.logs_in(name, first_password)

    # Someone gave the tenant more (a tag, other permissions): add sets them back, and keeps the password.
    users.ctl("set_user_tags", name, TENANT_TAG, "administrator")
    users.ctl("set_permissions", "-p", "/", name, ".*", ".*", ".*")
    assert _tenant(lab_broker, config, "add", name, "--password-file", second) == 0
    assert "password unchanged (--reset-password sets a new one)" in capsys.readouterr().out
    assert users.tags(name) == {TENANT_TAG}
    [permissions] = users.permissions(name)
    assert (permissions["configure"], permissions["read"]) == ("^$", f"^{re.escape(tenant_queue(name))}$")
    assert users.logs_in(name, first_password) and not users.logs_in(name, second_password)

    assert _tenant(lab_broker, config, "add", name, "--password-file", second, "--reset-password") == 0
    assert "new password set" in capsys.readouterr().out
    assert users.logs_in(name, second_password) and not users.logs_in(name, first_password)

    # Generated: printed only when it is set.
    assert _tenant(lab_broker, config, "add", name) == 0
    assert "password:" not in capsys.readouterr().out
    assert _tenant(lab_broker, config, "add", name, "--reset-password") == 0
    generated = capsys.readouterr().out.split("password: ", 1)[1].strip()
    assert users.logs_in(name, generated)

    assert _tenant(lab_broker, config, "remove", name) == 0
    assert not users.logs_in(name, generated)
