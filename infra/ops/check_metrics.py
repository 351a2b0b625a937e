"""Checks the metric names used by alerts, the dashboard and KEDA against metrics.txt.

usage: check_metrics.py OUTDIR

- infra/ops/metrics.txt is well formed (`name type`, one per line);
- every `confab_*` / `process_*` name in an expression of infra/prometheus/alerts.yml,
  the input series of alerts_test.yml, every target of infra/grafana/confab.json and every
  query of infra/keda/scaledobjects.yaml is an exported metric (histograms only through
  their _bucket, _sum or _count series);
- the dashboard is importable (schemaVersion, a Prometheus datasource variable used by every
  panel and target, unique panel ids, grid positions) and shows every exported metric;
- each alert has a severity, summary, description and a runbook_url whose anchor is a
  `#### Alert: <Name>` heading of the README's runbook.

It also writes, into OUTDIR, the dashboard's and KEDA's expressions as recording rules
(promql-syntax.rules.yml) so that `promtool check rules` parses them, and the KEDA queries as
rules for infra/keda/queries_test.yml (keda-queries.rules.yml), which promtool then tests.
"""

import json
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from opslib import ROOT, Problems, github_anchor, load_docs, load_metrics, load_yaml  # noqa: E402

ALERTS = ROOT / "infra/prometheus/alerts.yml"
ALERTS_TEST = ROOT / "infra/prometheus/alerts_test.yml"
DASHBOARD = ROOT / "infra/grafana/confab.json"
KEDA = ROOT / "infra/keda/scaledobjects.yaml"
HIST_SUFFIXES = ("_bucket", "_sum", "_count")
NAME = re.compile(r"(?<![A-Za-z0-9_:])((?:confab|process)_[A-Za-z0-9_]*)")
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def strip_strings(expr):
    """PromQL without its string literals (label values may contain anything)."""
    return re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)


def names_in(expr):
    return NAME.findall(strip_strings(expr))


def resolve(name, metrics):
    """(exported metric, None) or (None, reason)."""
    if name in metrics:
        if metrics[name] == "histogram":
            return None, f"{name} is a histogram: use {name}_bucket, _sum or _count"
        return name, None
    for suffix in HIST_SUFFIXES:
        base = name[: -len(suffix)]
        if name.endswith(suffix) and metrics.get(base) == "histogram":
            return base, None
    return None, f"{name} is not in infra/ops/metrics.txt"


def panels_of(dash):
    for p in dash.get("panels", []):
        yield p
        yield from p.get("panels", [])


def runbook_headings():
    """(file, {anchor: heading}) of the `#### Alert: Name` headings."""
    readme = ROOT / "README.md"
    if not readme.exists():
        return None, {}
    heads = re.findall(r"^####\s+(Alert:\s*\S.*?)\s*$", readme.read_text(encoding="utf-8"), re.M)
    return readme, {github_anchor(h): h for h in heads}


def main():
    out = Path(sys.argv[1])
    p = Problems("metric names, dashboard, alert annotations")
    metrics, errors = load_metrics()
    for e in errors:
        p.fail("infra/ops/metrics.txt", e)
    p.expect(len(metrics) > 0, "infra/ops/metrics.txt", "lists no metric")

    used = {}  # exported metric -> where

    def check_expr(where, expr):
        p.ok()
        for name in names_in(expr):
            base, why = resolve(name, metrics)
            if why:
                p.fail(where, why)
            else:
                used.setdefault(base, set()).add(where.split(":")[0])

    # ------------------------------------------------------------ alerts
    rb_file, anchors = runbook_headings()
    rules = load_yaml(ALERTS)
    alert_names = []
    for g in rules["groups"]:
        for r in g["rules"]:
            name = r.get("alert") or r.get("record")
            where = f"infra/prometheus/alerts.yml: {name}"
            check_expr(where, r["expr"])
            if "alert" not in r:
                continue
            alert_names.append(name)
            ann = r.get("annotations", {})
            for key in ("summary", "description", "runbook_url"):
                p.expect(ann.get(key), where, f"no {key} annotation")
            p.expect(r.get("labels", {}).get("severity") in ("warning", "critical"), where,
                     "severity label must be warning or critical")
            url = ann.get("runbook_url", "")
            want = f"alert-{name.lower()}"
            p.expect(url.endswith(f"#{want}"), where, f"runbook_url should end in #{want}")
            p.expect(want in anchors, where,
                     f"no `#### Alert: {name}` heading (anchor #{want}) in "
                     f"{rb_file.relative_to(ROOT) if rb_file else 'README.md'}")
    p.expect(len(set(alert_names)) == len(alert_names), "infra/prometheus/alerts.yml", "duplicate alert names")
    for anchor, head in anchors.items():
        p.expect(anchor[len("alert-"):] in {a.lower() for a in alert_names}, str(rb_file.relative_to(ROOT)),
                 f"heading `{head}` is no alert of alerts.yml")

    # Every alert is exercised by alerts_test.yml, at least once firing.
    tests = load_yaml(ALERTS_TEST)
    fired = set()
    for t in tests.get("tests", []):
        for s in t.get("input_series", []):
            check_expr("infra/prometheus/alerts_test.yml", s["series"])
        for a in t.get("alert_rule_test", []):
            if a.get("exp_alerts"):
                fired.add(a["alertname"])
        for e in t.get("promql_expr_test", []):
            check_expr("infra/prometheus/alerts_test.yml", e["expr"])
    for name in alert_names:
        p.expect(name in fired, "infra/prometheus/alerts_test.yml", f"no test in which {name} fires")

    # ------------------------------------------------------------ dashboard
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    d = "infra/grafana/confab.json"
    p.expect(isinstance(dash.get("schemaVersion"), int) and dash["schemaVersion"] >= 36, d,
             "schemaVersion should be >= 36")
    p.expect(dash.get("uid") and dash.get("title"), d, "needs uid and title")
    p.expect(dash.get("id") is None, d, "an importable dashboard has no id")
    tvars = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    ds_var = tvars.get("datasource")
    p.expect(ds_var and ds_var.get("type") == "datasource" and ds_var.get("query") == "prometheus", d,
             "needs a templating variable `datasource` of type datasource, query prometheus")
    ds_ok = lambda ds: isinstance(ds, dict) and ds.get("type") == "prometheus" and ds.get("uid") == "${datasource}"  # noqa: E731
    ids = []
    exprs = []
    for panel in panels_of(dash):
        ids.append(panel.get("id"))
        where = f"{d}: panel {panel.get('id')} {panel.get('title')!r}"
        g = panel.get("gridPos", {})
        p.expect(all(isinstance(g.get(k), int) for k in "hwxy") and g.get("x", 0) + g.get("w", 0) <= 24,
                 where, "bad gridPos")
        if panel.get("type") == "row":
            continue
        p.expect(panel.get("title"), where, "no title")
        p.expect(ds_ok(panel.get("datasource")), where, "datasource must be {type: prometheus, uid: ${datasource}}")
        targets = panel.get("targets", [])
        p.expect(targets, where, "no targets")
        refs = [t.get("refId") for t in targets]
        p.expect(len(set(refs)) == len(refs), where, "duplicate refId")
        for t in targets:
            p.expect(ds_ok(t.get("datasource")), where, "target datasource must be ${datasource}")
            expr = t.get("expr", "")
            p.expect(expr.strip(), where, "empty expr")
            check_expr(where, expr)
            exprs.append((where, expr))
    p.expect(None not in ids and len(set(ids)) == len(ids), d, "panel ids must be present and unique")
    for name in metrics:
        p.expect(d in used.get(name, ()), d, f"shows nothing of {name}")

    # ------------------------------------------------------------ KEDA queries
    keda_rules = []
    for doc in load_docs(KEDA):
        so = doc["metadata"]["name"]
        for i, trig in enumerate(doc["spec"].get("triggers", [])):
            q = trig.get("metadata", {}).get("query")
            if q:
                check_expr(f"infra/keda/scaledobjects.yaml: {so}", q)
                exprs.append((f"infra/keda/scaledobjects.yaml: {so}", q))
                role = so.removeprefix("confab-")
                keda_rules.append({"record": f"keda:{role}:query{'' if i == 0 else i}", "expr": q})

    # ------------------------------------------------------------ outputs for promtool
    syntax = []
    for n, (where, expr) in enumerate(exprs):
        for var, val in GRAFANA_VARS.items():
            expr = expr.replace(var, val)
        p.expect("$" not in expr, where, f"unresolved Grafana variable in {expr!r}")
        syntax.append({"record": f"check:expr:{n}", "expr": expr})
    (out / "promql-syntax.rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard-and-keda-expressions", "rules": syntax}]}, sort_keys=False))
    (out / "keda-queries.rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "keda-queries", "rules": keda_rules}]}, sort_keys=False))
    p.done()


if __name__ == "__main__":
    main()
