"""Small helpers shared by the offline checks in infra/ops/ (run by check.sh)."""

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


class Problems:
    """Collects failures; `done()` prints them and exits non-zero if there were any."""

    def __init__(self, what):
        self.what = what
        self.items = []
        self.checked = 0

    def ok(self, n=1):
        self.checked += n

    def fail(self, where, msg):
        self.items.append(f"{where}: {msg}")

    def expect(self, cond, where, msg):
        self.checked += 1
        if not cond:
            self.fail(where, msg)
        return cond

    def done(self):
        if self.items:
            for item in self.items:
                print(f"  FAIL {item}")
            print(f"  {self.what}: {len(self.items)} problem(s)")
            sys.exit(1)
        print(f"  ok   {self.what} ({self.checked} checks)")


def rel(path):
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def load_docs(path):
    """Every YAML document of a file (empty documents dropped)."""
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_metrics(path=None):
    """infra/ops/metrics.txt: `name type` per line, `#` starts a comment."""
    path = Path(path or ROOT / "infra/ops/metrics.txt")
    metrics, errors = {}, []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            errors.append(f"line {n}: expected `name type`, got {line!r}")
            continue
        name, kind = parts
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            errors.append(f"line {n}: bad metric name {name!r}")
        if kind not in ("counter", "gauge", "histogram"):
            errors.append(f"line {n}: type must be counter, gauge or histogram, not {kind!r}")
        if kind == "counter" and not name.endswith("_total"):
            errors.append(f"line {n}: counter {name} should end in _total")
        if kind != "counter" and name.endswith("_total"):
            errors.append(f"line {n}: {name} ends in _total but is a {kind}")
        if name in metrics:
            errors.append(f"line {n}: {name} listed twice")
        metrics[name] = kind
    return metrics, errors


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")
