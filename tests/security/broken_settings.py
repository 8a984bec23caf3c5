"""A hypothesis strategy for broken settings files that carry marker secrets: a valid file with a marker in
every field that may hold a secret and in its neighbours, then broken by syntax, types, unknown fields, bad
values, missing fields or model-level rules (each breakage alone makes the file invalid)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import yaml
from hypothesis import strategies as st

TAG = "S3CRET"  # every marker starts with it: no output may hold it, nor any marker's random part

Doc = dict[str, Any]
Where = tuple[str | int, ...]


@st.composite
def _markers(draw: st.DrawFn) -> list[str]:
    # The index keeps markers distinct when hypothesis shrinks their random parts to zeros.
    return [f"{TAG}-{i:02d}{draw(st.binary(min_size=6, max_size=6)).hex()}" for i in range(12)]


def valid_settings(m: list[str], password_from: str = "url") -> Doc:
    """Valid settings with the markers `m` as the broker URL's password (or its password file's name), the
    IPMI password, libvirt URIs' passwords, and in neighbouring fields."""
    broker: Doc = {
        "url": f"amqp://svc:{m[0]}@mq.example.net:5672/%2F",
        "failover_urls": ["amqp://svc@mq-2.example.net:5672/%2F"],  # a cluster's other node: no password
        "notices_exchange": m[1],
        "peers_vhost": m[2],
    }
    if password_from == "file":
        broker.update(url="amqp://svc@mq.example.net:5672/%2F", password_file=f"/etc/evacuator/{m[0]}")
    elif password_from == "env":
        broker.update(url="amqp://svc@mq.example.net:5672/%2F", password_env="EVACUATOR_BROKER_PASSWORD")
    return {
        "host": {"name": "hv-01", "libvirt_uri": f"qemu+ssh://root:{m[3]}@localhost/system",
                 "storage_pool": m[4], "migration_address": "192.0.2.11"},
        "peers": [
            {"name": "hv-02", "libvirt_uri": f"qemu+tcp://admin:{m[5]}@hv-02.example.net/system",
             "storage_pool": m[6], "broker_user": m[7]},
            {"name": "hv-03", "libvirt_uri": "qemu+tls://hv-03.example.net/system",
             "migration_address": "192.0.2.13"},
        ],
        "broker": broker,
        "monitors": {"sysfs_root": f"/srv/{m[8]}", "sources": {"ipmi": {
            "enabled": False, "host": m[9], "username": m[10], "password": m[11]}}},
        "data_channel": {"advertise_address": m[8]},
        "state_dir": f"/var/lib/{m[9]}",
    }  # fmt: skip


def _node(doc: Any, where: Where) -> Any:
    for part in where:
        doc = doc[part]
    return doc


def _put(doc: Doc, where: Where, value: Any) -> None:
    """Set the value at `where`, creating the sections on the way (the base leaves many to their defaults)."""
    node: Any = doc
    for part in where[:-1]:
        node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
    node[where[-1]] = value


_NUMBERS: list[Where] = [
    ("monitors", "poll_interval_seconds"), ("evacuation", "default_window_seconds"), ("data_channel", "port"),
    ("broker", "confirm_timeout_seconds"), ("monitors", "temperature", "threshold_celsius"),
    ("replies", "max_postpone_seconds"), ("broker", "prefetch_count"),
    ("monitors", "sources", "ipmi", "port"),
    ("data_channel", "enabled"), ("monitors", "sources", "hwmon", "enabled"),
    ("evacuation", "precopy_during_shutdown"), ("monitors", "sources", "ipmi", "enabled"),
]  # numbers and booleans: a marker, a list or a mapping is never one  # fmt: skip
_STRINGS: list[Where] = [
    ("broker", "url"), ("monitors", "sources", "ipmi", "password"), ("host", "name"),
    ("peers", 0, "libvirt_uri"),
    ("monitors", "sources", "ipmi", "username"), ("host", "migration_address"), ("broker", "password_env"),
]  # fmt: skip
_SECTIONS: list[Where] = [
    ("host",), ("broker",), ("monitors",), ("monitors", "sources", "ipmi"), ("data_channel",), ("peers", 0),
    ("evacuation",), ("logging",), ("peers",), ("data_channel", "allow_from"), ("broker", "failover_urls"),
]  # fmt: skip
_MAPPINGS: list[Where] = [
    (), ("host",), ("broker",), ("monitors",), ("monitors", "sources", "ipmi"), ("peers", 0), ("peers", 1),
    ("data_channel",),
]  # fmt: skip
# Keys that are field-like are named in errors; the others (a marker, a URL in braces) must not be.
_UNKNOWN_KEYS = ["colour", "passwrd", "S3CRET-KEY", "amqp://u:{m}@mq/", "{m}", "password {m}"]


def _wrong_type(draw: st.DrawFn, doc: Doc, m: str) -> str:
    wrong: dict[str, Any] = {"list": [m, m], "dict": {m: m}, "string": m, "int": 7}
    where, kinds = draw(st.sampled_from([(w, ["list", "dict", "string"]) for w in _NUMBERS]
                                        + [(w, ["list", "dict", "int"]) for w in _STRINGS]
                                        + [(w, ["string", "int"]) for w in _SECTIONS]))  # fmt: skip
    _put(doc, where, wrong[draw(st.sampled_from(kinds))])
    return f"wrong type at {where[0]}"


def _unknown_field(draw: st.DrawFn, doc: Doc, m: str) -> str:
    where = draw(st.sampled_from(_MAPPINGS))
    _put(doc, (*where, draw(st.sampled_from(_UNKNOWN_KEYS)).format(m=m)), m)
    return "unknown field"


def _model_level(draw: st.DrawFn, doc: Doc, m: str) -> str:
    """A rule over several fields: pydantic's own text of such an error held the whole input."""
    broken = draw(st.sampled_from([
        "peer_is_host", "same_peer_names", "same_broker_users", "window_over_cap", "two_ipmi_passwords",
        "url_and_password_file", "two_broker_password_sources", "tls_files_without_amqps",
        "no_channel_address", "failover_other_user", "failover_other_scheme",
        "clear_over_threshold", "stale_under_poll", "window_under_consecutive",
    ]))  # fmt: skip
    peers, broker = doc["peers"], doc["broker"]
    if broken == "peer_is_host":
        doc["host"]["name"] = peers[0]["name"] = m  # a marker as the name: the error names the position only
    elif broken == "same_peer_names":
        peers[1]["name"] = peers[0]["name"]
    elif broken == "same_broker_users":
        peers[1]["broker_user"] = peers[0]["broker_user"]
    elif broken == "window_over_cap":
        doc["evacuation"] = {"default_window_seconds": 7200, "max_window_seconds": 60}
    elif broken == "two_ipmi_passwords":
        doc["monitors"]["sources"]["ipmi"]["password_file"] = f"/etc/{m}"
    elif broken == "url_and_password_file":
        broker.pop("password_env", None)
        broker.update(url=f"amqp://svc:{m}@mq/%2F", password_file=f"/etc/{m}")
    elif broken == "two_broker_password_sources":
        broker.update(url="amqp://svc@mq/%2F", password_file=f"/etc/{m}", password_env="BROKER_PW")
    elif broken == "tls_files_without_amqps":
        broker["ca_file"] = f"/etc/{m}.pem"
    elif broken == "no_channel_address":
        del doc["host"]["migration_address"]
    elif broken == "failover_other_user":
        broker["failover_urls"] = [f"amqp://{m}@mq-2.example.net/%2F"]
    elif broken == "failover_other_scheme":
        broker["failover_urls"] = [f"amqps://svc@{m}.example.net/%2F"]
    elif broken == "clear_over_threshold":
        doc["monitors"]["temperature"] = {"threshold_celsius": 80, "clear_celsius": 90}
    elif broken == "stale_under_poll":
        doc["monitors"].update(poll_interval_seconds=30, stale_after_seconds=10)
    else:
        doc["monitors"]["temperature"] = {"consecutive_samples": 5, "window_samples": 3}
    return broken


_BAD_VALUES: list[tuple[Where, Callable[[str], Any]]] = [
    (("data_channel", "port"), lambda m: 70000), (("data_channel", "encryption"), lambda m: f"aes-{m}"),
    (("host", "name"), lambda m: "all"), (("host", "name"), lambda m: f"{m} x"), (("peers",), lambda m: []),
    (("host", "migration_address"), lambda m: f"{m}:16529"),
    (("data_channel", "listen_address"), lambda m: f"tcp://{m}"),
    (("broker", "url"), lambda m: f"http://u:{m}@mq/"), (("broker", "url"), lambda m: f"amqp://u:{m}/x@mq/"),
    (("broker", "url"), lambda m: f"amqp://u:{m}@/"), (("broker", "url"), lambda m: f"amqp://u:{m}@mq:{m}/"),
    (("broker", "password_env"), lambda m: m), (("broker", "peers_vhost"), lambda m: ""),
    (("evacuation", "max_total_transfers"), lambda m: 0),
    (("monitors", "sources", "ipmi", "port"), lambda m: 0),
    (("monitors", "poll_interval_seconds"), lambda m: -1), (("logging", "level"), lambda m: m),
    (("data_channel", "allow_from"), lambda m: [f"{m}:1"]), (("data_channel", "allow_from"), lambda m: []),
    (("peers", 0, "broker_user"), lambda m: f"{m} {m}"), (("broker", "queue_type"), lambda m: m),
    (("broker", "failover_urls"), lambda m: [f"amqp://svc:{m}@mq-2/%2F"]),
    (("broker", "failover_urls"), lambda m: [f"http://svc:{m}@mq-2/"]),
    (("broker", "failover_urls"), lambda m: ["amqp://svc@mq-2/%2F", f"amqp://svc:{m}/x@mq-3/"]),
    (("broker", "failover_urls"), lambda m: f"amqp://svc:{m}@mq-2/%2F"),
]  # fmt: skip


def _bad_value(draw: st.DrawFn, doc: Doc, m: str) -> str:
    where, value = draw(st.sampled_from(_BAD_VALUES))
    _put(doc, where, value(m))
    return f"bad value at {where[0]}"


def _missing(draw: st.DrawFn, doc: Doc, m: str) -> str:
    where = draw(st.sampled_from([("host",), ("peers",), ("host", "name"), ("peers", 0, "libvirt_uri")]))
    del _node(doc, where[:-1])[where[-1]]
    return "missing field"


_SEMANTIC: list[Callable[[st.DrawFn, Doc, str], str]] = [
    _wrong_type,
    _unknown_field,
    _model_level,
    _model_level,
    _bad_value,
    _missing,
]

# Each makes a YAML error around `m`, a mapping's whole value written plain (the case: PyYAML quoted
# the line, `password: {S3cret...`).
_SYNTAX: dict[str, Callable[[str, str], str]] = {
    "unclosed_brace": lambda line, m: line.replace(m, "{" + m),
    "unclosed_bracket": lambda line, m: line.replace(m, "[" + m),
    "unclosed_double_quote": lambda line, m: line.replace(m, '"' + m),
    "undefined_alias": lambda line, m: line.replace(m, "*" + m),
    "unknown_tag": lambda line, m: line.replace(m, f"!{m} {m}"),
    "mapping_in_value": lambda line, m: line.replace(m, f"{m}: {m}"),
    "control_character": lambda line, m: line.replace(m, m + "\x07"),
    "tab_after_value": lambda line, m: line.replace(m, m + "\t"),
    "python_tag": lambda line, m: line.replace(m, f"!!python/object/apply:os.system [{m}]"),
    "bad_escape": lambda line, m: line.replace(m, f'"{m}\\q"'),
    "impossible_date": lambda line, m: line.replace(m, f"2024-13-01 #{m}"),
    "bad_directive": lambda line, m: line,  # the document gets an incompatible %YAML directive
    "tab_indent": lambda line, m: "\t" + line,  # block style only, as the next
    "stray_sequence": lambda line, m: f"{line}\n- {m}",
}


def _break_syntax(draw: st.DrawFn, text: str, markers: list[str], *, flow: bool) -> tuple[str, str] | None:
    """(the text with a YAML error, which one), or None when the field to break is gone."""
    target = draw(st.sampled_from([markers[10], markers[11], markers[4], markers[6]]))
    kinds = sorted(set(_SYNTAX) - ({"tab_indent", "stray_sequence"} if flow else set()))
    kind = draw(st.sampled_from(kinds))
    lines = text.split("\n")
    hits = [i for i, line in enumerate(lines) if f": {target}" in line]
    if not hits:  # a semantic breakage took the field away: the file is broken already
        return None
    lines[hits[0]] = _SYNTAX[kind](lines[hits[0]], target)
    return ("%YAML 2.0\n---\n" if kind == "bad_directive" else "") + "\n".join(lines), kind


@st.composite
def broken_files(draw: st.DrawFn) -> tuple[bytes, list[str], str]:
    """(a broken settings file's bytes, the markers it holds, what is broken)."""
    markers = draw(_markers())
    doc: Any = valid_settings(markers, draw(st.sampled_from(["url", "file", "env"])))
    how = draw(st.sampled_from(["semantic"] * 8 + ["syntax"] * 6 + ["both"] * 3
                               + ["not_a_mapping", "not_utf8"]))  # fmt: skip
    whats: list[str] = []
    if how in ("semantic", "both"):
        for _ in range(draw(st.integers(min_value=1, max_value=3))):
            trial = copy.deepcopy(doc)
            try:
                whats.append(draw(st.sampled_from(_SEMANTIC))(draw, trial, draw(st.sampled_from(markers))))
            except (TypeError, KeyError, IndexError, AttributeError):  # an earlier breakage took it away
                continue
            doc = trial
    if how == "not_a_mapping":
        doc = draw(st.sampled_from([markers, markers[0], [{"host": markers[:2]}]]))
        whats.append(how)
    flow = draw(st.booleans())
    text = yaml.safe_dump(doc, default_flow_style=flow, width=10_000, sort_keys=draw(st.booleans()))
    if how in ("syntax", "both") and (broken := _break_syntax(draw, text, markers, flow=flow)) is not None:
        text, kind = broken
        whats.append(kind)
    content = text.encode()
    if how == "not_utf8":
        at = content.index(markers[11].encode())
        content = content[:at] + b"\xe9\xff" + content[at:]
        whats.append(how)
    return content, markers, "+".join(whats)
