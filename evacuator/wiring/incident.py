"""Wiring of an incident's parts: the notice outbox and publisher, the timers, the service, the reply desk and
the consumer that feeds it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from evacuator.hypervisor.libvirt.host import LibvirtHost
from evacuator.incident.approval import EvacuationPolicy
from evacuator.incident.ledger import IncidentLedger
from evacuator.incident.notices import TenantNotifier
from evacuator.incident.planner import WindowPolicy
from evacuator.incident.ports import Guard
from evacuator.incident.reply_desk import ReplyDesk
from evacuator.incident.reply_limit import DEFAULT_REJECTION_LIMIT
from evacuator.incident.reply_policy import ReplyPolicy
from evacuator.incident.scheduler import ApschedulerTimers
from evacuator.incident.service import Service, ServiceConfig
from evacuator.moves.engine import MoveEngine
from evacuator.settings import Settings
from evacuator.wiring.moves import journal_for
from monitors.verdicts import Severity
from notifiers.delivery import OutboxPublisher
from notifiers.outbox import Outbox
from notifiers.publisher import NoticePublisher
from notifiers.reply_consumer import ReplyConsumer


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentParts:
    """The incident's parts with a life cycle of their own (the runtime starts and stops them)."""

    service: Service
    publisher: OutboxPublisher
    consumer: ReplyConsumer
    ledger: IncidentLedger
    desk: ReplyDesk  # its reply policy changes on a reload (wiring/reload.py)


def incident_ledger_for(settings: Settings) -> IncidentLedger:
    """The open incident and what each tenant was told, for the daemon and the `cancel` command alike."""
    return IncidentLedger(settings.state_dir / "incident.sqlite")


def build_incident(
    settings: Settings, hypervisor: LibvirtHost, engine: MoveEngine, *, clock: Callable[[], datetime],
    guard: Guard | None = None,
) -> IncidentParts:
    host = settings.host
    broker = settings.broker
    # Notices are stored before they are published, so a broker outage delays them but loses none.
    publisher = OutboxPublisher(
        NoticePublisher(broker, clock=clock), Outbox(settings.state_dir / "outbox.sqlite"),
        confirm_timeout_seconds=broker.confirm_timeout_seconds,
        reconnect_initial_seconds=broker.reconnect_initial_seconds,
        reconnect_max_seconds=broker.reconnect_max_seconds,
    )  # fmt: skip
    replies = reply_policy(settings)
    ledger = incident_ledger_for(settings)
    notifier = TenantNotifier(
        publisher=publisher, host=host.name, replies_exchange=settings.broker.replies_exchange, clock=clock,
        events=ledger, answers_replies=True,
    )  # fmt: skip
    # Timers live in memory, scheduled again from the ledger at start; an older version's store is taken over.
    timers = ApschedulerTimers(legacy_store=settings.state_dir / "timers.sqlite")
    service = Service(
        config=ServiceConfig(
            host=host.name,
            peers=tuple(p.name for p in settings.peers),
            window_policy=window_policy(settings),
            reply_policy=replies,
            evacuation=evacuation_policy(settings),
        ),
        hypervisor=hypervisor,
        notifier=notifier,
        timers=timers,
        engine=engine,
        ledger=ledger,
        clock=clock,
        guard=guard,
        # The engine writes the journal; this connection of the service's only reads what each move cost
        # (WAL: it never holds up the writer).
        costs=journal_for(settings),
    )
    # The service owns the timers, so the desk changes a VM's window through it; registered windows go into
    # the VM's definition through the daemon's own libvirt connection.
    # Refusals answered per tenant are limited (a flood would cost a notice each); a settings field
    # `replies.rejections_per_minute` would replace the constant.
    desk = ReplyDesk(
        hypervisor=hypervisor, windows=service, ledger=ledger, notifier=notifier,
        window_store=hypervisor, policy=replies, clock=clock, rejection_limit=DEFAULT_REJECTION_LIMIT,
    )  # fmt: skip
    consumer = ReplyConsumer(
        settings.broker, host=host.name, on_reply=desk.on_reply, on_rejected=desk.on_rejected
    )
    return IncidentParts(service=service, publisher=publisher, consumer=consumer, ledger=ledger, desk=desk)


def window_policy(settings: Settings) -> WindowPolicy:
    evacuation = settings.evacuation
    return WindowPolicy(default_window_seconds=evacuation.default_window_seconds,
                        max_window_seconds=evacuation.max_window_seconds)  # fmt: skip


def reply_policy(settings: Settings) -> ReplyPolicy:
    """The caps on tenants' postpones; the longest window is the admin's, from evacuation."""
    return ReplyPolicy(max_postpone_seconds=settings.replies.max_postpone_seconds,
                       severe_hard_limit_seconds=settings.replies.severe_hard_limit_seconds,
                       max_window_seconds=settings.evacuation.max_window_seconds)  # fmt: skip


def evacuation_policy(settings: Settings) -> EvacuationPolicy:
    """Per severity: evacuate, notify or quarantine only, and whether an evacuation waits for `evacuator
    approve`."""
    evacuation = settings.evacuation
    approvals = ((Severity.MODERATE, evacuation.approval_moderate),
                 (Severity.SEVERE, evacuation.approval_severe),
                 (Severity.FAILED, evacuation.approval_failed))  # fmt: skip
    return EvacuationPolicy(on_moderate=evacuation.on_moderate, on_severe=evacuation.on_severe,
                            on_failed=evacuation.on_failed,
                            manual=frozenset(s for s, approval in approvals if approval == "manual"))


@contextmanager
def direct_notifier(settings: Settings, *, clock: Callable[[], datetime]) -> Iterator[TenantNotifier]:
    """Tells tenants straight through the broker, each notice confirmed before its call returns, not
    through the daemon's outbox: for a command whose process ends in a moment (`evacuator cancel`)."""
    publisher = NoticePublisher(settings.broker, clock=clock)
    publisher.start()
    try:
        with incident_ledger_for(settings) as ledger:
            yield TenantNotifier(publisher=publisher, host=settings.host.name,
                                 replies_exchange=settings.broker.replies_exchange, clock=clock,
                                 events=ledger)
    finally:
        publisher.close()
