"""The one structlog configuration call: JSON under systemd or in a pipe, readable console in a terminal."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping, Sequence
from typing import Any, Literal, TextIO

# structlog imports rich, when it is installed, as it is itself imported (rich.traceback, rich.pretty and
# pygments: 3.5 MiB of the daemon's RSS, 81 modules), only to draw exceptions in its ConsoleRenderer. Here
# format_exc_info turns them into text before any renderer, so that code never runs: rich stays hidden while
# structlog is imported, when this module imports it first (the CLI does). Commands that draw with rich
# (`drain --wait`, the demo) import it later, as always.
if "structlog" not in sys.modules and "rich" not in sys.modules:
    sys.modules["rich"] = None  # type: ignore[assignment]  # None makes `import rich` raise ImportError
    try:
        import structlog
    finally:
        del sys.modules["rich"]

import structlog

LogFormat = Literal["auto", "json", "console"]


def _wants_json(fmt: LogFormat, stream: TextIO) -> bool:
    if fmt != "auto":
        return fmt == "json"
    # journald sets JOURNAL_STREAM for services it captures; a pipe is read by a program, not a person.
    return bool(os.environ.get("JOURNAL_STREAM")) or not stream.isatty()


class _CurrentStderr:
    """Whatever sys.stderr is at the moment of writing, so a replaced stderr (tests, daemons) is honoured."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure_logging(
    fmt: LogFormat = "auto", *, level: str = "info", stream: TextIO | None = None,
    observers: Sequence[structlog.typing.Processor] = (),
) -> None:
    """Configure structlog once for the process; call it from the entry point only. `observers` see every
    event, whatever the level (the daemon's metrics count events a quieter log level does not write)."""
    out: TextIO = stream if stream is not None else _CurrentStderr()  # type: ignore[assignment]
    renderer: structlog.typing.Processor
    if _wants_json(fmt, out):
        renderer = structlog.processors.JSONRenderer()
    else:
        # Plain: the exception is text by now (format_exc_info), whether structlog found rich or not.
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty(),
                                                 exception_formatter=structlog.dev.plain_traceback)
    threshold = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *observers,
            *([_below(threshold)] if observers else []),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        # With observers, every event reaches the processors and _below drops what the level does not write.
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if observers else threshold),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def _below(threshold: int) -> structlog.typing.Processor:
    """Drops an event under `threshold` (after the observers have seen it)."""
    levels = logging.getLevelNamesMapping()

    def drop(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if levels.get(str(event.get("level", "info")).upper(), logging.INFO) < threshold:
            raise structlog.DropEvent
        return event

    return drop
