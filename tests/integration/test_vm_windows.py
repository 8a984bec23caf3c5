"""A registered window lands in the VM's libvirt metadata on a real host, its owner untouched."""

from __future__ import annotations

import pytest

from evacuator.errors import HypervisorError
from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.lab.hosts import LabHost
from evacuator.lab.vms import create_vm

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("running", [True, False], ids=["running", "shut_off"])
def test_registered_window_is_stored_in_the_domain_metadata(
    clean_lab_hosts: tuple[LabHost, ...], running: bool
) -> None:
    host = clean_lab_hosts[0]
    vm_uuid = create_vm(host.uri, host.pool, name="reg", tenant="acme", window_seconds=600,
                        disk_bytes=1 << 20, data=b"x", mac="52:54:00:e2:e0:09", start=running)  # fmt: skip
    with open_libvirt_host(host.name, host.uri, host.pool) as daemons_host:
        daemons_host.store_window(vm_uuid, 900)
    # Read back over a connection of its own: the window is in libvirt, not in the writer's memory.
    with open_libvirt_host(host.name, host.uri, host.pool) as hypervisor:
        vm = hypervisor.find_vm(vm_uuid)  # the running definition, when the VM runs
        assert vm is not None
        assert (vm.facts.tenant, vm.facts.window_seconds) == ("acme", 900)
        definition = hypervisor.vm_definition_xml(vm_uuid)  # the persistent one
        assert "<evacuator:window_seconds>900</evacuator:window_seconds>" in definition
        assert "<evacuator:tenant>acme</evacuator:tenant>" in definition


def test_a_window_for_a_vm_the_host_does_not_have_is_a_hypervisor_error(
    clean_lab_hosts: tuple[LabHost, ...],
) -> None:
    host = clean_lab_hosts[0]
    with (
        open_libvirt_host(host.name, host.uri, host.pool) as hypervisor,
        pytest.raises(HypervisorError, match="no VM with uuid"),
    ):
        hypervisor.store_window("00000000-0000-4000-8000-000000000000", 900)
