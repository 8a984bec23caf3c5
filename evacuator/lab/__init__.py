"""Test-and-demo laboratory: local libvirt hosts and a broker for one machine."""
