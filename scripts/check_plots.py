"""Check that a `dvc plots show` / `dvc plots diff` page draws every plot, offline.

    python scripts/check_plots.py dvc_plots/index.html [--screenshot plots.png]

dvc-render writes each plot as ``<div id="<path>">`` holding ``vegaEmbed('#<path>', spec)``;
with its default template the page loads Vega from a CDN, so offline (or with a broken
template, a spec Vega rejects, a library that failed to load) the divs stay blank and nothing
says so. This opens the page in headless Chromium (Debian's, scripts/setup_chromium.sh) with the
network off, records every vegaEmbed call, waits for its view and counts the data marks it
rendered: the scenegraph items of role "mark", so axes, legends and titles do not count, with
the revisions (the data's ``rev`` field) they belong to. It fails, naming the plot, when a plot's
embed is rejected or never runs or draws no marks from the data rows of its spec, and on any
console error, page error or request that is not for a file:// URL (the page must be
self-contained: such requests are aborted). A plot whose file is empty (DVC then embeds ``{}``)
is reported as "empty", not failed. Image plots (``<img>``) are checked to have loaded.

Prints one line per plot; exits 1 when anything failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# Headless, and no traffic of the browser's own (updates, sync); the proxy on the discard port
# catches what the request routing below would miss.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
]
EMBED_TIMEOUT_MS = 30_000

# Runs before the page's scripts: wraps vegaEmbed when vega-embed's UMD build assigns it to
# window, so that every embed's promise (DVC's page drops it) can be awaited.
RECORD_EMBEDS = """
(() => {
  const embeds = [];
  let wrapped;
  Object.defineProperty(window, "__bestfitEmbeds", {value: embeds});
  Object.defineProperty(window, "vegaEmbed", {
    configurable: true,
    get() { return wrapped; },
    set(embed) {
      wrapped = Object.assign(function (el, spec, opts) {
        const promise = embed.apply(this, arguments);
        embeds.push({target: typeof el === "string" ? el : "#" + el.id, spec, promise});
        return promise;
      }, embed);
    },
  });
})();
"""

# Waits for the recorded embeds and describes each of the page's plots (``expected``: those of
# its source, as vegaEmbed empties its div, script included).
COLLECT = """
async ([expected, timeoutMs]) => {
  const embeds = window.__bestfitEmbeds || [];
  const timeout = new Promise((_, reject) =>
    setTimeout(() => reject(new Error(`no view after ${timeoutMs} ms`)), timeoutMs));
  const settled = await Promise.all(embeds.map(e => Promise.race([e.promise, timeout]).then(
    result => ({result}), error => ({error: String(error && error.message || error)}))));
  const byTarget = new Map(embeds.map((e, i) => [e.target, {...e, ...settled[i]}]));

  function titleOf(spec, id) {
    const t = spec && spec.title;
    return (t && (typeof t === "string" ? t : t.text)) || id;
  }
  function countMarks(view) {
    let marks = 0;
    const revs = new Set();
    (function walk(mark) {
      for (const item of mark.items || []) {
        if (mark.marktype === "group") {
          (item.items || []).forEach(walk);
        } else if (mark.role === "mark") {
          marks += 1;
          if (item.datum && item.datum.rev !== undefined) revs.add(String(item.datum.rev));
        }
      }
    })(view.scenegraph().root);
    return {marks, revs: [...revs].sort()};
  }

  const plots = [];
  for (const {id, kind} of expected) {
    const div = document.getElementById(id);
    if (kind === "vega") {
      const embed = byTarget.get("#" + id);
      const values = embed && embed.spec && embed.spec.data && embed.spec.data.values;
      const plot = {id, kind, title: titleOf(embed && embed.spec, id),
                    rows: Array.isArray(values) ? values.length : 0, marks: 0, revs: [],
                    error: null};
      if (!embed) plot.error = "vegaEmbed never ran (vega-embed not loaded?)";
      else if (embed.error) plot.error = `vegaEmbed failed: ${embed.error}`;
      else Object.assign(plot, countMarks(embed.result.view));
      if (!plot.error && plot.marks === 0 && plot.rows > 0) {
        plot.error = `no marks drawn from its ${plot.rows} data rows`;
      }
      plots.push(plot);
    } else {
      const imgs = div ? [...div.querySelectorAll("img")] : [];
      const loaded = imgs.filter(img => img.complete && img.naturalWidth > 0).length;
      plots.push({id, kind, title: id, rows: imgs.length, marks: loaded, revs: [],
                  error: loaded < imgs.length || !imgs.length ? "image not loaded" : null});
    }
  }
  return plots;
}
"""


@dataclass(frozen=True)
class PlotResult:
    id: str  # the div's id: the plot's path with punctuation as "_"
    title: str
    kind: str  # "vega" or "image"
    rows: int  # data rows in its spec (images, for an image plot)
    marks: int  # data marks drawn (images loaded, for an image plot)
    revs: tuple[str, ...]  # the revisions its drawn marks belong to (`dvc plots diff`)
    error: str | None

    def line(self) -> str:
        title = f" {self.title!r}" if self.title != self.id else ""
        revs = f" revs={','.join(self.revs)}" if self.revs else ""
        status = f"FAIL ({self.error})" if self.error else "ok" if self.rows else "empty"
        return f"{status:<5} {self.id}:{title} rows={self.rows} marks={self.marks}{revs}"


class PageCheckError(AssertionError):
    """A plot did not draw, or the page logged an error or reached for the network."""

    def __init__(self, message: str, results: list[PlotResult]):
        super().__init__(message)
        self.results = results


def check_page(path: str | os.PathLike, screenshot: str | os.PathLike | None = None
               ) -> list[PlotResult]:
    """Each plot of the dvc plots page at ``path``, once drawn; raises PageCheckError naming
    what failed. ``screenshot``: also save a full-page PNG there."""
    from playwright.sync_api import sync_playwright

    page_path = Path(path).resolve()
    if not page_path.is_file():
        raise FileNotFoundError(f"no page at {page_path}")
    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"no {CHROMIUM}: run scripts/setup_chromium.sh")
    expected = plots_in_source(page_path.read_text(encoding="utf-8"))
    problems: list[str] = []

    def on_request(route):
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            problems.append(f"request to the network (aborted): {route.request.url}")
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("console", lambda msg: msg.type == "error"
                    and problems.append(f"console error: {msg.text}"))
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("requestfailed", lambda req: req.url.startswith("file://")
                    and problems.append(f"failed request: {req.url} ({req.failure})"))
            page.route("**/*", on_request)
            page.add_init_script(RECORD_EMBEDS)
            page.goto(page_path.as_uri(), wait_until="load")
            results = [PlotResult(p["id"], p["title"], p["kind"], p["rows"], p["marks"],
                                  tuple(p["revs"]), p["error"])
                       for p in page.evaluate(COLLECT, [expected, EMBED_TIMEOUT_MS])]
            if screenshot is not None:
                write_atomically(Path(screenshot), page.screenshot(full_page=True, type="png"))
        finally:
            browser.close()

    if not expected:
        problems.append("the page holds no plots")
    failed = [r for r in results if r.error]
    if failed or problems:
        lines = [f"plot {r.id} did not draw: {r.error}" for r in failed]
        raise PageCheckError(f"{page_path}: " + "; ".join(lines + problems), results)
    return results


class _PlotDivs(HTMLParser):
    """The plots of a dvc-render page: each ``<div id>`` whose own ``<script>`` calls vegaEmbed
    (a Vega plot) or that holds an ``<img>`` (an image plot)."""

    def __init__(self):
        super().__init__()
        self.open: list[tuple[str, str | None]] = []  # (tag, id) of the open elements
        self.plots: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            for _, div_id in reversed(self.open):
                if div_id:
                    self.plots.setdefault(div_id, "image")
                    break
        elif tag not in VOID_TAGS:
            self.open.append((tag, dict(attrs).get("id") if tag == "div" else None))

    def handle_endtag(self, tag):
        while self.open:
            if self.open.pop()[0] == tag:
                break

    def handle_data(self, data):
        if (len(self.open) >= 2 and self.open[-1][0] == "script" and self.open[-2][1]
                and "vegaEmbed(" in data):
            self.plots[self.open[-2][1]] = "vega"


VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
             "source", "track", "wbr"}


def plots_in_source(html: str) -> list[dict[str, str]]:
    parser = _PlotDivs()
    parser.feed(html)
    parser.close()
    return [{"id": div_id, "kind": kind} for div_id, kind in parser.plots.items()]


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path, help="the HTML page dvc plots show/diff wrote")
    parser.add_argument("--screenshot", type=Path, help="save a full-page PNG here")
    args = parser.parse_args(argv)
    try:
        results = check_page(args.page, args.screenshot)
    except PageCheckError as exc:
        for result in exc.results:
            print(result.line())
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for result in results:
        print(result.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
