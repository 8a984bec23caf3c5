"""Where a VM was evacuated from, kept in its own libvirt domain <metadata> (issue 20, return to service).

The mover writes it on the destination once a move is done: the host the VM left and when. So the record
travels with the VM, whatever happens to the source's journal (a host that failed may come back with new
disks), and the host that now runs the VM can offer it back when its old host is in service again
(`return_to_service.move_back`). Every move records its own source (a sick host's, or a drained one's:
after `undrain` its VMs may come back too); a move back removes it. Its own namespace, apart from the
tenant's facts (hypervisor/facts.py): a tenant's `register` rewrites those and must neither see nor lose
this.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from xml.etree import ElementTree

ORIGIN_NAMESPACE_URI = "https://evacuator.dev/xmlns/origin/1"
ORIGIN_PREFIX = "evacuator-origin"
ORIGIN_ELEMENT = "origin"
_MAX_HOST_CHARS = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class Origin:
    """The host a VM was evacuated from, and when the move that took it away ended (the mover's clock)."""

    host: str
    left_at: datetime

    def __post_init__(self) -> None:
        if not self.host or len(self.host) > _MAX_HOST_CHARS or any(ch.isspace() for ch in self.host):
            raise ValueError(f"an origin host is a name of at most {_MAX_HOST_CHARS} characters, no spaces")
        if self.left_at.tzinfo is None:
            raise ValueError("an origin's left_at must be timezone-aware")


def render_origin(origin: Origin) -> str:
    """The element as libvirt's setMetadata takes it: bare (libvirt puts it in the namespace itself)."""
    attributes = {"host": origin.host, "left_at": origin.left_at.isoformat()}
    return ElementTree.tostring(ElementTree.Element(ORIGIN_ELEMENT, attributes), encoding="unicode")


def origin_from_element(element: ElementTree.Element | None) -> Origin | None:
    """The origin an <origin> element records; None for none, or for one this version cannot read (an
    unreadable record only means the VM is not offered back: it must never stop a host listing its VMs)."""
    if element is None:
        return None
    try:
        left_at = datetime.fromisoformat(element.get("left_at") or "")
        return Origin(host=element.get("host") or "", left_at=left_at)
    except ValueError:
        return None


def find_origin(domain: ElementTree.Element) -> Origin | None:
    """The origin recorded in a parsed <domain>'s <metadata>, if any."""
    return origin_from_element(domain.find(f"./metadata/{{{ORIGIN_NAMESPACE_URI}}}{ORIGIN_ELEMENT}"))


def with_origin(domain_xml: str, origin: Origin | None) -> str:
    """The domain XML with its origin replaced (None: removed), the rest as it was; for hypervisors that keep
    the XML themselves (tests' fake) and for reading what libvirt would store."""
    ElementTree.register_namespace(ORIGIN_PREFIX, ORIGIN_NAMESPACE_URI)
    root = ElementTree.fromstring(domain_xml)
    metadata = root.find("metadata")
    if metadata is not None:
        for old in metadata.findall(f"{{{ORIGIN_NAMESPACE_URI}}}{ORIGIN_ELEMENT}"):
            metadata.remove(old)
    if origin is not None:
        if metadata is None:
            metadata = ElementTree.SubElement(root, "metadata")
        element = ElementTree.SubElement(metadata, f"{{{ORIGIN_NAMESPACE_URI}}}{ORIGIN_ELEMENT}")
        element.set("host", origin.host)
        element.set("left_at", origin.left_at.isoformat())
    return ElementTree.tostring(root, encoding="unicode")
