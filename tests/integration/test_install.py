"""The production install: the wheel, scripts/install into a temporary root, the unit as systemd sees it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# The interpreter production makes its venv from: Debian's, whose python3-libvirt gives the bindings.
DEBIAN_PYTHON = Path("/usr/bin/python3")
RUNTIME_PACKAGES = ("evacuator", "monitors", "notifiers")
# Left out of the copy the wheel is built from (with every hidden entry: .git, .venv, caches, local state).
NOT_SHIPPED = {"tests", "bench", "build", "dist"}
# The exposure README.md quotes (systemd-analyze security): the unit's hardening may only get stronger.
MAX_EXPOSURE = 4.6


@dataclass(frozen=True, slots=True, kw_only=True)
class Installed:
    root: Path
    venv: Path
    version: str
    stderr: str
    stdout: str


def _env() -> dict[str, str]:
    """Nothing of this test's own venv may leak into the installed one."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {key: value for key, value in os.environ.items() if key not in drop}


def _run(args: Sequence[str | Path], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # cwd away from the checkout: `python -c` puts the cwd first on sys.path, and the checkout's evacuator
    # would hide the installed one.
    return subprocess.run([str(arg) for arg in args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def _require_prerequisites() -> None:
    missing = []
    probe = [str(DEBIAN_PYTHON), "-c", "import libvirt, venv, ensurepip"]
    if not DEBIAN_PYTHON.exists() or subprocess.run(probe, capture_output=True, check=False).returncode:
        missing.append(f"{DEBIAN_PYTHON} with python3-libvirt and python3-venv")
    if shutil.which("systemd-analyze") is None:
        missing.append("systemd-analyze")
    if missing:
        pytest.fail(
            f"INSTALL PREREQUISITES MISSING ({', '.join(missing)}). Integration tests need them and are "
            "never skipped: run `bash scripts/setup` as root on Debian 12.",
            pytrace=False,
        )


def _ignore_unshipped(directory: str, names: list[str]) -> set[str]:
    if Path(directory) == REPO:
        return {name for name in names
                if name in NOT_SHIPPED or name.startswith(".") or name.endswith(".egg-info")}  # fmt: skip
    return {name for name in names if name == "__pycache__"}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the working tree without tests or build leftovers: a build in the checkout itself reuses
    its build/ directory, where a module deleted from the source lives on."""
    copy = tmp_path_factory.mktemp("install") / "src"
    shutil.copytree(REPO, copy, symlinks=True, ignore=_ignore_unshipped)
    return copy


@pytest.fixture(scope="module")
def wheel(source: Path) -> Path:
    dist = source.parent / "dist"
    build: list[str | Path] = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, source]
    built = _run(build, cwd=source.parent)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (found,) = dist.glob("evacuator-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Installed:
    _require_prerequisites()
    root = wheel.parent.parent / "root"
    done = _run(["bash", REPO / "scripts" / "install", "--root", root, wheel], cwd=wheel.parent, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # systemd-analyze --root looks for every unit under the root: give it the system's own (targets, ...).
    for system_units in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if system_units.is_dir():
            shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
            break
    # And the one system command the unit names, as every Debian system has it (procps): ExecReload's kill.
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy2("/bin/kill", root / "bin/kill")
    return Installed(root=root, venv=root / "opt/evacuator/venv", version=_wheel_version(wheel),
                     stderr=done.stderr, stdout=done.stdout)  # fmt: skip


def _wheel_version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~; \[]", requirement, maxsplit=1)[0].lower()


def test_wheel_holds_every_runtime_package_and_what_the_install_takes(source: Path, wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for top in RUNTIME_PACKAGES:
        for init in (source / top).rglob("__init__.py"):
            package = init.parent.relative_to(source).as_posix()
            assert f"{package}/__init__.py" in names, f"{package}: list it in pyproject.toml's packages"
    assert not [name for name in names if name.startswith(("tests/", "bench/"))]
    data = f"evacuator-{_wheel_version(wheel)}.data/data/share/evacuator/"
    for shipped in ("evacuator.service", "evacuator.example.yaml", "install"):
        assert data + shipped in names


def test_wheel_requires_no_test_tool(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        meta = archive.read(f"evacuator-{_wheel_version(wheel)}.dist-info/METADATA").decode()
    requires = Parser().parsestr(meta).get_all("Requires-Dist") or []
    always = {_name(req) for req in requires if "extra ==" not in req}
    for_tests = {_name(req) for req in requires if "extra ==" in req}
    assert "libvirt-python" in always
    assert for_tests
    assert not always & for_tests


def test_install_lays_out_venv_unit_config_and_state(installed: Installed) -> None:
    root = installed.root
    modes = {
        "etc/evacuator": 0o750,
        "etc/evacuator/evacuator.yaml": 0o640,
        "var/lib/evacuator": 0o750,
        "usr/local/lib/systemd/system/evacuator.service": 0o644,
    }
    for path, mode in modes.items():
        assert (root / path).stat().st_mode & 0o7777 == mode, path
    example = installed.venv / "share/evacuator/evacuator.example.yaml"
    assert (root / "etc/evacuator/evacuator.yaml").read_bytes() == example.read_bytes()
    assert os.readlink(root / "usr/local/bin/evacuator") == "/opt/evacuator/venv/bin/evacuator"
    unit = (root / "usr/local/lib/systemd/system/evacuator.service").read_text()
    assert "ExecStart=/opt/evacuator/venv/bin/evacuator run " in unit
    for step in ("evacuator check-config", "systemctl enable --now evacuator"):
        assert step in installed.stdout


def test_installed_command_runs_on_debians_libvirt_bindings_without_test_tools(installed: Installed) -> None:
    version = _run([installed.venv / "bin/evacuator", "--version"], cwd=installed.root)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"evacuator {installed.version}"
    show = "import evacuator, libvirt; print(evacuator.__file__); print(libvirt.__file__)"
    where = _run([installed.venv / "bin/python", "-c", show], cwd=installed.root)
    evacuator_file, libvirt_file = where.stdout.split()
    assert Path(evacuator_file).is_relative_to(installed.venv)
    # Nothing compiled: the bindings are the system's, not a build in the venv.
    assert not Path(libvirt_file).is_relative_to(installed.venv)
    local = _run([installed.venv / "bin/python", "-m", "pip", "list", "--local", "--format=freeze"],
                 cwd=installed.root)  # fmt: skip
    own = {line.split("==")[0].lower() for line in local.stdout.splitlines()}
    assert not own & {"pytest", "mypy", "ruff", "hypothesis", "import-linter", "libvirt-python"}, own


def test_installed_example_config_passes_check_config(installed: Installed) -> None:
    config = installed.root / "etc/evacuator/evacuator.yaml"
    checked = _run([installed.venv / "bin/evacuator", "check-config", "--config", config], cwd=installed.root)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{config}: ok")


def test_systemd_verifies_the_installed_unit_and_would_catch_a_missing_command(installed: Installed) -> None:
    verify = ["systemd-analyze", "verify", f"--root={installed.root}", "evacuator.service"]
    verified = _run(verify, cwd=installed.root)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "evacuator.service" not in verified.stdout + verified.stderr
    command = installed.venv / "bin/evacuator"
    command.rename(command.with_name("evacuator.away"))
    try:
        broken = _run(verify, cwd=installed.root)
    finally:
        command.with_name("evacuator.away").rename(command)
    assert broken.returncode != 0
    assert "/opt/evacuator/venv/bin/evacuator is not executable" in broken.stderr


def test_installed_unit_keeps_its_hardening(installed: Installed) -> None:
    unit = installed.root / "usr/local/lib/systemd/system/evacuator.service"
    security = _run(["systemd-analyze", "security", "--offline=yes", unit], cwd=installed.root)
    found = re.search(r"Overall exposure level for evacuator\.service: (\d+\.\d)", security.stdout)
    assert found, security.stdout[-2000:] + security.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE


def test_install_again_keeps_the_config_and_installs_only_a_changed_wheel(installed: Installed,
                                                                          wheel: Path) -> None:  # fmt: skip
    config = installed.root / "etc/evacuator/evacuator.yaml"
    config.write_text(config.read_text() + "# edited by the operator\n")
    # The copy the wheel put in the venv, as an upgrade runs it.
    script = installed.venv / "share/evacuator/install"
    again = _run(["bash", script, "--root", installed.root, wheel], cwd=installed.root, timeout=240)
    assert again.returncode == 0, again.stderr
    assert "installing" not in again.stderr and "making the venv" not in again.stderr, again.stderr
    assert config.read_text().endswith("# edited by the operator\n")

    rebuilt = wheel.parent.parent / "rebuilt" / wheel.name
    rebuilt.parent.mkdir()
    shutil.copy(wheel, rebuilt)
    with zipfile.ZipFile(rebuilt, "a") as archive:  # same version, other bytes: a rebuild
        archive.comment = b"rebuilt"
    upgraded = _run(["bash", script, "--root", installed.root, rebuilt], cwd=installed.root, timeout=240)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"installing {wheel.name}" in upgraded.stderr
    assert "making the venv" not in upgraded.stderr
    assert config.read_text().endswith("# edited by the operator\n")
    assert _run([installed.venv / "bin/evacuator", "--version"], cwd=installed.root).returncode == 0
