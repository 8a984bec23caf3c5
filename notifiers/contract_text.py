"""The tenant contract's prose: the AsyncAPI descriptions and the rejection codes' table (also in README)."""

from __future__ import annotations

from notifiers.wire import MAX_BODY_BYTES, WireRejectCode

# code -> (when the service sends it, what the tenant should do). Every WireRejectCode has a row (a test).
REJECT_CODES: dict[WireRejectCode, tuple[str, str]] = {
    WireRejectCode.MISSING_USER_ID: (
        "The reply had no AMQP `user_id` property, so nothing proves who sent it.",
        "Publish every reply with `user_id` set to your broker user.",
    ),
    WireRejectCode.WRONG_ROUTING_KEY: (
        "The routing key is not `<user_id>.<host>` for the host that read the reply, or a `ready` or "
        "`postpone` went to `<tenant>.all` (the host holding the VM answers).",
        "Publish to the notice's `reply_routing_key` (`<tenant>.all` only for `register`).",
    ),
    WireRejectCode.MALFORMED_REPLY: (
        f"The body is not a schema 1 reply: not UTF-8 JSON, over {MAX_BODY_BYTES} bytes, a missing or other "
        "`schema_version`, an unknown `type`, or a field missing, unknown or invalid (`reason` names it).",
        "Fix the client (check replies against `docs/schemas/`): the same body is refused again.",
    ),
    WireRejectCode.REFUSED_REPLY: (
        "A valid reply the service could not carry out now (for instance the window could not be stored).",
        "Send it again later.",
    ),
    WireRejectCode.UNKNOWN_VM: (
        "No VM of yours with this `vm_uuid` is on that host (another tenant's VM looks the same).",
        "Check `vm_uuid` and the host in the routing key; the VM may have moved already.",
    ),
    WireRejectCode.NO_PENDING_EVACUATION: (
        "`ready` or `postpone` for a VM with no open window: none was scheduled, it was cancelled, or its "
        "move has started.",
        "Nothing to undo: follow the notices (`evacuation_started`, `vm_evacuated`, `evacuation_cancelled`).",
    ),
    WireRejectCode.STALE_EVENT: (
        "`event_id` is not the event id of the VM's pending `evacuation_scheduled` (it is an older "
        "evacuation's, or an update's).",
        "Name the event id of the VM's latest `evacuation_scheduled`, or leave `event_id` out.",
    ),
    WireRejectCode.DEADLINE_PASSED: (
        "The VM's deadline has passed: its move is starting.",
        "Nothing: `evacuation_started` follows.",
    ),
    WireRejectCode.NO_POSTPONE_ON_FAILED_HOST: (
        "`postpone` for a VM of a failed host.",
        "Finish what you can and answer `ready`: the move does not wait.",
    ),
    WireRejectCode.POSTPONE_LIMIT_REACHED: (
        "The VM's deadline is already its `latest_deadline`.",
        "Answer `ready` when done; otherwise the move starts at the deadline.",
    ),
}


def reject_code_table() -> str:
    """The rejection codes as a Markdown table (code, when, what the tenant should do)."""
    rows = [f"| `{code}` | {when} | {then} |" for code, (when, then) in REJECT_CODES.items()]
    return "\n".join(["| code | when | what the tenant should do |", "|---|---|---|", *rows])


DESCRIPTION = (
    "Notices from the evacuator agent of each hypervisor to the tenants owning VMs on it, and the tenants' "
    "replies. Every message is UTF-8 JSON with `schema_version` 1 and a `type`; its JSON Schema (draft "
    "2020-12) is in `docs/schemas/`, identified by an `$id` under https://evacuator.dev/schemas/1/. All "
    "times are UTC (RFC 3339).",
    "**Identity.** Each tenant is a broker user, provisioned by `evacuator tenant add`: it may read only the "
    "queue `<tenant>.notices` and publish only to the replies exchange with routing keys `<tenant>.<word>`. "
    "Every reply must carry the AMQP `user_id` property (the broker checks it equals the connection's user; "
    "a reply without it is refused with `missing_user_id`).",
    "**Notices.** Consume `<tenant>.notices` and ack after handling. It is a durable quorum queue that "
    "`evacuator tenant add` created: the tenant may not declare it (a declaration is refused with 403 "
    "ACCESS_REFUSED, whatever its settings), so only consume it, or declare it with `passive` set. Notices "
    "are persistent and leave each host from a durable outbox: after an outage they come late but in order, "
    "and one may come twice, so drop a notice whose `event_id` you have handled. `incarnation` orders the "
    "notices of one host: keep the highest handled per host, and never let a notice with a lower one "
    "overwrite what a newer notice said.",
    "**Replies.** Publish them on a channel of their own, never on the channel that consumes the notices: "
    "a refused publish (another tenant's routing key, another exchange, a forged `user_id`) is a channel "
    "error, so the broker closes that channel and a consumer on it is lost. Set `mandatory` and use "
    "publisher confirms: the broker accepts any `<tenant>.<word>` key, and a key naming no host (no queue "
    "bound) comes back as a basic.return, which means 'no such host'. Give every reply a fresh AMQP "
    "`message_id`: a refusal comes back as a `reply_rejected` notice whose `in_reply_to` is that message_id.",
    "**Which key.** `ready` and `postpone` go to the `reply_routing_key` of the `evacuation_scheduled` "
    "notice (`<tenant>.<host>`) and may name its `event_id` (the scheduled notice's, not an update's). "
    "`register` may also be sent before any notice, without knowing the host, to `<tenant>.all`: every "
    "host's replies queue is bound to `*.all`, the host holding the VM stores the window and the others "
    "stay silent (so no answer does not prove it was stored).",
    "**Deadlines.** A VM moves at its `deadline`, or at once after an accepted `ready` (then an "
    "`evacuation_updated` with cause `expedited` follows). `postpone_seconds` is added to the VM's current "
    "deadline (the last one notified), capped at its `latest_deadline`, which is fixed by the scheduled "
    "notice and never moves; the granted deadline comes back in `evacuation_updated` (cause `postponed`).",
)

NOTICE_TEXT = {
    "host_at_risk": "The host is sick and its policy for this severity is notify: nothing moves; act on your "
    "own if you wish (no reply is expected).",
    "evacuation_scheduled": "The tenant's VMs on a sick host will be cold-migrated at their deadlines.",
    "evacuation_updated": "Deadlines of the scheduled event changed (postpone granted, ready accepted).",
    "evacuation_started": "The move of one VM has begun: it is being shut down now.",
    "vm_evacuated": 'One VM has moved ("vm moved"): it runs, or is defined if it was off, on to_host; '
    "host (equal to from_host) is the host it left; downtime_seconds and bytes_moved say what the move cost "
    "(null: not measured).",
    "evacuation_completed": "Every VM of the scheduled event has been handled.",
    "evacuation_cancelled": "The host recovered (or an operator cancelled) before these VMs moved.",
    "evacuation_failed": "Moving one VM failed; the reason is for humans.",
    "reply_rejected": "One of the tenant's replies was refused; code is stable, reason is for humans.",
}
REPLY_TEXT = {
    "ready": "Preprocessing of the VM is done: move it now (before its deadline).",
    "postpone": "Move the VM later: postpone_seconds is added to its current deadline, capped at its "
    "latest_deadline, never on a failed host; the new deadline comes back in evacuation_updated.",
    "register": "Set the VM's preprocessing window for future evacuations (stored with the VM, capped by the "
    "admin's maximum); to `<tenant>.<host>`, or to `<tenant>.all` when the host is not known.",
}
# Longer descriptions of some messages (CommonMark), after their summary.
MESSAGE_TEXT = {
    "evacuation_updated": "`cause` says why: `postponed` (a postpone was granted; the deadline may be less "
    "than asked, capped at `latest_deadline`), `expedited` (a `ready` was accepted: the move starts now), "
    "`severity_changed` (reserved for deadlines changed by a new reading; not sent by this version), "
    "`held_back` (the windows are over but a cloud-wide guard holds the moves back, `hold` says which: "
    "`paused`, `too_many_evacuating`, `too_little_room`, `too_soon`; each move still starts with its "
    "`evacuation_started`). Each "
    "VM carries its current `deadline` and the unchanged `latest_deadline` of the scheduled notice.",
    "reply_rejected": "`in_reply_to` is the AMQP `message_id` of the refused reply (null if it had none). "
    "The codes:\n\n" + reject_code_table(),
}

NOTICES_CHANNEL = (
    "The tenant's durable quorum queue (`x-queue-type: quorum`), bound to `<tenant>.#` on the notices "
    "exchange (routing key `<tenant>.<host>.<type>`). `evacuator tenant add` creates it; the tenant may not "
    "declare it (403 ACCESS_REFUSED): consume it, or declare it with `passive` set."
)
REPLIES_CHANNEL = (
    "Topic exchange. Routing key `<tenant>.<host>`, the notice's `reply_routing_key`; or `<tenant>.all` for "
    "a `register` without a host: every host's replies queue is also bound to `*.all`, only the host holding "
    "the VM stores the window and the others stay silent. The broker refuses (and closes the channel for) "
    "another tenant's key and a forged `user_id`, but accepts `<tenant>.<any word>`: a key naming no host is "
    "dropped, which only `mandatory` reveals (a basic.return: no such host)."
)
SEND_REPLY = (
    "Publish on a channel of its own (not the consuming one), with user_id = the tenant's user, a fresh "
    "message_id, persistent, mandatory (a basic.return means no such host), with confirms."
)
MESSAGE_ID = "Set a fresh AMQP message_id on every reply: a reply_rejected names it in in_reply_to."
IN_REPLY_TO = "The AMQP message_id of the refused reply."
