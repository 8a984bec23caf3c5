"""EDAC reader over fake /sys trees: controllers, dimm/rank directories, legacy csrows, broken counters."""

from __future__ import annotations

import errno
from pathlib import Path

from monitors.edac import read_edac
from tests.unit.monitors.fakes import FakeSysfsReader

SYSFS = Path(__file__).resolve().parents[2] / "data" / "sysfs"


def test_intel_controllers_with_dimm_directories() -> None:
    snapshot = read_edac(SYSFS / "intel-2s")
    assert [(m.controller, m.mc_name, m.ce_count, m.ue_count) for m in snapshot.memory_controllers] == [
        ("mc0", "Skylake Socket#0 IMC#0", 3, 0),
        ("mc1", "Skylake Socket#1 IMC#0", 0, 0),
    ]
    dimm1 = snapshot.memory_controllers[0].dimms[1]
    assert (dimm1.dimm, dimm1.label, dimm1.ce_count, dimm1.ue_count) == (
        "dimm1",
        "CPU_SrcID#0_MC#0_Chan#1_DIMM#0",
        3,
        0,
    )
    assert snapshot.memory_controllers[0].csrows == ()


def test_amd_legacy_csrows_with_channels_and_ranks() -> None:
    mc1 = read_edac(SYSFS / "amd-epyc").memory_controllers[1]
    row0 = mc1.csrows[0]
    assert (row0.csrow, row0.ce_count, row0.ue_count) == ("csrow0", 7, 1)
    assert [(c.channel, c.ce_count, c.dimm_label) for c in row0.channels] == [
        ("ch0", 5, "P1_DIMM_A0"),
        ("ch1", 2, "P1_DIMM_B0"),
    ]
    assert [d.dimm for d in mc1.dimms] == ["rank0", "rank1", "rank2", "rank3"]


def test_garbage_counter_is_none_with_a_fault_and_the_rest_reads() -> None:
    snapshot = read_edac(SYSFS / "faulty")
    (mc0,) = snapshot.memory_controllers
    assert (mc0.ce_count, mc0.ue_count, mc0.dimms[0].ce_count) == (2, None, 2)
    assert [(Path(f.path).name, f.reason) for f in snapshot.faults] == [
        ("ue_count", "not an integer: 'lots'")
    ]


def test_eio_on_one_dimm_keeps_the_others() -> None:
    reader = FakeSysfsReader()
    reader.inject_error("mc0/dimm2/dimm_ce_count", errno.EIO)
    snapshot = read_edac(SYSFS / "intel-2s", reader=reader)
    counts = [d.ce_count for d in snapshot.memory_controllers[0].dimms]
    assert counts == [0, 3, None, 0]
    assert [f.reason for f in snapshot.faults] == ["read failed (EIO)"]


def test_no_edac_driver_is_an_empty_snapshot(tmp_path: Path) -> None:
    snapshot = read_edac(tmp_path)
    assert snapshot.memory_controllers == () and snapshot.faults == ()


def test_cached_reader_sees_counter_changes_and_vanished_controllers(tmp_path: Path) -> None:
    import shutil

    from monitors.edac import EdacReader

    root = tmp_path / "intel-2s"
    shutil.copytree(SYSFS / "intel-2s", root, symlinks=True)
    reader = EdacReader(root)
    reader.read()
    mc1 = root / "devices/system/edac/mc/mc1"
    (mc1 / "ue_count").write_text("1\n")
    assert reader.read().memory_controllers[1].ue_count == 1
    shutil.rmtree(mc1)
    snapshot = reader.read()
    assert [m.controller for m in snapshot.memory_controllers] == ["mc0"]
