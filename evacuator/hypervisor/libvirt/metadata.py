"""Writes a tenant-registered preprocessing window into the VM's libvirt <metadata>, so it travels with it."""

from __future__ import annotations

import dataclasses
from xml.etree import ElementTree

import libvirt

from evacuator.errors import HypervisorError, VmMetadataError
from evacuator.hypervisor.facts import NAMESPACE_PREFIX, NAMESPACE_URI, VmFacts, parse_facts, render_facts
from evacuator.incident.reply_desk import WindowStore


def libvirt_window_store(uri: str) -> WindowStore:
    """A WindowStore over a fresh connection per call (registering is rare; no connection to keep alive)."""

    def store(vm_uuid: str, window_seconds: int) -> None:
        try:
            connection = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot connect to {uri}: {exc.get_error_message()}") from exc
        try:
            domain = connection.lookupByUUIDString(vm_uuid)
            facts = dataclasses.replace(_current_facts(domain), window_seconds=window_seconds)
            # The persistent definition always; the running one too, so both agree until the next boot. One
            # call per target: libvirt (9.0) fails "failed to create a new XML namespace" given both flags.
            targets = [libvirt.VIR_DOMAIN_AFFECT_CONFIG]
            if domain.isActive():
                targets.append(libvirt.VIR_DOMAIN_AFFECT_LIVE)
            element = _bare(render_facts(facts))
            for target in targets:
                domain.setMetadata(
                    libvirt.VIR_DOMAIN_METADATA_ELEMENT, element, NAMESPACE_PREFIX, NAMESPACE_URI, target
                )
        except libvirt.libvirtError as exc:
            raise HypervisorError(
                f"VM {vm_uuid}: cannot store its window: {exc.get_error_message()}"
            ) from exc
        finally:
            connection.close()

    return store


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
