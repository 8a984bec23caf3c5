"""Writes into a libvirt domain's <metadata>, so it travels with the VM: a tenant's registered window, and
where the VM was evacuated from (hypervisor/origin.py)."""

from __future__ import annotations

import dataclasses
from xml.etree import ElementTree

import libvirt

from evacuator.errors import HypervisorError, VmMetadataError
from evacuator.hypervisor.facts import NAMESPACE_PREFIX, NAMESPACE_URI, VmFacts, parse_facts, render_facts
from evacuator.hypervisor.origin import ORIGIN_NAMESPACE_URI, ORIGIN_PREFIX, Origin, render_origin


def write_window(domain: libvirt.virDomain, vm_uuid: str, window_seconds: int) -> None:
    """Sets the domain's window among its facts, the others untouched; any failure is a HypervisorError."""
    try:
        facts = dataclasses.replace(_current_facts(domain), window_seconds=window_seconds)
        element = _bare(render_facts(facts))
        for target in _targets(domain):
            domain.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, element, NAMESPACE_PREFIX, NAMESPACE_URI, target
            )
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"VM {vm_uuid}: cannot store its window: {exc.get_error_message()}") from exc


def write_origin(domain: libvirt.virDomain, origin: Origin | None) -> None:
    """Sets (or, with None, removes) the domain's origin element, in its definition and its running domain."""
    element = None if origin is None else render_origin(origin)
    key = None if origin is None else ORIGIN_PREFIX  # removing takes neither element nor key
    for target in _targets(domain):
        domain.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, element, key, ORIGIN_NAMESPACE_URI, target)


def _targets(domain: libvirt.virDomain) -> list[int]:
    # The persistent definition always; the running one too, so both agree until the next boot. One
    # call per target: libvirt (9.0) fails "failed to create a new XML namespace" given both flags.
    targets = [libvirt.VIR_DOMAIN_AFFECT_CONFIG]
    if domain.isActive():
        targets.append(libvirt.VIR_DOMAIN_AFFECT_LIVE)
    return targets


def _current_facts(domain: libvirt.virDomain) -> VmFacts:
    try:
        xml = domain.metadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE_URI, libvirt.VIR_DOMAIN_AFFECT_CONFIG
        )
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return VmFacts()
        raise
    try:
        return parse_facts(xml)
    except VmMetadataError as exc:  # never overwrite facts we cannot read: the owner would be lost
        raise HypervisorError(f"VM metadata unreadable, window not stored: {exc}") from exc


def _bare(xml: str) -> str:
    """The element without namespaces: libvirt puts it in NAMESPACE_URI itself and refuses a declared one."""
    root = ElementTree.fromstring(xml)
    for element in root.iter():
        element.tag = element.tag.rsplit("}", 1)[-1]
    return ElementTree.tostring(root, encoding="unicode")
