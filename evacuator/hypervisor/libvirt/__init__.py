"""The Hypervisor protocol over libvirt: a bounded connection, domains, volumes, their streams, metadata."""
