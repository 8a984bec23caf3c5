"""Sensor readers (hwmon, EDAC, rasdaemon, IPMI) and the pure detector that turns them into verdicts."""
