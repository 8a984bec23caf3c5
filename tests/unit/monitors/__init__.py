"""Unit tests of the monitors package: readers over fake /sys trees and the pure detector."""
