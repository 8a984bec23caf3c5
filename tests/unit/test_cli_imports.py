"""What the CLI and the daemon import: nothing heavy for `--version`, no rich in the daemon, and logging that
still shows a traceback. Each check runs in a fresh interpreter, since this one has imported everything."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def _fresh(code: str) -> dict[str, object]:
    """Runs `code` in a new interpreter; the JSON object it prints last."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          check=True, timeout=120)  # fmt: skip
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_version_loads_no_logging_settings_broker_or_libvirt() -> None:
    found = _fresh("""
        import contextlib, io, json, sys
        from evacuator.cli import main
        with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
            main(["--version"])
        heavy = ("structlog", "pydantic", "yaml", "pika", "libvirt", "apscheduler", "cryptography", "rich")
        print(json.dumps({"loaded": [name for name in heavy if name in sys.modules]}))
    """)
    assert found == {"loaded": []}


def test_daemon_imports_leave_rich_out_and_console_logs_still_show_tracebacks() -> None:
    found = _fresh("""
        import io, json, sys
        import evacuator.cli
        import evacuator.logs
        from evacuator.commands import run  # the daemon's modules, as `evacuator run` imports them
        import structlog
        daemon_loaded = sorted(name for name in ("rich", "pygments") if name in sys.modules)
        out = io.StringIO()
        evacuator.logs.configure_logging("console", stream=out)
        try:
            raise ValueError("boom")
        except ValueError:
            structlog.get_logger("t").error("poll_failed", exc_info=True)
        from rich.console import Console  # `drain --wait` and the demo still draw with it
        print(json.dumps({"daemon_loaded": daemon_loaded, "log": out.getvalue(),
                          "console": Console.__name__}))
    """)
    assert found["daemon_loaded"] == []
    log = str(found["log"])
    assert "poll_failed" in log
    assert "Traceback (most recent call last)" in log
    assert "ValueError: boom" in log
    assert found["console"] == "Console"
