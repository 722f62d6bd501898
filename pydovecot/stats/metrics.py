"""Dovecot's ``metric NAME { filter, group_by }`` blocks: the filter
language, the counting, and the OpenMetrics families Dovecot exports.

An :class:`Event` is what a process emitted (name, fields, duration).  A
:class:`MetricDef` is one config block, parsed and checked at config load
(:func:`parse_metric`); a :class:`Metrics` registry counts events into
them and yields prometheus_client ``Metric`` families named and shaped as
Dovecot 2.3's stats service writes them (``stats-service-openmetrics.c``):

- no ``group_by``: ``dovecot_NAME_total`` and
  ``dovecot_NAME_duration_seconds_total``;
- ``group_by = f1 f2``: one ``_total{f1=…}`` per group, nested groups
  after their parent (``{f1=…,f2=…}``), then ``dovecot_NAME_count`` (every
  matched event); the duration family likewise, ending in ``_sum``;
- ``group_by = … duration:exponential:MIN:MAX:BASE`` or
  ``duration:linear:MIN:MAX:STEP`` (microseconds): a histogram with
  ``_bucket{…,le=…}`` (cumulative), ``_sum`` and ``_count`` per leaf group.

The config parser checks blocks with :func:`parse_metric`, so this module
imports prometheus_client only where it renders (in the stats process).

Trusts: the config for the blocks.  Events come from unprivileged
processes: field values are cut to :data:`MAX_VALUE` characters, and a
metric keeps at most :data:`MAX_GROUPS` groups (further ones are dropped
and counted).
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.core import Metric

#: Longest field value kept (label values included).
MAX_VALUE = 256
#: Groups one metric may hold (each level of group_by counts).
MAX_GROUPS = 1000
#: Most histogram buckets one group_by may ask for.
MAX_BUCKETS = 64

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

COUNT_HELP = "Total number of all events of this kind"
DURATION_HELP = "Total duration of all events of this kind"
HISTOGRAM_HELP = "Histogram"


class FilterError(ValueError):
    """A ``filter`` or ``group_by`` that does not parse; the message says why."""


@dataclass
class Event:
    """One event: its name, fields (str or int) and duration in µs."""

    name: str
    fields: dict[str, str | int] = field(default_factory=dict)
    duration_us: int = 0
    categories: tuple[str, ...] = ()

    def value(self, key: str) -> str | int | None:
        if key == "duration":
            return self.duration_us
        return self.fields.get(key)


# -- the filter language ------------------------------------------------------

_TOKEN_RE = re.compile(r"""
    \s*(?:
      (?P<lparen>\() | (?P<rparen>\)) |
      (?P<op><=|>=|=|<|>) |
      "(?P<quoted>(?:[^"\\]|\\.)*)" |
      (?P<word>[^\s()"<>=]+)
    )""", re.VERBOSE)

_OPS = ("=", "<", ">", "<=", ">=")


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            raise FilterError(f"unexpected character {text[pos:].strip()[:1]!r}")
        pos = m.end()
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "quoted":
            value = re.sub(r"\\(.)", r"\1", value)
        elif kind == "word" and value.upper() in ("AND", "OR", "NOT"):
            kind = value.upper()
        out.append((kind, value))
    return out


class Node:
    """A filter expression; ``matches(event)``."""

    def matches(self, event: Event) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class And(Node):
    left: Node
    right: Node

    def matches(self, event: Event) -> bool:
        return self.left.matches(event) and self.right.matches(event)


@dataclass
class Or(Node):
    left: Node
    right: Node

    def matches(self, event: Event) -> bool:
        return self.left.matches(event) or self.right.matches(event)


@dataclass
class Not(Node):
    inner: Node

    def matches(self, event: Event) -> bool:
        return not self.inner.matches(event)


@dataclass
class Compare(Node):
    """``key OP value``: ``event`` (the name, case-sensitive wildcards),
    ``category``, or a field (case-insensitive wildcards; numbers compare
    as numbers, ``duration`` in microseconds)."""

    key: str
    op: str
    value: str

    def __post_init__(self) -> None:
        if self.op != "=":
            if self.key in ("event", "category"):
                raise FilterError(f"{self.key} can only be compared with '='")
            try:
                self.number = int(self.value)
            except ValueError:
                raise FilterError(f"{self.key}{self.op}{self.value}: '{self.op}' needs "
                                  "a number") from None
        self.wild = "*" in self.value or "?" in self.value
        self.lower = self.value.lower()

    def matches(self, event: Event) -> bool:
        if self.key == "event":
            return fnmatch.fnmatchcase(event.name, self.value) if self.wild else (
                event.name == self.value)
        if self.key == "category":
            return any(fnmatch.fnmatchcase(c, self.value) for c in event.categories)
        have = event.value(self.key)
        if have is None:
            return False
        if self.op != "=":
            try:
                number = int(have)
            except (TypeError, ValueError):
                return False
            return {"<": number < self.number, ">": number > self.number,
                    "<=": number <= self.number, ">=": number >= self.number}[self.op]
        text = str(have).lower()
        return fnmatch.fnmatchcase(text, self.lower) if self.wild else text == self.lower


class _FilterParser:
    def __init__(self, text: str):
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise FilterError("unexpected end of filter")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def parse(self) -> Node:
        node = self.expr()
        if self.pos != len(self.tokens):
            raise FilterError(f"unexpected {self.tokens[self.pos][1]!r}")
        return node

    def expr(self) -> Node:
        node = self.term()
        while self.peek() == "OR":
            self.take()
            node = Or(node, self.term())
        return node

    def term(self) -> Node:
        node = self.factor()
        while self.peek() == "AND":
            self.take()
            node = And(node, self.factor())
        return node

    def factor(self) -> Node:
        kind, value = self.take()
        if kind == "NOT":
            return Not(self.factor())
        if kind == "lparen":
            node = self.expr()
            if self.take()[0] != "rparen":
                raise FilterError("missing ')'")
            return node
        if kind not in ("word", "quoted"):
            raise FilterError(f"expected a key, got {value!r}")
        op_kind, op = self.take()
        if op_kind != "op":
            raise FilterError(f"expected '=', '<' or '>' after {value!r}")
        value_kind, operand = self.take()
        if value_kind not in ("word", "quoted", "AND", "OR", "NOT"):
            raise FilterError(f"expected a value after {value}{op}")
        return Compare(value, op, operand)


def parse_filter(text: str) -> Node:
    """A Dovecot 2.3 event filter (``event=imap_command_finished AND
    (cmd_name=SELECT OR cmd_name=EXAMINE) AND NOT tagged_reply_state=OK``)."""
    if not text.strip():
        raise FilterError("empty filter")
    return _FilterParser(text).parse()


# -- group_by --------------------------------------------------------------


@dataclass
class Histogram:
    """``duration:exponential:MIN:MAX:BASE`` / ``duration:linear:MIN:MAX:STEP``."""

    bounds_us: list[int]

    @classmethod
    def parse(cls, spec: str) -> Histogram:
        parts = spec.split(":")
        if len(parts) != 5 or parts[1] not in ("exponential", "linear"):
            raise FilterError(f"group_by {spec}: expected duration:exponential:MIN:MAX:BASE "
                              "or duration:linear:MIN:MAX:STEP")
        try:
            low, high, step = (int(p) for p in parts[2:])
        except ValueError:
            raise FilterError(f"group_by {spec}: MIN, MAX and BASE/STEP are integers") from None
        if parts[1] == "exponential":
            if step < 2 or low < 0 or high < low or high - low >= MAX_BUCKETS:
                raise FilterError(f"group_by {spec}: needs BASE >= 2 and 0 <= MIN <= MAX")
            return cls([step ** e for e in range(low, high + 1)])
        if step < 1 or low < 0 or high < low or (high - low) // step >= MAX_BUCKETS:
            raise FilterError(f"group_by {spec}: needs STEP >= 1, 0 <= MIN <= MAX and at most "
                              f"{MAX_BUCKETS} buckets")
        return cls(list(range(low, high + 1, step)))


@dataclass
class MetricDef:
    """One ``metric NAME { }`` block, checked."""

    name: str
    filter_text: str
    filter: Node
    group_by: list[str]
    histogram: Histogram | None = None

    @property
    def family(self) -> str:
        return "dovecot_" + self.name


def parse_metric(name: str, values: dict[str, str]) -> MetricDef:
    """The block's settings (``filter``, ``group_by``; ``fields`` and
    ``exporter`` are Dovecot's event-export settings and change nothing
    here); FilterError if they don't parse."""
    if not _NAME_RE.match(name):
        raise FilterError(f"metric {name}: the name must be letters, digits and '_'")
    text = values.get("filter", "")
    if not text.strip():
        raise FilterError(f"metric {name}: filter is missing")
    try:
        node = parse_filter(text)
    except FilterError as e:
        raise FilterError(f"metric {name}: filter: {e}") from None
    group_by, histogram = [], None
    items = values.get("group_by", "").split()
    for i, item in enumerate(items):
        if ":" in item and item.split(":", 1)[0] == "duration" and item != "duration:discrete":
            if i != len(items) - 1:
                raise FilterError(f"metric {name}: group_by {item}: a duration histogram "
                                  "must come last")
            histogram = Histogram.parse(item)
            continue
        key = item.split(":", 1)[0]
        if item.count(":") and not item.endswith(":discrete"):
            raise FilterError(f"metric {name}: group_by {item}: only FIELD, FIELD:discrete and "
                              "duration histograms are supported")
        if not _NAME_RE.match(key) or key == "le":
            raise FilterError(f"metric {name}: group_by {item}: not a valid label name")
        group_by.append(key)
    return MetricDef(name, text, node, group_by, histogram)


# -- counting --------------------------------------------------------------


class _Group:
    __slots__ = ("count", "duration_us", "children", "buckets")

    def __init__(self, buckets: int = 0):
        self.count = 0
        self.duration_us = 0
        self.children: dict[str, _Group] = {}
        self.buckets = [0] * buckets if buckets else None


class MetricState:
    """One metric's counts: a tree of groups, in first-seen order."""

    def __init__(self, definition: MetricDef):
        self.definition = definition
        self.root = _Group()
        self.groups = 0
        self.dropped = 0

    def add(self, event: Event) -> None:
        d = self.definition
        self.root.count += 1
        self.root.duration_us += event.duration_us
        node = self.root
        values = []
        for key in d.group_by:
            value = event.value(key)
            if value is None:
                break  # as Dovecot: grouped down to the first missing field
            values.append(str(value)[:MAX_VALUE])
        if d.histogram is not None and len(values) < len(d.group_by):
            return  # a histogram has leaves only
        buckets = len(d.histogram.bounds_us) + 1 if d.histogram else 0
        for depth, value in enumerate(values):
            child = node.children.get(value)
            if child is None:
                if self.groups >= MAX_GROUPS:
                    self.dropped += 1
                    return
                leaf = depth == len(d.group_by) - 1
                child = node.children[value] = _Group(buckets if leaf else 0)
                self.groups += 1
            node = child
            if d.histogram is None:
                node.count += 1
                node.duration_us += event.duration_us
        if d.histogram is not None:
            if node is not self.root:
                node.count += 1
                node.duration_us += event.duration_us
            if node.buckets is None:
                node.buckets = [0] * buckets
            index = next((i for i, b in enumerate(d.histogram.bounds_us)
                          if event.duration_us <= b), len(d.histogram.bounds_us))
            node.buckets[index] += 1

    # -- exposition --------------------------------------------------------

    def families(self) -> Iterator[Metric]:
        from prometheus_client.core import Metric  # the stats process has it loaded

        d = self.definition
        if d.histogram is not None:
            yield self._histogram()
            return
        count = Metric(d.family, COUNT_HELP, "counter")
        duration = Metric(d.family + "_duration_seconds", DURATION_HELP, "counter")
        if not d.group_by:
            count.add_sample(d.family + "_total", {}, self.root.count)
            duration.add_sample(d.family + "_duration_seconds_total", {},
                                self.root.duration_us / 1e6)
        else:
            for labels, group in self._walk(self.root, {}, leaves_only=False):
                count.add_sample(d.family + "_total", labels, group.count)
                duration.add_sample(d.family + "_duration_seconds_total", labels,
                                    group.duration_us / 1e6)
            count.add_sample(d.family + "_count", {}, self.root.count)
            duration.add_sample(d.family + "_duration_seconds_sum", {},
                                self.root.duration_us / 1e6)
        yield count
        yield duration

    def _walk(self, group: _Group, labels: dict[str, str], leaves_only: bool, depth: int = 0):
        keys = self.definition.group_by
        for value, child in group.children.items():
            child_labels = {**labels, keys[depth]: value}
            if not leaves_only or depth == len(keys) - 1:
                yield child_labels, child
            yield from self._walk(child, child_labels, leaves_only, depth + 1)

    def _histogram(self) -> Metric:
        from prometheus_client.core import Metric

        d = self.definition
        assert d.histogram is not None
        metric = Metric(d.family, HISTOGRAM_HELP, "histogram")
        if d.group_by:
            leaves = list(self._walk(self.root, {}, leaves_only=True))
        else:
            leaves = [({}, self.root)]
        bounds = d.histogram.bounds_us
        for labels, group in leaves:
            buckets = group.buckets or [0] * (len(bounds) + 1)
            total = 0
            for bound, n in zip([*bounds, None], buckets, strict=True):
                total += n
                le = "+Inf" if bound is None else f"{bound / 1e6:.6f}"
                metric.add_sample(d.family + "_bucket", {**labels, "le": le}, total)
            if group.count:  # Dovecot writes no _sum/_count for an empty one
                metric.add_sample(d.family + "_sum", labels, group.duration_us / 1e6)
                metric.add_sample(d.family + "_count", labels, group.count)
        return metric


class Metrics:
    """The configured metrics; :meth:`add` counts an event into each one
    whose filter matches."""

    def __init__(self, definitions: list[MetricDef]):
        self.states = [MetricState(d) for d in definitions]
        self.events = 0
        self.start_time = int(time.time())

    @classmethod
    def from_config(cls, blocks: dict[str, dict[str, str]]) -> Metrics:
        return cls([parse_metric(name, values) for name, values in blocks.items()])

    def add(self, event: Event) -> None:
        self.events += 1
        for state in self.states:
            if state.definition.filter.matches(event):
                state.add(event)

    def families(self) -> Iterator[Metric]:
        for state in self.states:
            yield from state.families()

    @property
    def dropped_groups(self) -> int:
        return sum(s.dropped for s in self.states)
