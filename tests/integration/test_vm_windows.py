"""A registered window lands in the VM's libvirt metadata on a real host, its owner untouched."""

from __future__ import annotations

import pytest

from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.hypervisor.libvirt.metadata import libvirt_window_store
from evacuator.lab.hosts import LabHost
from evacuator.lab.vms import create_vm

pytestmark = pytest.mark.integration


def test_registered_window_is_stored_in_the_domain_metadata(clean_lab_hosts: tuple[LabHost, ...]) -> None:
    host = clean_lab_hosts[0]
    vm_uuid = create_vm(host.uri, host.pool, name="reg", tenant="acme", window_seconds=600,
                        disk_bytes=1 << 20, data=b"x", mac="52:54:00:e2:e0:09")  # fmt: skip
    libvirt_window_store(host.uri)(vm_uuid, 900)
    with open_libvirt_host(host.name, host.uri, host.pool) as hypervisor:
        vm = hypervisor.find_vm(vm_uuid)
        assert vm is not None
        assert (vm.facts.tenant, vm.facts.window_seconds) == ("acme", 900)
        definition = hypervisor.vm_definition_xml(vm_uuid)
        assert "<evacuator:window_seconds>900</evacuator:window_seconds>" in definition
