"""Units of issue 11: Dovecot's event filter language, metric blocks and
their naming, the exposition parsed back with prometheus_client's
OpenMetrics parser, batch parsing, the emitter's batching and bounds, the
master's relay, and ``metric { }`` in the config."""

from __future__ import annotations

import json
import os
import tempfile

from prometheus_client.openmetrics.parser import text_string_to_metric_families
from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from pydovecot.config import ConfigError, load_config
from pydovecot.config.parser import Config
from pydovecot.stats import events, metrics, protocol
from pydovecot.stats.http import StatsState, parse_line
from pydovecot.stats.interfaces import IEventEmitter, IStatsSink
from pydovecot.stats.metrics import (
    Event,
    FilterError,
    Histogram,
    Metrics,
    parse_filter,
    parse_metric,
)
from pydovecot.stats.relay import StatsRelay


def ev(name="imap_command_finished", duration_us=0, **fields) -> Event:
    return Event(name, fields, duration_us)


class FilterLanguage(unittest.TestCase):
    def check(self, text: str, event: Event) -> bool:
        return parse_filter(text).matches(event)

    def test_event_name(self):
        e = ev(cmd_name="SELECT")
        self.assertTrue(self.check("event=imap_command_finished", e))
        self.assertFalse(self.check("event=imap_command", e))
        self.assertTrue(self.check("event=imap_*", e))
        self.assertTrue(self.check("event=imap_command_finishe?", e))
        self.assertFalse(self.check("event=IMAP_COMMAND_FINISHED", e))  # names are exact

    def test_fields(self):
        e = ev(cmd_name="SELECT", tagged_reply_state="OK")
        self.assertTrue(self.check("cmd_name=SELECT", e))
        self.assertTrue(self.check("cmd_name=select", e))  # values: case-insensitive
        self.assertTrue(self.check("cmd_name=SEL*", e))
        self.assertTrue(self.check('cmd_name="SELECT"', e))
        self.assertFalse(self.check("cmd_name=EXAMINE", e))
        self.assertFalse(self.check("user=alice", e))  # a missing field never matches
        self.assertTrue(self.check("NOT user=alice", e))

    def test_boolean_operators(self):
        e = ev(cmd_name="SELECT", tagged_reply_state="NO")
        text = ("event=imap_command_finished AND (cmd_name=LOGOUT OR cmd_name=select) "
                "AND NOT tagged_reply_state=OK")
        self.assertTrue(self.check(text, e))
        self.assertFalse(self.check(text, ev(cmd_name="SELECT", tagged_reply_state="OK")))
        # AND binds tighter than OR
        self.assertTrue(self.check("cmd_name=LOGOUT AND user=x OR cmd_name=SELECT", e))
        self.assertFalse(self.check("cmd_name=LOGOUT AND (user=x OR cmd_name=SELECT)", e))
        self.assertTrue(self.check("not not cmd_name=SELECT", e))  # keywords any case

    def test_numbers_and_duration(self):
        e = ev(duration_us=1500, bytes=10)
        self.assertTrue(self.check("duration>1000", e))
        self.assertTrue(self.check("duration>=1500 AND duration<=1500", e))
        self.assertFalse(self.check("duration<1000", e))
        self.assertTrue(self.check("bytes<11", e))
        self.assertTrue(self.check("bytes=10", e))
        self.assertFalse(self.check("cmd_name>1", ev(cmd_name="SELECT")))

    def test_category(self):
        e = Event("x", {}, 0, ("imap", "mail"))
        self.assertTrue(self.check("category=mail", e))
        self.assertFalse(self.check("category=auth", e))

    def test_errors(self):
        for text in ("", "event=", "event=a AND", "(event=a", "event=a)", "event a",
                     "duration>abc", "event>1", "event=a OR OR b=1", 'cmd_name="x'):
            with self.assertRaises(FilterError, msg=text):
                parse_filter(text)


class MetricBlocks(unittest.TestCase):
    def test_naming(self):
        d = parse_metric("imap_command", {"filter": "event=imap_command_finished",
                                          "group_by": "cmd_name tagged_reply_state"})
        self.assertEqual(d.family, "dovecot_imap_command")
        self.assertEqual(d.group_by, ["cmd_name", "tagged_reply_state"])
        self.assertIsNone(d.histogram)

    def test_histograms(self):
        self.assertEqual(Histogram.parse("duration:exponential:1:5:10").bounds_us,
                         [10, 100, 1000, 10000, 100000])
        self.assertEqual(Histogram.parse("duration:linear:100:1000:300").bounds_us,
                         [100, 400, 700, 1000])
        d = parse_metric("h", {"filter": "event=a", "group_by": "cmd_name duration:linear:1:3:1"})
        self.assertEqual((d.group_by, d.histogram.bounds_us), (["cmd_name"], [1, 2, 3]))

    def test_refused(self):
        for name, values in (
                ("bad-name", {"filter": "event=a"}),
                ("m", {}),
                ("m", {"filter": "event=a AND"}),
                ("m", {"filter": "event=a", "group_by": "duration:linear:1:3:1 cmd_name"}),
                ("m", {"filter": "event=a", "group_by": "duration:cubic:1:3:1"}),
                ("m", {"filter": "event=a", "group_by": "duration:exponential:1:3:1"}),
                ("m", {"filter": "event=a", "group_by": "duration:linear:1:100000:1"}),
                ("m", {"filter": "event=a", "group_by": "bytes:exponential:1:3:10"}),
                ("m", {"filter": "event=a", "group_by": "le"}),
                ("m", {"filter": "event=a", "group_by": "bad-label"})):
            with self.assertRaises(FilterError, msg=(name, values)):
                parse_metric(name, values)


BLOCKS = {
    "auth_success": {"filter": "event=auth_request_finished AND success=yes"},
    "auth_req": {"filter": "event=auth_request_finished", "group_by": "success mechanism"},
    "imap_command": {"filter": "event=imap_command_finished",
                     "group_by": "cmd_name tagged_reply_state"},
    "imap_hist": {"filter": "event=imap_command_finished",
                  "group_by": "cmd_name duration:exponential:1:5:10"},
    "empty_hist": {"filter": "event=nothing", "group_by": "duration:linear:100:300:100"},
}


def exposition(items: list[Event]) -> str:
    state = StatsState(Metrics.from_config(BLOCKS))
    for item in items:
        state.metrics.add(item)
    return state.render().decode()


def parsed(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


SAMPLE_EVENTS = [
    ev("auth_request_finished", 1318, success="yes", mechanism="PLAIN"),
    ev("auth_request_finished", 1637, mechanism="PLAIN"),  # a failure has no success
    ev(duration_us=3005, cmd_name="SELECT", tagged_reply_state="OK"),
    ev(duration_us=53, cmd_name="SELECT", tagged_reply_state="NO"),
    ev(duration_us=30, cmd_name="LOGOUT", tagged_reply_state="OK"),
]


class Exposition(unittest.TestCase):
    def test_dovecot_layout(self):
        """Line for line what Dovecot 2.3.19 writes for these events
        (measured on Debian's), numbers in prometheus_client's format."""
        lines = [x for x in exposition(SAMPLE_EVENTS).splitlines()
                 if not x.startswith(("# HELP pydovecot_", "# TYPE pydovecot_", "pydovecot_"))]
        self.assertEqual(lines[:6], [
            "# HELP process_start_time_seconds Timestamp of service start",
            "# TYPE process_start_time_seconds gauge",
            lines[2],
            "# HELP dovecot_build Dovecot build information",
            "# TYPE dovecot_build info",
            'dovecot_build_info{revision="pydovecot",version="0.1.0"} 1.0'])
        self.assertEqual(lines[6:], """\
# HELP dovecot_auth_success Total number of all events of this kind
# TYPE dovecot_auth_success counter
dovecot_auth_success_total 1.0
# HELP dovecot_auth_success_duration_seconds Total duration of all events of this kind
# TYPE dovecot_auth_success_duration_seconds counter
dovecot_auth_success_duration_seconds_total 0.001318
# HELP dovecot_auth_req Total number of all events of this kind
# TYPE dovecot_auth_req counter
dovecot_auth_req_total{success="yes"} 1.0
dovecot_auth_req_total{mechanism="PLAIN",success="yes"} 1.0
dovecot_auth_req_count 2.0
# HELP dovecot_auth_req_duration_seconds Total duration of all events of this kind
# TYPE dovecot_auth_req_duration_seconds counter
dovecot_auth_req_duration_seconds_total{success="yes"} 0.001318
dovecot_auth_req_duration_seconds_total{mechanism="PLAIN",success="yes"} 0.001318
dovecot_auth_req_duration_seconds_sum 0.002955
# HELP dovecot_imap_command Total number of all events of this kind
# TYPE dovecot_imap_command counter
dovecot_imap_command_total{cmd_name="SELECT"} 2.0
dovecot_imap_command_total{cmd_name="SELECT",tagged_reply_state="OK"} 1.0
dovecot_imap_command_total{cmd_name="SELECT",tagged_reply_state="NO"} 1.0
dovecot_imap_command_total{cmd_name="LOGOUT"} 1.0
dovecot_imap_command_total{cmd_name="LOGOUT",tagged_reply_state="OK"} 1.0
dovecot_imap_command_count 3.0
# HELP dovecot_imap_command_duration_seconds Total duration of all events of this kind
# TYPE dovecot_imap_command_duration_seconds counter
dovecot_imap_command_duration_seconds_total{cmd_name="SELECT"} 0.003058
dovecot_imap_command_duration_seconds_total{cmd_name="SELECT",tagged_reply_state="OK"} 0.003005
dovecot_imap_command_duration_seconds_total{cmd_name="SELECT",tagged_reply_state="NO"} 5.3e-05
dovecot_imap_command_duration_seconds_total{cmd_name="LOGOUT"} 3e-05
dovecot_imap_command_duration_seconds_total{cmd_name="LOGOUT",tagged_reply_state="OK"} 3e-05
dovecot_imap_command_duration_seconds_sum 0.003088
# HELP dovecot_imap_hist Histogram
# TYPE dovecot_imap_hist histogram
dovecot_imap_hist_bucket{cmd_name="SELECT",le="0.000010"} 0.0
dovecot_imap_hist_bucket{cmd_name="SELECT",le="0.000100"} 1.0
dovecot_imap_hist_bucket{cmd_name="SELECT",le="0.001000"} 1.0
dovecot_imap_hist_bucket{cmd_name="SELECT",le="0.010000"} 2.0
dovecot_imap_hist_bucket{cmd_name="SELECT",le="0.100000"} 2.0
dovecot_imap_hist_bucket{cmd_name="SELECT",le="+Inf"} 2.0
dovecot_imap_hist_sum{cmd_name="SELECT"} 0.003058
dovecot_imap_hist_count{cmd_name="SELECT"} 2.0
dovecot_imap_hist_bucket{cmd_name="LOGOUT",le="0.000010"} 0.0
dovecot_imap_hist_bucket{cmd_name="LOGOUT",le="0.000100"} 1.0
dovecot_imap_hist_bucket{cmd_name="LOGOUT",le="0.001000"} 1.0
dovecot_imap_hist_bucket{cmd_name="LOGOUT",le="0.010000"} 1.0
dovecot_imap_hist_bucket{cmd_name="LOGOUT",le="0.100000"} 1.0
dovecot_imap_hist_bucket{cmd_name="LOGOUT",le="+Inf"} 1.0
dovecot_imap_hist_sum{cmd_name="LOGOUT"} 3e-05
dovecot_imap_hist_count{cmd_name="LOGOUT"} 1.0
# HELP dovecot_empty_hist Histogram
# TYPE dovecot_empty_hist histogram
dovecot_empty_hist_bucket{le="0.000100"} 0.0
dovecot_empty_hist_bucket{le="0.000200"} 0.0
dovecot_empty_hist_bucket{le="0.000300"} 0.0
dovecot_empty_hist_bucket{le="+Inf"} 0.0
# EOF""".splitlines())

    def test_parsed_back(self):
        fams = parsed(exposition(SAMPLE_EVENTS))
        self.assertEqual(fams["dovecot_auth_success"].type, "counter")
        self.assertEqual(fams["dovecot_build"].type, "info")
        self.assertEqual(fams["dovecot_imap_hist"].type, "histogram")
        self.assertEqual(fams["pydovecot_connections"].type, "gauge")
        self.assertEqual(fams["pydovecot_service_restarts"].type, "counter")
        hist = {(s.name, s.labels.get("cmd_name"), s.labels.get("le")): s.value
                for s in fams["dovecot_imap_hist"].samples}
        self.assertEqual(hist[("dovecot_imap_hist_count", "SELECT", None)], 2)
        self.assertEqual(hist[("dovecot_imap_hist_bucket", "LOGOUT", "+Inf")], 1)

    def test_gauges_from_master(self):
        state = StatsState(Metrics([]))
        state.set_gauges({"connections": {"imap": 2, "pop3": 0},
                          "mail_processes": {"idle": 1, "assigned": 2},
                          "sessions": {"100": 1, "101": 1}, "restarts": {"auth": 3},
                          "dropped": {"imap-login": 4}})
        state.add_batch("auth", b'["auth_request_finished",5,{}]\nnot json', 2)
        values = {(s.name, tuple(s.labels.items())): s.value
                  for f in text_string_to_metric_families(state.render().decode())
                  for s in f.samples}
        self.assertEqual(values[("pydovecot_connections", (("protocol", "imap"),))], 2)
        self.assertEqual(values[("pydovecot_mail_processes", (("state", "assigned"),))], 2)
        self.assertEqual(values[("pydovecot_mail_process_sessions", (("pid", "101"),))], 1)
        self.assertEqual(values[("pydovecot_service_restarts_total", (("service", "auth"),))],
                         3)
        self.assertEqual(values[("pydovecot_stats_events_total", (("service", "auth"),))], 1)
        dropped = "pydovecot_stats_events_dropped_total"
        self.assertEqual(values[(dropped, (("service", "auth"),))], 3)  # 1 bad + 2 reported
        self.assertEqual(values[(dropped, (("service", "imap-login"),))], 4)

    def test_label_values_escaped_and_bounded(self):
        state = StatsState(Metrics.from_config(
            {"u": {"filter": "event=a", "group_by": "user"}}))
        state.metrics.add(ev("a", user='x"y\\z\n' + "w" * 1000))
        fams = parsed(state.render().decode())
        user = fams["dovecot_u"].samples[0].labels["user"]
        self.assertTrue(user.startswith('x"y\\z\n'))
        self.assertEqual(len(user), metrics.MAX_VALUE)

    def test_groups_bounded(self):
        m = Metrics.from_config({"u": {"filter": "event=a", "group_by": "user"}})
        for i in range(metrics.MAX_GROUPS + 10):
            m.add(ev("a", user=f"u{i}"))
        state = m.states[0]
        self.assertEqual((state.groups, state.dropped), (metrics.MAX_GROUPS, 10))
        self.assertEqual(state.root.count, metrics.MAX_GROUPS + 10)

    def test_partial_groups(self):
        """An event lacking the second group_by field counts in the first
        level only (Dovecot's sub-metrics)."""
        m = Metrics.from_config({"s": {"filter": "event=a", "group_by": "service mechanism"}})
        m.add(ev("a", service="imap"))
        root = m.states[0].root
        self.assertEqual((root.count, root.children["imap"].count), (1, 1))
        self.assertEqual(root.children["imap"].children, {})


class Interfaces(unittest.TestCase):
    def test_implementations(self):
        self.assertTrue(verifyObject(IEventEmitter, events.Emitter(task.Clock())))
        self.assertTrue(verifyObject(IEventEmitter, events.EMITTER))
        self.assertTrue(verifyObject(IStatsSink, StatsState(Metrics([]))))


class BatchLines(unittest.TestCase):
    def test_parse_line(self):
        event = parse_line(events.encode("auth_request_finished", 12,
                                         {"success": "yes", "n": 3, "b": True}))
        self.assertEqual((event.name, event.duration_us, event.fields),
                         ("auth_request_finished", 12, {"success": "yes", "n": 3, "b": "yes"}))
        for bad in (b"", b"[]", b'["a",1]', b'["a","1",{}]', b'["a",-1,{}]', b'[1,1,{}]',
                    b'["a",1,[]]', b'{"a":1}', b"\xff", b'["a",true,{}]'):
            self.assertIsNone(parse_line(bad), bad)
        event = parse_line(b'["a",1,{"x":[1],"y":null,"z":"ok"}]')
        self.assertEqual(event.fields, {"z": "ok"})

    def test_events_only_from_their_service(self):
        state = StatsState(Metrics.from_config({"a": {"filter": "event=auth_request_finished"},
                                                "c": {"filter": "event=auth_client_*"}}))
        auth = events.encode("auth_request_finished", 1, {"success": "yes"})
        client = events.encode("auth_client_request_finished", 1, {})
        self.assertEqual(state.add_batch("imap-login", auth + b"\n" + client), 1)
        self.assertEqual(state.add_batch("mail", auth), 0)
        self.assertEqual(state.add_batch("auth", auth), 1)
        self.assertEqual(state.add_batch("imap-login", events.encode("imap_command_finished",
                                                                     1, {})), 0)
        self.assertEqual([s.root.count for s in state.metrics.states], [1, 1])
        self.assertEqual(state.dropped, {"imap-login": 2, "mail": 1})

    def test_encode_bounds(self):
        line = events.encode("e" * 500, 0, {f"k{i}": "v" * 1000 for i in range(100)})
        name, _, fields = json.loads(line)
        self.assertEqual(len(name), events.MAX_KEY)
        self.assertEqual(len(fields), events.MAX_FIELDS)
        self.assertTrue(all(len(v) == events.MAX_VALUE for v in fields.values()))
        self.assertLess(len(line), protocol.MAX_BATCH)


class FakeChannel:
    """An AMP channel stand-in: records calls, answers when told."""

    def __init__(self):
        self.transport = object()
        self.calls: list[tuple[type, dict, defer.Deferred]] = []

    def callRemote(self, command, **kwargs):
        d = defer.Deferred()
        self.calls.append((command, kwargs, d))
        return d


class EmitterBatching(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.emitter = events.Emitter(self.clock)
        self.channel = FakeChannel()
        self.emitter.attach(self.channel)

    def test_unattached_is_free(self):
        emitter = events.Emitter(self.clock)
        emitter.emit("a", duration=1)
        self.assertEqual((len(emitter.queue), self.clock.getDelayedCalls()), (0, []))

    def test_one_batch_per_turn(self):
        for i in range(5):
            self.emitter.emit("imap_command_finished", duration=0.0015, cmd_name=f"C{i}")
        self.assertEqual(self.channel.calls, [])  # nothing before the turn ends
        self.clock.advance(0)
        self.assertEqual(len(self.channel.calls), 1)
        command, kwargs, _ = self.channel.calls[0]
        self.assertIs(command, protocol.StatsEvents)
        lines = kwargs["batch"].split(b"\n")
        self.assertEqual(len(lines), 5)
        self.assertEqual(json.loads(lines[0]), ["imap_command_finished", 1500, {"cmd_name": "C0"}])
        self.assertEqual(kwargs["dropped"], 0)

    def test_batches_stay_under_the_amp_limit(self):
        for _ in range(400):
            self.emitter.emit("e", value="x" * 250, other="y" * 250)
        self.clock.advance(0)
        self.assertEqual(len(self.channel.calls), events.MAX_IN_FLIGHT)
        for _, kwargs, _ in self.channel.calls:
            self.assertLessEqual(len(kwargs["batch"]), protocol.MAX_BATCH)
        # the rest goes when an answer frees a slot
        self.channel.calls[0][2].callback({"wanted": True})
        self.clock.advance(0)
        self.assertEqual(len(self.channel.calls), events.MAX_IN_FLIGHT + 1)
        self.channel.calls[1][2].callback({"wanted": True})
        self.channel.calls[2][2].callback({"wanted": True})
        self.clock.advance(0)
        sent = sum(k["batch"].count(b"\n") + 1 for _, k, _ in self.channel.calls)
        self.assertEqual(sent, 400)
        self.assertEqual(len(self.emitter.queue), 0)

    def test_full_queue_drops_and_counts(self):
        # the channel never answers: two batches in flight, the queue fills up
        for _ in range(events.MAX_QUEUED * 3):
            self.emitter.emit("e", duration=0)
            if len(self.emitter.queue) == 1:
                self.clock.advance(0)
        self.assertLessEqual(len(self.emitter.queue), events.MAX_QUEUED)
        self.assertGreater(self.emitter.dropped, 0)
        dropped = self.emitter.dropped
        for _, _, d in list(self.channel.calls):
            d.callback({"wanted": True})
        self.clock.advance(0)
        reported = sum(k["dropped"] for _, k, _ in self.channel.calls)
        self.assertEqual(reported, dropped)

    def test_not_wanted_turns_off(self):
        self.emitter.emit("e")
        self.clock.advance(0)
        self.channel.calls[0][2].callback({"wanted": False})
        self.emitter.emit("e")
        self.clock.advance(1)
        self.assertEqual(len(self.channel.calls), 1)
        self.assertFalse(self.emitter.enabled)

    def test_lost_channel(self):
        self.emitter.emit("e")
        self.clock.advance(0)
        self.channel.calls[0][2].errback(ConnectionDone())
        self.assertIsNone(self.emitter.channel)
        self.emitter.emit("e")
        self.assertEqual(len(self.emitter.queue), 0)

    def test_refused_batch_counted(self):
        self.emitter.emit("e")
        self.emitter.emit("e")
        self.clock.advance(0)
        self.channel.calls[0][2].errback(protocol.StatsRefused("no"))
        self.assertEqual(self.emitter.dropped, 2)


class FakeSupervised:
    def __init__(self, child, restarts=0):
        self.child, self.restarts = child, restarts


class FakeChild:
    def __init__(self, channel, pid=7):
        self.channel, self.pid, self.lost = channel, pid, False


class FakeProcess:
    def __init__(self, pid, sessions):
        self.pid, self.sessions = pid, sessions
        self.child = FakeChild(None, pid)


class FakePool:
    def __init__(self):
        self.idle = [FakeProcess(10, 0)]
        self.busy = [FakeProcess(11, 2), FakeProcess(12, 1)]

    def all_processes(self):
        return self.idle + self.busy


class FakeMaster:
    def __init__(self, channel=None):
        self.supervised = {"auth": [FakeSupervised(FakeChild(None), 2)]}
        if channel is not None:
            self.supervised["stats"] = [FakeSupervised(FakeChild(channel))]
        self.userip = {("alice", "1.2.3.4", "imap"): 2, ("bob", "1.2.3.5", "imap"): 1,
                       ("bob", "1.2.3.5", "pop3"): 1}
        self.pool = FakePool()
        self.config = type("C", (), {"protocols": ["imap", "pop3", "lmtp"]})()


class MasterRelay(unittest.TestCase):
    def test_no_stats_service(self):
        relay = StatsRelay(FakeMaster())
        self.assertFalse(relay.forward("auth", 1, b"x", 0))

    def test_forward_names_the_sender(self):
        channel = FakeChannel()
        relay = StatsRelay(FakeMaster(channel))
        self.assertTrue(relay.forward("imap-login", 42, b"a\nb", 1))
        command, kwargs, d = channel.calls[0]
        self.assertIs(command, protocol.ForwardEvents)
        self.assertEqual(kwargs, {"service": "imap-login", "pid": 42, "batch": b"a\nb",
                                  "dropped": 1})
        d.errback(ConnectionDone())
        self.assertEqual((relay.in_flight, relay.dropped), (0, {"imap-login": 3}))

    def test_in_flight_bounded(self):
        channel = FakeChannel()
        relay = StatsRelay(FakeMaster(channel))
        from pydovecot.stats.relay import MAX_IN_FLIGHT

        for _ in range(MAX_IN_FLIGHT + 5):
            relay.forward("auth", 1, b"x", 0)
        self.assertEqual(len(channel.calls), MAX_IN_FLIGHT)
        self.assertEqual(relay.dropped, {"auth": 5})

    def test_gauges(self):
        channel = FakeChannel()
        clock = task.Clock()
        relay = StatsRelay(FakeMaster(channel), clock)
        self.assertEqual(relay.gauges(), {
            "connections": {"imap": 3, "pop3": 1, "lmtp": 0},
            "mail_processes": {"idle": 1, "assigned": 2},
            "sessions": {"11": 2, "12": 1},
            "restarts": {"auth": 2, "stats": 0},
            "dropped": {}})
        relay.start()
        clock.advance(5)
        command, kwargs, _ = channel.calls[0]
        self.assertIs(command, protocol.ProcessGauges)
        self.assertEqual(json.loads(kwargs["gauges"])["sessions"], {"11": 2, "12": 1})
        relay.stop()


class MetricsSite(unittest.TestCase):
    def site(self):
        from pydovecot.stats.http import MetricsResource
        from pydovecot.stats.main import QuietSite

        return QuietSite(MetricsResource(StatsState(Metrics.from_config(BLOCKS))))

    def request(self, site, data: bytes) -> bytes:
        from twisted.internet.testing import StringTransport

        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(data)
        channel.connectionLost(None)
        return transport.value()

    def test_page_and_404(self):
        site = self.site()
        page = self.request(site, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"200 OK", page.split(b"\r\n")[0])
        self.assertIn(b"content-type: application/openmetrics-text", page.lower())
        self.assertTrue(page.endswith(b"# EOF\n"))
        self.assertIn(b" 404 ", self.request(site, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"))

    def test_body_dropped(self):
        site = self.site()
        body = b"x" * 500000
        page = self.request(site, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: "
                            + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.assertIn(b"HTTP/1.1 ", page)  # answered, nothing spooled

    def test_connections_bounded(self):
        site = self.site()
        channels = [site.buildProtocol(None) for _ in range(site.MAX_CLIENTS)]
        self.assertIsNone(site.buildProtocol(None))
        channels[0].connectionLost(None)
        self.assertIsNotNone(site.buildProtocol(None))


class HealthCheckUnit(unittest.TestCase):
    def answer(self, *chunks: bytes, advance: float = 0) -> tuple[bytes, bool]:
        from twisted.internet.testing import StringTransport

        from pydovecot.stats.health import HealthCheckFactory

        clock = task.Clock()
        proto = HealthCheckFactory(clock).buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        for chunk in chunks:
            proto.dataReceived(chunk)
        clock.advance(advance)
        return transport.value(), transport.disconnecting

    def test_ping(self):
        self.assertEqual(self.answer(b"PI", b"NG\n"), (b"PONG\n", True))
        self.assertEqual(self.answer(b" PING!\r\n"), (b"PONG\n", True))  # cleaned as the script

    def test_anything_else(self):
        self.assertEqual(self.answer(b"ping\n"), (b"", True))
        self.assertEqual(self.answer(b"x" * 2000), (b"", True))
        self.assertEqual(self.answer(b"PING"), (b"", False))  # no newline yet
        self.assertEqual(self.answer(b"PING", advance=10), (b"", True))  # timed out


class ConfigBlocks(unittest.TestCase):
    def write(self, text: str) -> str:
        fd, path = tempfile.mkstemp(suffix=".conf")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        self.addCleanup(os.unlink, path)
        return path

    def test_parsed_and_kept(self):
        path = self.write("""
service stats {
  inet_listener http {
    port = 9900
  }
}
metric imap_select {
  filter = event=imap_command_finished AND cmd_name=SELECT
  group_by = tagged_reply_state duration:exponential:1:5:10
}
metric auth_ok {
  filter = event=auth_request_finished AND success=yes
}
""")
        cfg = load_config(path)
        self.assertEqual(list(cfg.metrics), ["imap_select", "auth_ok"])
        self.assertEqual(cfg.metrics["auth_ok"],
                         {"filter": "event=auth_request_finished AND success=yes"})
        self.assertEqual(cfg.services["stats"].inet_listeners["http"].port, 9900)
        self.assertFalse([w for w in cfg.warnings if "metric" in w or "stats" in w],
                         cfg.warnings)
        self.assertEqual(Config.from_dict(json.loads(json.dumps(cfg.to_dict()))).metrics,
                         cfg.metrics)

    def test_pydoveconf_prints_them(self):
        from pydovecot.config.cli import Dumper

        path = self.write('metric b {\n  filter = event=x AND y="a b"\n  group_by = y\n}\n'
                          "metric a {\n  filter = event=z\n}\n")
        cfg = load_config(path)
        again = load_config(self.write("\n".join(Dumper(cfg).dump(False)) + "\n"))
        self.assertEqual(list(again.metrics.items()), list(cfg.metrics.items()))

    def test_bad_filter_refused_with_line(self):
        path = self.write("protocols = imap\nmetric m {\n  filter = event=a AND (b=1\n}\n")
        with self.assertRaises(ConfigError) as e:
            load_config(path)
        self.assertIn(f"{path}:2: metric m: filter:", str(e.exception))

    def test_stats_sockets_warned(self):
        path = self.write("service stats {\n  unix_listener stats-writer {\n    mode = 0660\n"
                          "  }\n}\n")
        cfg = load_config(path)
        self.assertTrue(any(":2: unix_listener stats-writer in service stats is not served"
                            in w for w in cfg.warnings), cfg.warnings)

    def test_health_check_executable(self):
        stock = self.write("service health-check {\n  executable = script -p "
                           "/usr/lib/dovecot/health-check.sh\n  inet_listener health-check {\n"
                           "    port = 5001\n  }\n}\n")
        cfg = load_config(stock)
        self.assertEqual(cfg.warnings, [])
        self.assertEqual(cfg.services["health-check"].inet_listeners["health-check"].port, 5001)
        custom = self.write("service health-check {\n  executable = script -p /x/check.sh\n}\n")
        self.assertTrue(any(":2: service health-check: only" in w
                            for w in load_config(custom).warnings))

    def test_twice_refused(self):
        path = self.write("metric m {\n filter = event=a\n}\nmetric m {\n filter = event=b\n}\n")
        self.assertRaises(ConfigError, load_config, path)
