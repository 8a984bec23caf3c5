"""`evacuator cancel`: stops a pending move (before quiescing) in the journal and tells the tenant."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Protocol

import structlog

from evacuator.moves.cancel import cancel_moves
from evacuator.moves.state import MoveRecord
from evacuator.settings import Settings, load_settings
from evacuator.wiring.incident import direct_notifier
from evacuator.wiring.moves import journal_for
from evacuator.wiring.runtime import utc_now

log = structlog.get_logger(__name__)


class CancelNotifier(Protocol):
    """The one call `cancel` needs (TenantNotifier has it; notifiers/messages.py: EvacuationCancelled)."""

    def evacuation_cancelled(
        self, *, tenant: str, vm_uuids: Sequence[str], reason: str
    ) -> Future[datetime]: ...


def tell_tenants(notifier: CancelNotifier, cancelled: Sequence[MoveRecord], reason: str,
                 timeout_seconds: float) -> None:
    for tenant in sorted({r.tenant for r in cancelled if r.tenant is not None}):
        uuids = [r.vm_uuid for r in cancelled if r.tenant == tenant]
        notifier.evacuation_cancelled(tenant=tenant, vm_uuids=uuids, reason=reason).result(timeout_seconds)
        log.info("tenant_told_cancelled", tenant=tenant, vm_uuids=uuids)


def run_cancel(settings: Settings, vm_uuid: str, reason: str) -> int:
    with journal_for(settings) as journal:
        cancelled = cancel_moves(journal, vm_uuid, reason, utc_now)
        current = journal.get(vm_uuid.lower())
    if not cancelled:
        state = "no move" if current is None else f"its move is {current.state}"
        print(f"evacuator: cannot cancel VM {vm_uuid}: {state} (only planned, notified or waiting moves "
              "can be cancelled)", file=sys.stderr)
        return 1
    print(f"cancelled: {', '.join(r.vm_uuid for r in cancelled)}")
    with direct_notifier(settings, clock=utc_now) as notifier:
        tell_tenants(notifier, cancelled, reason, settings.broker.confirm_timeout_seconds)
    return 0


def main(args: argparse.Namespace) -> int:
    return run_cancel(load_settings(Path(args.config)), args.vm_uuid, args.reason)
