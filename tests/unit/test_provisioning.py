"""provision_tenant and remove_tenant over a fake rabbitmqctl: a tenant is marked by its tag, and a broker
user without it (an administrator, the service's or a host's user) is never taken over or deleted."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from notifiers.errors import InvalidName, ProvisioningError, ProvisioningRefused
from notifiers.provisioning import TENANT_TAG, TenantOutcome, list_user_tags, provision_tenant, remove_tenant
from tests.fakes import rabbitmqctl as fake

FAKE = Path(fake.__file__)


class Ctl:
    """The fake's state file and the command prefix that runs it."""

    def __init__(self, tmp_path: Path, users: dict[str, dict[str, Any]], **options: Any) -> None:
        self.state = tmp_path / "rabbitmq-users.json"
        fake.write_state(self.state, users, **options)
        self.prefix = (sys.executable, str(FAKE), str(self.state))

    def users(self) -> dict[str, dict[str, Any]]:
        users: dict[str, dict[str, Any]] = fake.read_state(self.state)["users"]
        return users

    def commands(self) -> list[str]:
        return [call[0] for call in fake.read_state(self.state)["calls"]]

    def add(self, name: str, password: str, **options: Any) -> TenantOutcome:
        return provision_tenant(name, password, rabbitmqctl=self.prefix, **options)


ADMIN = {"password": "old-admin", "tags": ["administrator"]}
TENANT = {"password": "old-tenant", "tags": [TENANT_TAG]}


def test_a_new_tenant_gets_exactly_the_tenant_tag(tmp_path: Path) -> None:
    ctl = Ctl(tmp_path, {})
    assert ctl.add("acme", "pw") is TenantOutcome.CREATED
    assert ctl.users() == {"acme": {"password": "pw", "tags": [TENANT_TAG]}}
    assert ctl.commands() == ["list_users", "add_user", "set_user_tags", "set_permissions",
                              "set_topic_permissions"]  # fmt: skip


@pytest.mark.parametrize(
    ("tags", "shown"),
    [(["administrator"], "administrator"), (["monitoring", "management"], "management, monitoring"),
     ([], "none"), (["evacuator-host"], "evacuator-host")],
    ids=["administrator", "monitoring", "untagged", "host_tag"],
)  # fmt: skip
@pytest.mark.parametrize("reset_password", [False, True], ids=["keep", "reset"])
def test_an_existing_user_without_the_tenant_tag_is_refused_and_left_as_it_is(
    tmp_path: Path, tags: list[str], shown: str, reset_password: bool
) -> None:
    ctl = Ctl(tmp_path, {"ops": {"password": "old", "tags": tags}})
    with pytest.raises(ProvisioningRefused, match=f"'ops' exists and is not a tenant \\(tags: {shown};"):
        ctl.add("ops", "new", reset_password=reset_password)
    assert ctl.users() == {"ops": {"password": "old", "tags": tags}}
    assert ctl.commands() == ["list_users"], "nothing but reading"


def test_tags_printed_as_one_string_by_an_older_rabbitmqctl_are_read(tmp_path: Path) -> None:
    ctl = Ctl(tmp_path, {"root": {"password": "x", "tags": ["administrator", "policymaker"]}},
              legacy_tags=True)  # fmt: skip
    assert list_user_tags(ctl.prefix) == {"root": frozenset({"administrator", "policymaker"})}
    with pytest.raises(ProvisioningRefused, match="administrator, policymaker"):
        ctl.add("root", "new")


def test_the_services_own_user_is_refused_even_when_it_bears_the_tenant_tag(tmp_path: Path) -> None:
    ctl = Ctl(tmp_path, {"svc": dict(TENANT)})
    with pytest.raises(ProvisioningRefused, match="the broker user the service connects as"):
        ctl.add("svc", "new", reset_password=True, reserved_users=("svc",))
    assert ctl.users()["svc"] == TENANT and ctl.commands() == []


def test_a_hosts_user_cannot_even_be_named(tmp_path: Path) -> None:
    ctl = Ctl(tmp_path, {"host.hv1": {"password": "old", "tags": ["evacuator-host"]}})
    with pytest.raises(InvalidName):
        ctl.add("host.hv1", "new")
    assert ctl.commands() == []


def test_an_existing_tenant_keeps_its_password_and_loses_any_other_tag(tmp_path: Path) -> None:
    ctl = Ctl(tmp_path, {"acme": {"password": "old", "tags": [TENANT_TAG, "administrator"]}})
    assert ctl.add("acme", "new") is TenantOutcome.UNCHANGED
    assert ctl.users() == {"acme": {"password": "old", "tags": [TENANT_TAG]}}
    assert "change_password" not in ctl.commands() and "add_user" not in ctl.commands()


def test_an_existing_tenant_gets_a_new_password_only_when_asked(tmp_path: Path) -> None:
    ctl = Ctl(tmp_path, {"acme": dict(TENANT)})
    assert ctl.add("acme", "new", reset_password=True) is TenantOutcome.PASSWORD_RESET
    assert ctl.users() == {"acme": {"password": "new", "tags": [TENANT_TAG]}}


def test_a_tenant_created_but_not_tagged_is_deleted_so_a_retry_can_make_it(tmp_path: Path) -> None:
    ctl = Ctl(tmp_path, {}, failing=("set_user_tags",))
    with pytest.raises(ProvisioningError, match="set_user_tags"):
        ctl.add("acme", "pw")
    assert ctl.users() == {} and ctl.commands()[-1] == "delete_user"


def test_remove_deletes_a_tenant_and_refuses_any_other_user(tmp_path: Path) -> None:
    ctl = Ctl(tmp_path, {"acme": dict(TENANT), "admin": dict(ADMIN)})
    with pytest.raises(ProvisioningRefused, match="'admin' exists and is not a tenant"):
        remove_tenant("admin", rabbitmqctl=ctl.prefix)
    remove_tenant("acme", rabbitmqctl=ctl.prefix)
    remove_tenant("ghost", rabbitmqctl=ctl.prefix)  # idempotent
    assert ctl.users() == {"admin": ADMIN}
    assert ctl.commands().count("delete_user") == 1
