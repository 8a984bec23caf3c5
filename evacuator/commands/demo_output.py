"""Where the demo writes: its story to a terminal (rich) or a pipe (plain lines), every log event to one
JSON lines file."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from evacuator.commands.demo_story import Line, Teller, Tone

_WHO_WIDTH = 7
_STYLES = {Tone.PLAIN: "", Tone.STEP: "cyan", Tone.GOOD: "green", Tone.WARN: "yellow", Tone.BAD: "bold red"}
_WHO_STYLES = {"host-a": "magenta", "host-b": "blue", "tenant": "green", "lab": "dim"}


def _clock(line: Line) -> str:
    return line.at.strftime("%H:%M:%S.") + f"{line.at.microsecond // 100_000}"


class PlainTeller:
    """One line per step, a fixed-width table: for a pipe, a CI log or a test."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def say(self, line: Line) -> None:
        self._out.write(f"{_clock(line)}  {line.who:<{_WHO_WIDTH}} {line.text}\n")
        self._out.flush()

    def note(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def table(self, title: str, columns: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
        widths = [max(len(cell) for cell in column) for column in zip(columns, *rows, strict=True)]
        self._out.write(f"\n{title}\n")
        for cells in (columns, tuple("-" * width for width in widths), *rows):
            self._out.write("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() + "\n")
        self._out.flush()


class RichTeller:
    """The same story in colour on a terminal, the closing table drawn by rich."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def say(self, line: Line) -> None:
        text = Text()  # each part its own style: a style given here would be every part's
        text.append(_clock(line) + "  ", style="dim")
        text.append(f"{line.who:<{_WHO_WIDTH}} ", style=_WHO_STYLES.get(line.who, "bold"))
        text.append(line.text, style=_STYLES[line.tone])
        self._console.print(text, highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        self._console.print(text, highlight=False, soft_wrap=True)

    def table(self, title: str, columns: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
        self._console.print()
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(Text(c, style="red" if c in ("no", "FAILED") else "") for c in row))
        self._console.print(table)


def teller_for(out: TextIO) -> Teller:
    """rich on a terminal, plain lines anywhere else (a pipe is read by a program or kept as a log)."""
    return RichTeller(Console(file=out)) if out.isatty() else PlainTeller(out)


class JsonLog:
    """The demo's full log: every daemon's JSON events and the demo's own, one per line, each with the
    `process` that logged it (host-a, host-b, demo). Thread-safe; a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        self._partial: dict[int, str] = {}  # per thread: print() writes a line and its newline apart

    def __enter__(self) -> JsonLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def line(self, process: str, raw: str) -> dict[str, Any]:
        """Writes one line of `process`'s log; returns it as an event (a line that is not JSON, e.g. a
        traceback, is kept as a `log_line` event)."""
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            parsed = None
        event = parsed if isinstance(parsed, dict) else {"event": "log_line", "line": raw}
        stamped = {"process": process, **event}
        with self._lock:
            if not self._file.closed:
                self._file.write(json.dumps(stamped, default=str) + "\n")
                self._file.flush()
        return stamped

    def stream(self, process: str) -> TextIO:
        """A text stream for structlog's JSON renderer: each whole line it writes becomes `process`'s."""
        return _LineStream(self, process)  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def write_text(self, process: str, text: str) -> None:
        """Text as a stream writes it: each whole line is `process`'s, the rest waits for its newline."""
        key = threading.get_ident()
        pending = self._partial.pop(key, "") + text
        *whole, rest = pending.split("\n")
        if rest:
            self._partial[key] = rest
        for raw in whole:
            if raw:
                self.line(process, raw)


class _LineStream:
    """What structlog's PrintLogger needs of a file (write, flush, isatty), feeding a JsonLog."""

    def __init__(self, log: JsonLog, process: str) -> None:
        self._log = log
        self._process = process

    def write(self, text: str) -> int:
        self._log.write_text(self._process, text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False
