"""doveadm's output formatters: ``table``, ``flow``, ``tab``, ``json``, ``pager``.

Each takes a result's headers (``{"key", "title", "flags"}``) and rows of
string values and writes them exactly as doveadm 2.3's formatters do:

- ``table``: up to 100 rows are buffered to size the columns (each the
  widest of its title and values), shrunk from the right to fit the
  terminal (80 columns when stdout is no terminal), the slack halved onto
  the ``expand`` column (else the last); a line of titles first (unless
  every title is hidden), values separated by one space, each padded
  (right-justified where flagged).
- ``flow``: one row per line, ``title=value`` separated by spaces (the
  value alone for a hidden title).
- ``tab``: the titles, tab-separated, then each row.
- ``json``: ``[{"key":"value",…},…]`` on one line, no newline after it;
  ``number`` columns unquoted.
- ``pager``: ``title: value`` per line, records separated by ``\\f``.
- ``formatted`` (a verb's own default only, as ``log errors``): each row
  through a ``%{key}`` template.

Trusts: nothing; values are written as given (they are the admin's own).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from typing import TextIO

from pydovecot.admin.protocol import EXPAND, HIDE_TITLE, NUMBER, RIGHT

DEFAULT_COLUMNS = 80


class FormatterError(ValueError):
    """The rows cannot be printed this way (doveadm's i_fatal)."""

MIN_COLUMNS = 30
MAX_BUFFER_LINES = 100


def _has(header: dict, flag: str) -> bool:
    return flag in header.get("flags", ())


def terminal_columns(stream: TextIO) -> int:
    """The terminal's width if ``stream`` is one (at least 30), else 80."""
    try:
        cols = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return DEFAULT_COLUMNS
    return max(cols, MIN_COLUMNS)


def table_widths(headers: list[dict], rows: list[list[str]], columns: int) -> list[int]:
    """Column widths as doveadm_calc_header_length computes them."""
    count = len(headers)
    min_len = [len(h["title"]) for h in headers]
    max_len = list(min_len)
    length = list(min_len)
    for row in rows:
        for i in range(count):
            n = len(row[i]) if i < len(row) and row[i] is not None else 0
            if min_len[i] > n:
                min_len[i] = n
            if max_len[i] < n:
                max_len[i] = length[i] = n
    total = sum(m + 1 for m in max_len) - 1
    while total > columns:
        orig = total
        for i in range(count - 1, -1, -1):
            diff = length[i] - min_len[i]
            if total - diff <= columns:
                diff = total - columns
                length[i] -= diff
                total -= diff
                break
            if diff > 0:
                length[i] -= 1 if diff == 1 else diff // 2
        if total == orig:
            break
    if total < columns and count:
        target = count - 1
        for i, h in enumerate(headers):
            if _has(h, EXPAND):
                target = i
                break
        length[target] += (columns - total) // 2
    return length


def _pad(value: str, width: int, right: bool) -> str:
    # printf("%-*s"): pads, never truncates
    return value.rjust(width) if right else value.ljust(width)


def print_table(headers: list[dict], rows: list[list[str]], out: TextIO, err: TextIO,
                hide_titles: bool = False, columns: int | None = None) -> None:
    if not headers:
        return
    if any("\n" in (v or "") for row in rows for v in row):
        raise FormatterError("table formatter doesn't support multi-line values")
    cols = terminal_columns(out) if columns is None else columns
    widths = table_widths(headers, rows[:MAX_BUFFER_LINES], cols)
    if not hide_titles and not all(_has(h, HIDE_TITLE) for h in headers):
        out.write(" ".join(_pad(h["title"], w, _has(h, RIGHT))
                           for h, w in zip(headers, widths, strict=False)) + "\n")
    for row in rows:
        out.write(" ".join(_pad(v or "", w, _has(h, RIGHT))
                           for h, w, v in zip(headers, widths, row, strict=False)) + "\n")


def print_flow(headers: list[dict], rows: list[list[str]], out: TextIO, err: TextIO,
               hide_titles: bool = False) -> None:
    for row in rows:
        out.write(" ".join(v if _has(h, HIDE_TITLE) else f"{h['title']}={v}"
                           for h, v in zip(headers, row, strict=False)) + "\n")


def print_tab(headers: list[dict], rows: list[list[str]], out: TextIO, err: TextIO,
              hide_titles: bool = False) -> None:
    if not headers:
        return
    if not hide_titles:
        out.write("\t".join(h["title"] for h in headers) + "\n")
    for row in rows:
        out.write("\t".join(row) + "\n")


def print_json(headers: list[dict], rows: list[list[str]], out: TextIO, err: TextIO,
               hide_titles: bool = False) -> None:
    parts = []
    for row in rows:
        fields = []
        for h, v in zip(headers, row, strict=False):
            key = json.dumps(h["key"], ensure_ascii=False)
            if v is None:
                value = "null"
            elif _has(h, NUMBER):
                value = v
            else:
                value = _json_string(v)
            fields.append(f"{key}:{value}")
        parts.append("{" + ",".join(fields) + "}")
    out.write("[" + ",".join(parts) + "]")


def _json_string(value: str) -> str:
    """As Dovecot's json_append_escaped: \\b \\f \\n \\r \\t \\" \\\\ and
    \\u00XX for other control characters; non-ASCII kept as UTF-8."""
    return json.dumps(value, ensure_ascii=False)


def print_pager(headers: list[dict], rows: list[list[str]], out: TextIO, err: TextIO,
                hide_titles: bool = False) -> None:
    first = True
    for row in rows:
        for i, (h, v) in enumerate(zip(headers, row, strict=False)):
            if i == 0 and not first:
                out.write("\f\n")
            first = False
            if h.get("stream"):
                # a streamed value (a message body): "title:\n" then the bytes
                if not _has(h, HIDE_TITLE):
                    out.write(f"{h['title']}:\n")
                out.write(v)
                continue
            if not _has(h, HIDE_TITLE):
                out.write(f"{h['title']}: ")
            out.write(v + "\n")


def print_formatted(headers: list[dict], rows: list[list[str]], out: TextIO, err: TextIO,
                    hide_titles: bool = False, template: str = "") -> None:
    """doveadm's ``formatted``: each row through a ``%{key}`` template."""
    for row in rows:
        values = {h["key"]: v for h, v in zip(headers, row, strict=False)}
        out.write(re.sub(r"%\{([^}]*)\}", lambda m, vals=values: vals.get(m[1], ""),
                         template))


FORMATTERS: dict[str, Callable[..., None]] = {
    "table": print_table,
    "flow": print_flow,
    "tab": print_tab,
    "json": print_json,
    "pager": print_pager,
}


def write(name: str, headers: list[dict], rows: list[list[str]], out: TextIO, err: TextIO,
          hide_titles: bool = False, template: str = "") -> None:
    """Print rows through formatter ``name`` (a KeyError for an unknown
    one); ``formatted`` takes the verb's ``template``."""
    if name == "formatted":
        print_formatted(headers, rows, out, err, hide_titles, template)
    else:
        FORMATTERS[name](headers, rows, out, err, hide_titles=hide_titles)
    out.flush()


def formatter_names() -> list[str]:
    return sorted(FORMATTERS)


def tty_width(default: int = DEFAULT_COLUMNS) -> int:
    return shutil.get_terminal_size((default, 24)).columns
