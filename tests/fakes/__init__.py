"""Hand-written test doubles for the seams of evacuator, each recording what it was asked and able to fail
on demand: hypervisor (FakeHypervisor), notifier, timers (ManualTimers), windows, outcomes, rabbitmqctl (a
script to pass as `--rabbitmqctl`). No production module imports them (import-linter checks it)."""
