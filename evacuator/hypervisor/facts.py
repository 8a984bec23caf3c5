"""Reads and writes a VM's own evacuator facts, kept in its libvirt domain <metadata> under our namespace."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import StrEnum
from xml.etree import ElementTree

from evacuator.errors import VmMetadataError

NAMESPACE_URI = "https://evacuator.dev/xmlns/vm/1"
NAMESPACE_PREFIX = "evacuator"
ROOT_ELEMENT = "vm"
_MAX_TENANT_CHARS = 128


class MoveMethod(StrEnum):
    """How a VM moves: shut down and copied (default), live with its storage, or live first then cold."""

    COLD = "cold"
    LIVE = "live"
    LIVE_THEN_COLD = "live_then_cold"


@dataclass(frozen=True, slots=True, kw_only=True)
class VmFacts:
    """What the VM's owner registered: who owns it and how long it may prepare before a move.

    Every field is optional: an absent field means "use the configured default". New fields (group, function,
    priority, method) are added here and as one row in `_CODECS`; readers ignore elements they do not know, so
    an older agent keeps working with VMs written by a newer one.
    """

    tenant: str | None = None
    window_seconds: int | None = None
    # VMs of one consistency group (on one host) are quiesced together and moved all or nothing.
    group: str | None = None
    # VMs of one function — replicas of one database, say — are never placed on one destination.
    function: str | None = None
    # Start order on the destination within the group: lower first.
    boot_order: int | None = None
    # Higher moves first when the concurrency caps make moves queue.
    priority: int | None = None
    method: MoveMethod | None = None


def _parse_tenant(text: str) -> str:
    tenant = text.strip()
    if not tenant or len(tenant) > _MAX_TENANT_CHARS or any(ch.isspace() for ch in tenant):
        raise ValueError(f"a non-empty name of at most {_MAX_TENANT_CHARS} characters without spaces")
    return tenant


def _parse_seconds(text: str) -> int:
    stripped = text.strip()
    if not stripped.isdigit() or not stripped.isascii():
        raise ValueError("a whole number of seconds >= 0")
    return int(stripped)


def _render_tenant(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("a tenant name (text)")
    return _parse_tenant(value)


def _render_seconds(value: object) -> str:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("a whole number of seconds >= 0")
    return str(value)


def _parse_int(text: str) -> int:
    stripped = text.strip()
    try:
        return int(stripped)
    except ValueError:
        raise ValueError("a whole number") from None


def _render_int(value: object) -> str:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("a whole number")
    return str(value)


def _parse_method(text: str) -> MoveMethod:
    try:
        return MoveMethod(text.strip())
    except ValueError:
        raise ValueError(f"one of {', '.join(m.value for m in MoveMethod)}") from None


def _render_method(value: object) -> str:
    return _parse_method(str(value)).value


# One row per field: element name (== VmFacts field name), text -> value, value -> text (validating).
_CODECS: dict[str, tuple[Callable[[str], object], Callable[[object], str]]] = {
    "tenant": (_parse_tenant, _render_tenant),
    "window_seconds": (_parse_seconds, _render_seconds),
    "group": (_parse_tenant, _render_tenant),
    "function": (_parse_tenant, _render_tenant),
    "boot_order": (_parse_int, _render_int),
    "priority": (_parse_int, _render_int),
    "method": (_parse_method, _render_method),
}
assert set(_CODECS) == {f.name for f in fields(VmFacts)}, "every VmFacts field needs a codec row"


def parse_facts(xml: str) -> VmFacts:
    """Parses the element as `dom.metadata(VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE_URI)` returns it."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise VmMetadataError(f"evacuator VM metadata is not well-formed XML: {exc}") from exc
    return facts_from_element(root)


def facts_from_element(root: ElementTree.Element) -> VmFacts:
    """Reads facts from an already parsed <vm> element (namespaced or, as libvirt may return it, bare)."""
    if _local_name(root.tag) != ROOT_ELEMENT or _namespace(root.tag) not in ("", NAMESPACE_URI):
        raise VmMetadataError(f"evacuator VM metadata: expected root element <{ROOT_ELEMENT}> in namespace "
                              f"{NAMESPACE_URI}, got <{root.tag}>")
    values: dict[str, object] = {}
    for child in root:
        name = _local_name(child.tag)
        # libvirt namespaces only the root element it stores, so bare children are ours too.
        if name not in _CODECS or _namespace(child.tag) not in ("", NAMESPACE_URI):
            continue
        if name in values:
            raise VmMetadataError(f"evacuator VM metadata field {name!r} appears more than once")
        parse, _ = _CODECS[name]
        try:
            values[name] = parse(child.text or "")
        except ValueError as exc:
            raise VmMetadataError(
                f"evacuator VM metadata field {name!r} has {child.text!r}, expected {exc}"
            ) from exc
    return VmFacts(**values)  # type: ignore[arg-type]


def render_facts(facts: VmFacts) -> str:
    """Renders the <evacuator:vm> element to put in the domain's <metadata>; absent fields are omitted."""
    ElementTree.register_namespace(NAMESPACE_PREFIX, NAMESPACE_URI)
    root = ElementTree.Element(f"{{{NAMESPACE_URI}}}{ROOT_ELEMENT}")
    for name, (_, render) in _CODECS.items():
        value = getattr(facts, name)
        if value is None:
            continue
        try:
            text = render(value)
        except ValueError as exc:
            raise VmMetadataError(f"evacuator VM fact {name!r} is {value!r}, expected {exc}") from exc
        ElementTree.SubElement(root, f"{{{NAMESPACE_URI}}}{name}").text = text
    return ElementTree.tostring(root, encoding="unicode")


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _namespace(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""
