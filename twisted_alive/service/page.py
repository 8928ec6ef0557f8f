"""
The operator's page of the status site: one HTML document, rendered on the
server and kept fresh by a small inline script.

The page needs nothing but the status site itself: no template engine, no
external script, style sheet, font or image, no plotting library. The
server renders the whole page (every value escaped with `html.escape`);
every 2 s the inline script fetches ``status.json`` (`statusSnapshot`) and
redraws the header, the tables and the plots (inline SVG) from it, with
``textContent`` for every value. A Content-Security-Policy with a nonce
allows that one script and style sheet and nothing else.
"""

from __future__ import annotations

import html
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any, Protocol

from twisted_alive._factories import AliveServerFactory
from twisted_alive.service.history import History, connectionRows

REFRESH_SECONDS = 2.0
"""How often the page fetches ``status.json``."""

STORE = {"kind": "memory", "health": "ok"}
"""The session store the page shows: the factories keep their sessions in
memory (their health is then always ``ok``)."""

_HTML_TYPES = (b"text/html", b"application/xhtml+xml")


def _quality(params: list[bytes]) -> float:
    for param in params:
        name, _, value = param.partition(b"=")
        if name.strip().lower() == b"q":
            try:
                return min(1.0, max(0.0, float(value.strip())))
            except ValueError:
                return 0.0
    return 1.0


def prefersHtml(accept: bytes | None) -> bool:
    """
    Whether an ``Accept`` header asks for HTML before plain text: it names
    ``text/html`` (or ``application/xhtml+xml``) with a quality above zero,
    and at least as high as that of ``text/plain`` if it names that. A
    browser does; ``curl`` (``*/*``) and a missing header do not.

    :param accept: the header's value, or ``None``.
    """
    if not accept:
        return False
    htmlQ = 0.0
    plainQ = 0.0
    for item in accept.split(b","):
        kind, *params = item.split(b";")
        kind = kind.strip().lower()
        if kind in _HTML_TYPES:
            htmlQ = max(htmlQ, _quality(params))
        elif kind == b"text/plain":
            plainQ = max(plainQ, _quality(params))
    return htmlQ > 0 and htmlQ >= plainQ


def version() -> str:
    """The installed twisted_alive's version, else ``__version__``, else
    ``"unknown"``."""
    try:
        return metadata.version("twisted_alive")
    except metadata.PackageNotFoundError:
        import twisted_alive

        return str(getattr(twisted_alive, "__version__", "unknown"))


class StatusView(Protocol):
    """What `statusSnapshot` reads of a status site."""

    @property
    def factories(self) -> Sequence[AliveServerFactory]: ...

    @property
    def history(self) -> History: ...

    @property
    def endpoints(self) -> Sequence[str]: ...

    @property
    def startedAt(self) -> float: ...

    @property
    def serving(self) -> Callable[[], bool]: ...


def statusSnapshot(site: StatusView) -> dict[str, Any]:
    """
    Everything the page shows, as a JSON-ready dict (served as
    ``/status.json``): ``process`` (``pid``, ``hostname``, ``version``,
    ``uptime`` in seconds), ``endpoints``, ``store``, ``serving``,
    ``connections`` (see `connectionRows`), ``losses`` (newest first),
    ``lossCounts`` and ``series`` (see `History.toJSON`). It holds no
    session token (only their prefixes) and no payload.

    :param site: the status site.
    """
    return {
        "process": {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "version": version(),
            "uptime": max(0.0, time.time() - site.startedAt),
        },
        "endpoints": list(site.endpoints),
        "store": dict(STORE),
        "serving": bool(site.serving()),
        "connections": connectionRows(site.factories),
        **site.history.toJSON(),
    }


def htmlHeaders(nonce: str) -> list[tuple[bytes, bytes]]:
    """
    The headers of the page beyond its content type: a Content-Security-
    Policy that allows only the page's own script and style sheet (marked
    with ``nonce``) and requests to the site itself.
    """
    policy = (
        "default-src 'none'; "
        f"script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    )
    return [
        (b"content-security-policy", policy.encode("ascii")),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]


def newNonce() -> str:
    """A fresh nonce for `htmlHeaders` and `renderPage`."""
    return secrets.token_urlsafe(16)


# -- formatting (the inline script has the same functions) ---------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _seconds(value: float | None) -> str:
    if value is None:
        return "\u2013"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def _ms(value: float | None) -> str:
    return "\u2013" if value is None else f"{value * 1000:.1f} ms"


def _rate(value: float | None) -> str:
    return "\u2013" if value is None else f"{value:.1f}/s"


def _count(value: float | None) -> str:
    return "\u2013" if value is None else f"{value:.0f}"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _utc(at: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(at))


# -- the parts of the page --------------------------------------------------------------

COLUMNS = (
    ("peer", "text", "peer"),
    ("session", "text", "session"),
    ("state", "text", "state"),
    ("lastHeard", "number", "last heard / deadline"),
    ("rtt", "number", "RTT"),
    ("inflight", "number", "unconfirmed"),
    ("queued", "number", "queued"),
    ("resumed", "number", "resumed"),
)
"""The columns of the connections table: key in ``status.json``, kind of
sort, header."""

PLOTS = (
    (
        "plot-messages",
        "messages confirmed per second",
        (("confirmed", "line-a", "to clients"), ("processed", "line-b", "from clients")),
        "rate",
    ),
    (
        "plot-rtt",
        "heartbeat round-trip time",
        (("rttMean", "line-a", "mean"), ("rttMax", "line-b", "max")),
        "ms",
    ),
    ("plot-connections", "live connections", (("connections", "line-a", "connections"),), "count"),
)
"""The plots: element id, title, lines (series key, CSS class, legend) and
the format of their values."""

_FORMATS: Mapping[str, Callable[[float | None], str]] = {
    "rate": _rate,
    "ms": _ms,
    "count": _count,
}

PLOT_WIDTH = 320
PLOT_HEIGHT = 90
_TOP = 14
_BOTTOM = 14


def plotSvg(series: Mapping[str, Any], lines: Sequence[str], fmt: str) -> str:
    """
    An inline SVG plot of ``lines`` (keys of ``series``) against the
    series' ``times``, over the last ``span`` seconds before ``now``; a
    ``None`` value breaks its line.
    """
    width, height = PLOT_WIDTH, PLOT_HEIGHT
    inner = height - _TOP - _BOTTOM
    now = float(series["now"])
    span = float(series["span"]) or 1.0
    times = series["times"]
    values = [v for key in lines for v in series[key] if v is not None]
    peak = max(values, default=0.0)
    top = peak if peak > 0 else 1.0
    out = [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">',
        f'<rect class="frame" x="0" y="{_TOP}" width="{width}" height="{inner}"/>',
    ]
    for index, key in enumerate(lines):
        css = "line-a" if index == 0 else "line-b"
        segment: list[str] = []
        for at, value in [*zip(times, series[key], strict=True), (None, None)]:
            if value is None or at is None:
                if len(segment) > 1:
                    out.append(f'<polyline class="{css}" points="{" ".join(segment)}"/>')
                segment = []
                continue
            x = width * (1 - (now - float(at)) / span)
            y = _TOP + inner * (1 - float(value) / top)
            segment.append(f"{x:.1f},{y:.1f}")
    show = _FORMATS[fmt]
    latest = next((v for v in reversed(series[lines[0]]) if v is not None), None)
    out.append(f'<text x="2" y="11">max {_e(show(peak if values else None))}</text>')
    out.append(
        f'<text x="{width - 2}" y="11" text-anchor="end">now {_e(show(latest))}</text>'
    )
    out.append(f'<text x="2" y="{height - 2}">\u2212{_e(f"{span / 60:g}")} min</text>')
    out.append(f'<text x="{width - 2}" y="{height - 2}" text-anchor="end">now</text>')
    out.append("</svg>")
    return "".join(out)


def _connectionRow(row: Mapping[str, Any]) -> str:
    deadline = row["deadline"] or 1.0
    heard = min(float(row["lastHeard"] or 0.0), deadline)
    return (
        f'<tr data-peer="{_e(row["peer"])}">'
        f"<td>{_e(row['peer'])}</td>"
        f"<td><code>{_e(row['session'])}</code></td>"
        f"<td>{_e(row['state'])}</td>"
        f'<td class="heard"><meter min="0" max="{deadline:g}" low="{0.5 * deadline:g}" '
        f'high="{0.8 * deadline:g}" optimum="0" value="{heard:g}"></meter> '
        f"<span>{_e(_seconds(row['lastHeard']))} / {_e(_seconds(row['deadline']))}</span></td>"
        f'<td class="num">{_e(_ms(row["rtt"]))}</td>'
        f'<td class="num">{_e(row["inflight"])}</td>'
        f'<td class="num">{_e(row["queued"])}</td>'
        f'<td class="num">{_e(row["resumed"])}</td>'
        "</tr>"
    )


def _lossRow(loss: Mapping[str, Any]) -> str:
    after = loss["duration"]
    return (
        f'<tr data-reason="{_e(loss["reason"])}" data-peer="{_e(loss["peer"])}">'
        f'<td title="{_e(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(loss["at"])))}">'
        f"{_e(_utc(loss['at']))}</td>"
        f"<td>{_e(loss['peer'])}</td>"
        f'<td><span class="reason">{_e(loss["reason"])}</span></td>'
        f"<td>{_e(loss['detail'])}</td>"
        f'<td class="num">{_e(_seconds(after))}</td>'
        "</tr>"
    )


def _lossCounts(counts: Mapping[str, int]) -> str:
    if not counts:
        return "none yet"
    return " ".join(
        f'<span class="count" data-reason="{_e(name)}"><span class="reason">{_e(name)}</span> '
        f"{_e(n)}</span>"
        for name, n in counts.items()
    )


def _head(state: Mapping[str, Any]) -> str:
    process = state["process"]
    endpoints = ", ".join(state["endpoints"]) or "not given"
    store = state["store"]
    return (
        '<dl id="process">'
        f'<div><dt>process</dt><dd id="pid">{_e(process["pid"])} on '
        f'{_e(process["hostname"])}</dd></div>'
        f'<div><dt>uptime</dt><dd id="uptime">{_e(_duration(process["uptime"]))}</dd></div>'
        f'<div><dt>listening</dt><dd id="endpoints">{_e(endpoints)}</dd></div>'
        f'<div><dt>sessions</dt><dd id="store">{_e(store["kind"])}: '
        f'{_e(store["health"])}</dd></div>'
        f'<div><dt>health</dt><dd id="serving">'
        f'{"serving" if state["serving"] else "stopping"}</dd></div>'
        '<div><dt>updated</dt><dd id="updated">at load</dd></div>'
        "</dl>"
    )


def renderPage(state: Mapping[str, Any], nonce: str) -> str:
    """
    The whole page for a `statusSnapshot`, every value escaped.

    :param state: what `statusSnapshot` returned.
    :param nonce: the nonce of its script and style sheet (see
        `htmlHeaders`).
    """
    process = state["process"]
    rows = state["connections"]
    headers = "".join(
        f'<th data-key="{key}" data-sort="{kind}"'
        + (' aria-sort="ascending"' if key == "peer" else "")
        + f' title="sort by {_e(title)}">{_e(title)}</th>'
        for key, kind, title in COLUMNS
    )
    plots = []
    for ident, title, lines, fmt in PLOTS:
        legend = " ".join(f'<span class="{css}">\u2014 {_e(name)}</span>' for _, css, name in lines)
        svg = plotSvg(state["series"], [key for key, _, _ in lines], fmt)
        plots.append(
            f"<figure><figcaption>{_e(title)} {legend}</figcaption>"
            f'<div id="{ident}" class="plot">{svg}</div></figure>'
        )
    losses = state["losses"]
    return _PAGE.format(
        nonce=_e(nonce),
        title=_e(f"twisted_alive on {process['hostname']}"),
        version=_e(process["version"]),
        head=_head(state),
        count=len(rows),
        headers=headers,
        rows="".join(_connectionRow(row) for row in rows),
        noConnections="" if not rows else " hidden",
        plots="".join(plots),
        counts=_lossCounts(state["lossCounts"]),
        losses="".join(_lossRow(loss) for loss in losses),
        noLosses="" if not losses else " hidden",
        refresh=int(REFRESH_SECONDS * 1000),
        script=_SCRIPT,
        style=_STYLE,
    )


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 1.5em 2em;color:#1d2430;background:#fafbfc}
h1{font-size:1.4em;margin:.8em 0 .3em}h1 small{font-weight:normal;color:#667}
h2{font-size:1.1em;margin:1.4em 0 .4em}
dl#process{display:flex;flex-wrap:wrap;gap:.3em 2em;margin:0}
dl#process div{display:flex;gap:.5em}dt{color:#667}dd{margin:0;font-weight:600}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:.25em .6em;border-bottom:1px solid #e3e6ea;text-align:left;white-space:nowrap}
td:nth-child(4){white-space:normal}#connections td:nth-child(4){white-space:nowrap}
th{background:#eef1f4}#connections th{cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
meter{width:7em;vertical-align:middle}
.reason{font-family:ui-monospace,monospace;font-weight:600}
.count{margin-right:1.2em}
.plots{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}
figcaption{font-size:.9em;color:#445}
svg{background:#fff;border:1px solid #e3e6ea}svg text{font-size:10px;fill:#556}
.frame{fill:none;stroke:#eef1f4}
polyline{fill:none;stroke-width:1.5}polyline.line-a{stroke:#2563eb}polyline.line-b{stroke:#d97706}
span.line-a{color:#2563eb}span.line-b{color:#d97706}
.empty{color:#667}footer{margin-top:2em;color:#667;font-size:.9em}
#updated.failed{color:#b91c1c}
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var REFRESH = Number(document.body.dataset.refresh) || 2000;
  var sortKey = "peer", sortDir = 1, last = null, updates = 0;
  var FORMATS = {
    rate: function (v) { return v === null || v === undefined ? "\u2013" : v.toFixed(1) + "/s"; },
    ms: ms,
    count: function (v) { return v === null || v === undefined ? "\u2013" : v.toFixed(0); }
  };
  var PLOTS = [
    ["plot-messages", ["confirmed", "processed"], "rate"],
    ["plot-rtt", ["rttMean", "rttMax"], "ms"],
    ["plot-connections", ["connections"], "count"]
  ];
  function $(id) { return document.getElementById(id); }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    if (cls) { e.className = cls; }
    return e;
  }
  function seconds(v) {
    if (v === null || v === undefined) { return "\u2013"; }
    return v < 1 ? (v * 1000).toFixed(0) + " ms" : v.toFixed(1) + " s";
  }
  function ms(v) {
    return v === null || v === undefined ? "\u2013" : (v * 1000).toFixed(1) + " ms";
  }
  function duration(s) {
    s = Math.floor(s);
    if (s < 60) { return s + " s"; }
    if (s < 3600) { return Math.floor(s / 60) + " min " + (s % 60) + " s"; }
    if (s < 86400) { return Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min"; }
    return Math.floor(s / 86400) + " d " + Math.floor(s % 86400 / 3600) + " h";
  }
  function utc(at, full) {
    var iso = new Date(at * 1000).toISOString();
    return full ? iso.slice(0, 10) + " " + iso.slice(11, 19) + " UTC" : iso.slice(11, 19);
  }
  function compare(a, b) {
    var x = a[sortKey], y = b[sortKey];
    if (x === y) { return 0; }
    if (x === null || x === undefined) { return 1; }
    if (y === null || y === undefined) { return -1; }
    return (x < y ? -1 : 1) * sortDir;
  }
  function renderConnections(rows) {
    var out = document.createDocumentFragment();
    rows.slice().sort(compare).forEach(function (r) {
      var tr = el("tr"), td, code, meter, max;
      tr.dataset.peer = r.peer;
      tr.appendChild(el("td", r.peer));
      td = el("td"); code = el("code", r.session); td.appendChild(code); tr.appendChild(td);
      tr.appendChild(el("td", r.state));
      td = el("td", null, "heard");
      max = r.deadline || 1;
      meter = el("meter");
      meter.min = 0; meter.max = max; meter.low = 0.5 * max; meter.high = 0.8 * max;
      meter.optimum = 0; meter.value = Math.min(r.lastHeard || 0, max);
      td.appendChild(meter);
      td.appendChild(document.createTextNode(" "));
      td.appendChild(el("span", seconds(r.lastHeard) + " / " + seconds(r.deadline)));
      tr.appendChild(td);
      tr.appendChild(el("td", ms(r.rtt), "num"));
      tr.appendChild(el("td", r.inflight, "num"));
      tr.appendChild(el("td", r.queued, "num"));
      tr.appendChild(el("td", r.resumed, "num"));
      out.appendChild(tr);
    });
    $("connection-rows").replaceChildren(out);
    $("connection-count").textContent = String(rows.length);
    $("no-connections").hidden = rows.length > 0;
    document.querySelectorAll("#connections th[data-key]").forEach(function (th) {
      if (th.dataset.key === sortKey) {
        th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
      } else {
        th.removeAttribute("aria-sort");
      }
    });
  }
  function renderLosses(losses, counts) {
    var out = document.createDocumentFragment(), names = Object.keys(counts);
    losses.forEach(function (l) {
      var tr = el("tr"), td;
      tr.dataset.reason = l.reason; tr.dataset.peer = l.peer;
      td = el("td", utc(l.at, false)); td.title = utc(l.at, true); tr.appendChild(td);
      tr.appendChild(el("td", l.peer));
      td = el("td"); td.appendChild(el("span", l.reason, "reason")); tr.appendChild(td);
      tr.appendChild(el("td", l.detail));
      tr.appendChild(el("td", seconds(l.duration), "num"));
      out.appendChild(tr);
    });
    $("loss-rows").replaceChildren(out);
    $("no-losses").hidden = losses.length > 0;
    out = document.createDocumentFragment();
    names.forEach(function (name) {
      var span = el("span", null, "count");
      span.dataset.reason = name;
      span.appendChild(el("span", name, "reason"));
      span.appendChild(document.createTextNode(" " + counts[name]));
      out.appendChild(span);
    });
    if (!names.length) { out.appendChild(document.createTextNode("none yet")); }
    $("loss-counts").replaceChildren(out);
  }
  function plot(series, keys, fmt) {
    var W = 320, H = 90, T = 14, B = 14, inner = H - T - B;
    var now = series.now, span = series.span || 1, times = series.times, show = FORMATS[fmt];
    var peak = 0, seen = false, latest = null, parts;
    keys.forEach(function (k) {
      series[k].forEach(function (v) {
        if (v !== null) { seen = true; if (v > peak) { peak = v; } }
      });
    });
    series[keys[0]].forEach(function (v) { if (v !== null) { latest = v; } });
    var top = peak > 0 ? peak : 1;
    parts = ['<svg viewBox="0 0 ' + W + " " + H + '" width="' + W + '" height="' + H +
             '" role="img">', '<rect class="frame" x="0" y="' + T + '" width="' + W +
             '" height="' + inner + '"/>'];
    keys.forEach(function (k, index) {
      var values = series[k], seg = [], css = index === 0 ? "line-a" : "line-b", i, x, y;
      function flush() {
        if (seg.length > 1) {
          parts.push('<polyline class="' + css + '" points="' + seg.join(" ") + '"/>');
        }
        seg = [];
      }
      for (i = 0; i < values.length; i++) {
        if (values[i] === null) { flush(); continue; }
        x = W * (1 - (now - times[i]) / span);
        y = T + inner * (1 - values[i] / top);
        seg.push(x.toFixed(1) + "," + y.toFixed(1));
      }
      flush();
    });
    parts.push('<text x="2" y="11"></text>');
    parts.push('<text x="' + (W - 2) + '" y="11" text-anchor="end"></text>');
    parts.push('<text x="2" y="' + (H - 2) + '"></text>');
    parts.push('<text x="' + (W - 2) + '" y="' + (H - 2) + '" text-anchor="end">now</text></svg>');
    return [parts.join(""), "max " + show(seen ? peak : null), "now " + show(latest),
            "\u2212" + (span / 60) + " min"];
  }
  function renderPlots(series) {
    PLOTS.forEach(function (p) {
      var drawn = plot(series, p[1], p[2]), box = $(p[0]), texts;
      box.innerHTML = drawn[0];
      texts = box.querySelectorAll("text");
      texts[0].textContent = drawn[1];
      texts[1].textContent = drawn[2];
      texts[2].textContent = drawn[3];
    });
  }
  function render(s) {
    $("version").textContent = s.process.version;
    $("pid").textContent = s.process.pid + " on " + s.process.hostname;
    $("uptime").textContent = duration(s.process.uptime);
    $("endpoints").textContent = s.endpoints.length ? s.endpoints.join(", ") : "not given";
    $("store").textContent = s.store.kind + ": " + s.store.health;
    $("serving").textContent = s.serving ? "serving" : "stopping";
    renderConnections(s.connections);
    renderLosses(s.losses, s.lossCounts);
    renderPlots(s.series);
  }
  function refresh() {
    fetch("status.json", {cache: "no-store", headers: {"Accept": "application/json"}})
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(function (s) {
        last = s;
        render(s);
        updates += 1;
        document.body.dataset.updates = String(updates);
        $("updated").textContent = utc(Date.now() / 1000, false) + " UTC";
        $("updated").className = "";
      })
      .catch(function (e) {
        $("updated").textContent = "update failed: " + e.message;
        $("updated").className = "failed";
      })
      .then(function () { setTimeout(refresh, REFRESH); });
  }
  document.querySelectorAll("#connections th[data-key]").forEach(function (th) {
    th.addEventListener("click", function () {
      var key = th.dataset.key;
      if (key === sortKey) { sortDir = -sortDir; } else { sortKey = key; sortDir = 1; }
      if (last) { renderConnections(last.connections); }
    });
  });
  refresh();
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<style nonce="{nonce}">{style}</style>
</head>
<body data-refresh="{refresh}" data-updates="0">
<header>
<h1>twisted_alive <small id="version">{version}</small></h1>
{head}
</header>
<main>
<section>
<h2>Live connections: <span id="connection-count">{count}</span></h2>
<table id="connections">
<thead><tr>{headers}</tr></thead>
<tbody id="connection-rows">{rows}</tbody>
</table>
<p id="no-connections" class="empty"{noConnections}>No live connections.</p>
</section>
<section>
<h2>Recent minutes</h2>
<div class="plots">{plots}</div>
</section>
<section>
<h2>Losses</h2>
<p>By reason, since the status site started: <span id="loss-counts">{counts}</span></p>
<table id="losses">
<thead><tr><th>time (UTC)</th><th>peer</th><th>reason</th><th>detail</th><th>after</th></tr></thead>
<tbody id="loss-rows">{losses}</tbody>
</table>
<p id="no-losses" class="empty"{noLosses}>No connection has ended yet.</p>
</section>
</main>
<footer>Refreshed every 2 s from <a href="status.json">status.json</a>.
Also: <a href="connections">connections</a> (JSON), <a href="metrics">metrics</a>,
<a href="health">health</a>.</footer>
<script nonce="{nonce}">{script}</script>
</body>
</html>
"""

__all__ = [
    "REFRESH_SECONDS",
    "StatusView",
    "htmlHeaders",
    "newNonce",
    "plotSvg",
    "prefersHtml",
    "renderPage",
    "statusSnapshot",
    "version",
]
