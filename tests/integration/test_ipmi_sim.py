"""IPMI source against OpenIPMI's ipmi_sim on loopback: an over-critical temperature and a UE SEL event."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitors.detector import Detector, DetectorPolicy, Severity, TemperatureRule
from monitors.ipmi import IpmiSource, PyghmiClient
from monitors.readings import HostSnapshot, SourceResult

pytestmark = pytest.mark.integration

USER, PASSWORD = "evacuator", "sim-only-secret"
SDRS = """
sdr type 18
\tdevice_slave_address\t0x20
\tdevice_channel_number\t0
\tchassis\t\t\ttrue
\tipmb_event_gen\t\tfalse
\tipmb_event_recv\t\tfalse
\tfru_inventory\t\tfalse
\tsel\t\t\ttrue
\tsdr\t\t\ttrue
\tsensor\t\t\ttrue
\tentity_id\t\tsystem_board
\tentity_instance\t\t1
\tid_string\t\t"evacuator bmc"
endsdr

sdr type 1
\tsensor_owner_id\t\t0x20
\tsensor_owner_lun\t0
\tchannel_number\t\t0
\tsensor_number\t\t1
\tentity_id\t\tsystem_board
\tentity_instance\t\t1
\tsensor_type\t\tTemperature
\tinit_scanning\t\ttrue
\tinit_events\t\ttrue
\tinit_thresholds\t\ttrue
\tinit_sensor_type\ttrue
\tdefault_event_gen_on\ttrue
\tdefault_sensor_scan_on\ttrue
\tevent_reading_type_code\t1
\tanalog_data_format\tunsigned
\trate_unit\t\tnone
\tmodifier_unit\t\tnone
\tpercentage\t\tfalse
\tbase_unit\t\tdegrees_C
\tmodifier_unit_code\tunspecified
\tlinearization\t\tlinear
\tm\t\t\t1
\ttolerance\t\t0
\tb\t\t\t0
\taccuracy\t\t1
\taccuracy_exp\t\t0
\tsensor_direction\tinput
\tr_exp\t\t\t0
\tb_exp\t\t\t0
\tsensor_maximum\t\t255
\tsensor_minimum\t\t0
\tsensor_threshold_access\tsettable
\tunc_thrsh_readable\ttrue
\tuc_thrsh_readable\ttrue
\tunr_thrsh_readable\ttrue
\tunc_thresh\t\t80
\tuc_thresh\t\t90
\tunr_thresh\t\t100
\tid_string\t\t"Inlet temp"
endsdr

sdr type 2
\tsensor_owner_id\t\t0x20
\tsensor_owner_lun\t0
\tchannel_number\t\t0
\tsensor_number\t\t3
\tentity_id\t\tmemory_device
\tentity_instance\t\t1
\tinit_scanning\t\ttrue
\tinit_events\t\ttrue
\tinit_sensor_type\ttrue
\tdefault_event_gen_on\ttrue
\tdefault_sensor_scan_on\ttrue
\tsensor_type\t\tMemory
\tevent_reading_type_code\t0x6f
\tid_string\t\t"DIMM A1 ecc"
endsdr
"""
EMU = """mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
sensor_add 0x20 0 1 0x01 0x01
sensor_set_value 0x20 0 1 35 0
sensor_set_threshold 0x20 0 1 settable 111000 100 90 80 00 00 00
sensor_set_event_support 0x20 0 1 enable scanning per-state \\
\t000111111000000 000111111000000 \\
\t000111111000000 000111111000000
sensor_add 0x20 0 3 0x0c 0x6f
sensor_set_event_support 0x20 0 3 enable scanning per-state \\
\t000000000000011 000000000000011 \\
\t000000000000011 000000000000011
mc_enable 0x20
"""


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Bmc:
    """The simulator's LAN port and its console; ipmi_sim exits when its console connection closes."""

    def __init__(self, port: int, console: socket.socket) -> None:
        self.port = port
        self._console = console

    def console(self, *commands: str) -> None:
        """Inject values the way an operator would, through ipmi_sim's console."""
        for line in commands:
            self._console.sendall(line.encode() + b"\n")
        time.sleep(0.2)


@pytest.fixture
def bmc(tmp_path: Path) -> Iterator[Bmc]:
    if shutil.which("ipmi_sim") is None or shutil.which("sdrcomp") is None:
        pytest.fail("ipmi_sim/sdrcomp missing: install the openipmi apt package (scripts/setup does)")
    port, console_port = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
    (tmp_path / "sim.sdrs").write_text(SDRS)
    (tmp_path / "sim.emu").write_text(EMU)
    (tmp_path / "lan.conf").write_text(
        'name "evacsim"\nset_working_mc 0x20\n  startlan 1\n'
        f"    addr 127.0.0.1 {port}\n    priv_limit admin\n"
        "    allowed_auths_callback none md2 md5 straight\n"
        "    allowed_auths_user none md2 md5 straight\n"
        "    allowed_auths_operator none md2 md5 straight\n"
        "    allowed_auths_admin none md2 md5 straight\n"
        "    guid a123456789abcdefa123456789abcdef\n  endlan\n"
        f'  user 2 true "{USER}" "{PASSWORD}" admin 10 none md2 md5 straight\n'
        f"console 127.0.0.1 {console_port}\n"
    )
    sdr_dir = tmp_path / "state" / "ipmi_sim" / "evacsim"
    sdr_dir.mkdir(parents=True)
    subprocess.run(["sdrcomp", "-o", str(sdr_dir / "sdr.20.main"), str(tmp_path / "sim.sdrs")], check=True)
    command = ["ipmi_sim", "-c", "lan.conf", "-f", "sim.emu", "-s", "state", "-n"]
    with (tmp_path / "ipmi_sim.log").open("w") as out:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        console = _connect_console(console_port, process)
        with console:
            yield Bmc(port, console)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _connect_console(port: int, process: subprocess.Popen[bytes]) -> socket.socket:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"ipmi_sim exited with {process.returncode}")
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            time.sleep(0.05)
    pytest.fail("ipmi_sim console did not open within 10 s")


def _source(bmc: Bmc) -> IpmiSource:
    return IpmiSource(PyghmiClient(host="127.0.0.1", port=bmc.port, username=USER, password=PASSWORD))


def _snapshot(result: SourceResult) -> HostSnapshot:
    return HostSnapshot(
        temperatures=result.temperatures, memory_events=result.memory_events, sources=(result.status,)
    )


T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = DetectorPolicy(temperature=TemperatureRule(threshold_celsius=85.0))


def test_bmc_temperature_and_thresholds_are_read(bmc: Bmc) -> None:
    result = _source(bmc).poll()
    (inlet,) = result.temperatures
    assert (inlet.chip, inlet.sensor, inlet.celsius, inlet.source) == ("bmc", "Inlet temp", 35.0, "ipmi")
    assert (inlet.max_celsius, inlet.crit_celsius, inlet.emergency_celsius) == (80.0, 90.0, 100.0)


def test_temperature_over_upper_critical_makes_the_host_severe(bmc: Bmc) -> None:
    source, detector = _source(bmc), Detector(POLICY)
    assert detector.observe(_snapshot(source.poll()), T0).severity is Severity.HEALTHY
    bmc.console("sensor_set_value 0x20 0 1 97 1")
    verdicts = [detector.observe(_snapshot(source.poll()), T0 + timedelta(seconds=10 * i)) for i in (1, 2, 3)]
    assert [v.severity for v in verdicts] == [Severity.HEALTHY, Severity.HEALTHY, Severity.SEVERE]
    reason = verdicts[-1].reasons[0]
    assert (reason.source, reason.sensor, reason.value, reason.threshold) == (
        "ipmi",
        "bmc/Inlet temp",
        97.0,
        85.0,
    )


def test_uncorrectable_ecc_sel_event_is_severe_within_one_poll(bmc: Bmc) -> None:
    source, detector = _source(bmc), Detector(POLICY)
    assert detector.observe(_snapshot(source.poll()), T0).severity is Severity.HEALTHY
    bmc.console("sensor_set_bit 0x20 0 3 1 1 1")
    verdict = detector.observe(_snapshot(source.poll()), T0 + timedelta(seconds=10))
    assert verdict.severity is Severity.SEVERE
    assert verdict.reasons[0].sensor == "DIMM A1 ecc" and verdict.reasons[0].source == "ipmi"


def test_existing_sel_entries_are_a_baseline_not_new_errors(bmc: Bmc) -> None:
    bmc.console("sensor_set_bit 0x20 0 3 1 1 1")
    source = _source(bmc)
    assert source.poll().memory_events == ()
    assert source.poll().memory_events == ()
