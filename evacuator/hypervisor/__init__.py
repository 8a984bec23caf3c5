"""What a hypervisor host is to the evacuator: the Protocol the movers drive, its value types, the VM's own
facts in its domain metadata, and (in `libvirt/`) the adapter over libvirt."""
