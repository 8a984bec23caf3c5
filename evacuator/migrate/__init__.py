"""The steps of one move between two hypervisors: cold (with a pre-copy while the guest shuts down), live, and
a consistency group's joint shutdown; each step re-reads where the VM really is."""
