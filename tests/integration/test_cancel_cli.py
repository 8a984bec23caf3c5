"""Integration, real broker: `evacuator cancel` stops a waiting move and the tenant receives the notice."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from evacuator.moves.journal import Journal
from evacuator.moves.state import MoveRecord, MoveState, Phase
from notifiers.messages import EvacuationCancelled
from notifiers.settings import BrokerSettings
from notifiers.tenant import TenantClient
from tests.fixtures.broker import LabTenant

pytestmark = pytest.mark.integration


def _record(vm_uuid: str, tenant: str, state: MoveState) -> MoveRecord:
    now = datetime.now(UTC)
    return MoveRecord(
        vm_uuid=vm_uuid, vm_name="web", tenant=tenant, source="host-a", destination=None, state=state,
        phase=Phase.ENTERED, step=None, start_on_destination=None, may_restart_on_source=True, deadline=now,
        attempt=0, error=None, updated_at=now,
    )  # fmt: skip


def test_cancel_stops_a_waiting_move_and_tells_the_tenant(
    tmp_path: Path, broker_settings: BrokerSettings, make_tenant: Callable[[str], LabTenant]
) -> None:
    tenant = make_tenant("acme")
    config = tmp_path / "evacuator.yaml"
    config.write_text(yaml.safe_dump({
        "host": {"name": "host-a", "migration_address": "127.0.0.1"},
        "peers": [{"name": "host-b", "libvirt_uri": "qemu+tcp://127.0.0.1:1/system"}],
        "broker": {"url": broker_settings.url.get_secret_value(),
                   "notices_exchange": broker_settings.notices_exchange,
                   "replies_exchange": broker_settings.replies_exchange},
        "state_dir": str(tmp_path / "state"),
    }))  # fmt: skip
    waiting, quiescing = str(uuid.uuid4()), str(uuid.uuid4())
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        journal.put(_record(waiting, tenant.name, MoveState.WAITING))
        journal.put(_record(quiescing, tenant.name, MoveState.QUIESCING))

    def cancel(vm_uuid: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "evacuator.cli", "cancel", vm_uuid, "--config", str(config),
             "--reason", "host repaired"], capture_output=True, text=True, timeout=60, check=False)

    done = cancel(waiting)
    assert done.returncode == 0, done.stderr
    refused = cancel(quiescing)
    assert refused.returncode == 1 and "quiescing" in refused.stderr
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        assert [(r.vm_uuid, r.state) for r in journal.all() if r.state is MoveState.CANCELLED] == [
            (waiting, MoveState.CANCELLED)]
    with TenantClient(tenant.url, tenant.name, replies_exchange=broker_settings.replies_exchange) as client:
        notice = client.next_notice(10)
    assert isinstance(notice, EvacuationCancelled)
    assert notice.vm_uuids == (waiting,) and notice.reason == "host repaired" and notice.host == "host-a"
