"""Hand-written test doubles for the seams of evacuator (hypervisor, notifier, timers, outcomes)."""
