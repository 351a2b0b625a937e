"""Static checks of what users deploy, beyond schema validity (no container engine here).

usage: check_deploy.py dockerfile|compose|k8s

dockerfile  infra/Dockerfile is multi-stage, builds both binaries (crate names from the
            Cargo.toml files) and the web client, and its final stage copies /app/gateway,
            /app/workers and the web client, sets WEB_DIR and GATEWAY_ADDR, carries curl and
            sleep when compose and Kubernetes rely on them, and runs as a non-root user
            (numeric USER other than 0, or a distroless :nonroot base); its ignore file keeps
            target/ and node_modules/ out of the context.
compose     infra/compose.yaml: Redis with AOF on a volume; 2+ gateways behind the proxy; every
            worker role with its own deploy.replicas and a /readyz health check on its
            METRICS_ADDR port; OPENAI_API_KEY only from the environment; every mounted file
            exists; the nginx config passes WebSocket upgrades with long timeouts.
k8s         infra/k8s/: one Deployment per role with requests and limits, /readyz and /healthz
            probes on the right port, a non-root, read-only, no-privilege-escalation,
            drop-ALL security context, a termination grace longer than the role's drain, a
            preStop pause on the gateway; a PodDisruptionBudget per Deployment; the Service and
            Ingress (WebSocket timeouts) reach the gateway; ConfigMap and Secret references
            resolve; the API key comes from the Secret.
"""

import re
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from opslib import ROOT, Problems, load_docs, load_yaml  # noqa: E402

ROLES = ("persistence", "completion", "cleanup")


# ---------------------------------------------------------------- Dockerfile
def dockerfile_instructions(text):
    """(instruction, arguments) with continuation lines joined and comments dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if cur and line.lstrip().startswith("#"):
            continue
        cur += line.rstrip()
        if cur.endswith("\\"):
            cur = cur[:-1] + " "
            continue
        parts = cur.strip().split(None, 1)
        out.append((parts[0].upper(), parts[1] if len(parts) > 1 else ""))
        cur = ""
    return out


def crate_name(path):
    m = re.search(r'^\s*name\s*=\s*"([^"]+)"', (ROOT / path).read_text(), re.M)
    return m.group(1) if m else None


def check_dockerfile():
    p = Problems("infra/Dockerfile")
    where = "infra/Dockerfile"
    ins = dockerfile_instructions((ROOT / where).read_text(encoding="utf-8"))
    args = {}
    stages = []  # [ (base, name, [(inst, args)]) ]
    for inst, rest in ins:
        if inst == "ARG" and not stages:
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip()
        elif inst == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append((base, name, []))
        elif stages:
            stages[-1][2].append((inst, rest))
    p.expect(len(stages) >= 2, where, f"multi-stage: {len(stages)} FROM line(s), want at least 2")
    if not stages:
        return p.done()
    everything = " ".join(r for _, _, body in stages for _, r in body)
    for crate in (crate_name("gateway/Cargo.toml"), crate_name("workers/Cargo.toml")):
        p.expect(crate and re.search(rf"cargo build[^&;]*--release[^&;]*-p {re.escape(crate)}\b", everything),
                 where, f"no `cargo build --release … -p {crate}`")
    p.expect("npm ci" in everything and "npm run build" in everything, where, "the web client is not built (npm ci, npm run build)")

    base, _, final = stages[-1]
    users = [r.strip() for i, r in final if i == "USER"]
    if users:
        user = users[-1].split(":")[0]
        p.expect(user.isdigit() and int(user) != 0, where,
                 f"final stage USER {users[-1]!r}: use a numeric non-zero uid (Kubernetes can verify it)")
    else:
        p.expect(base.endswith(":nonroot"), where, "final stage has no USER and its base is not a distroless :nonroot one")
    copies = " ".join(r for i, r in final if i in ("COPY", "ADD"))
    for binary in ("gateway", "workers"):
        p.expect(re.search(rf"--from=\S+ [^\n]*\S*/{binary}\b", copies) and "/app" in copies, where,
                 f"final stage does not copy the {binary} binary into /app")
    p.expect(re.search(r"--from=\S+ \S*web/dist\S* /app/web", copies), where,
             "final stage does not copy the built web client (gateway/web/dist) to /app/web")
    env = " ".join(r for i, r in final if i == "ENV")
    p.expect(re.search(r"WEB_DIR=/app/web\b", env), where, "ENV WEB_DIR=/app/web")
    p.expect(re.search(r"GATEWAY_ADDR=0\.0\.0\.0:3000\b", env), where, "ENV GATEWAY_ADDR=0.0.0.0:3000")
    distroless = "distroless" in base
    runs = " ".join(r for i, r in final if i == "RUN")
    compose = (ROOT / "infra/compose.yaml").read_text(encoding="utf-8")
    if re.search(r'"CMD",\s*"curl"', compose):
        p.expect(not distroless and re.search(r"install[^&;]*\bcurl\b", runs), where,
                 "infra/compose.yaml's health checks run curl: the final stage must install it")
    if any("/bin/sleep" in f.read_text() for f in (ROOT / "infra/k8s").glob("*.yaml")):
        p.expect(not distroless, where, "infra/k8s runs /bin/sleep in a preStop hook: a distroless base has none")
    ignore = ROOT / "infra/Dockerfile.dockerignore"
    if p.expect(ignore.exists(), "infra/Dockerfile.dockerignore", "missing (the context is the repository root)"):
        pats = {l.strip() for l in ignore.read_text().splitlines() if l.strip() and not l.startswith("#")}
        for pat in (".git", ".run", "**/target", "**/node_modules"):
            p.expect(pat in pats, "infra/Dockerfile.dockerignore", f"should exclude {pat}")
    p.done()


# ---------------------------------------------------------------- compose
def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


def health_url(svc):
    test = svc.get("healthcheck", {}).get("test", [])
    text = " ".join(test) if isinstance(test, list) else str(test)
    m = re.search(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/\S*)", text)
    return (int(m.group(1)), m.group(2)) if m else (None, None)


def check_compose():
    p = Problems("infra/compose.yaml (semantics) and infra/compose/nginx.conf")
    where = "infra/compose.yaml"
    c = load_yaml(ROOT / where)
    svcs = c.get("services", {})
    for name in ("redis", "gateway", "proxy", *ROLES):
        p.expect(name in svcs, where, f"no service {name}")
    redis = svcs.get("redis", {})
    cmd = redis.get("command", [])
    cmd = " ".join(cmd) if isinstance(cmd, list) else str(cmd)
    p.expect("--appendonly yes" in cmd, f"{where}: redis", "AOF: redis-server --appendonly yes")
    p.expect(any(str(v).split(":")[1:2] == ["/data"] for v in redis.get("volumes", [])), f"{where}: redis",
             "a volume on /data")
    p.expect("healthcheck" in redis, f"{where}: redis", "no health check")

    gw = svcs.get("gateway", {})
    p.expect((gw.get("deploy") or {}).get("replicas", 1) >= 2, f"{where}: gateway", "two gateways or more (deploy.replicas)")
    gw_port = port_of(gw.get("environment", {}).get("GATEWAY_ADDR", "0.0.0.0:3000"))
    p.expect(health_url(gw) == (gw_port, "/readyz"), f"{where}: gateway", f"health check must GET /readyz on {gw_port}")
    for role in ROLES:
        s = svcs.get(role, {})
        w = f"{where}: {role}"
        p.expect(isinstance((s.get("deploy") or {}).get("replicas"), int), w, "needs its own deploy.replicas")
        p.expect(s.get("command") == ["/app/workers", role], w, f"command must be [/app/workers, {role}]")
        addr = s.get("environment", {}).get("METRICS_ADDR")
        if p.expect(addr, w, "METRICS_ADDR unset: the worker serves no /readyz"):
            p.expect(health_url(s) == (port_of(addr), "/readyz"), w, f"health check must GET /readyz on {port_of(addr)}")
    for name, s in svcs.items():
        w = f"{where}: {name}"
        if (s.get("deploy") or {}).get("replicas", 1) > 1:
            p.expect("container_name" not in s and not s.get("ports"), w,
                     "a replicated service can have no container_name nor published ports")
        env = s.get("environment", {})
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
        for k, v in env.items():
            if "KEY" in k or "SECRET" in k or "TOKEN" in k or "PASSWORD" in k:
                p.expect(v is None or re.fullmatch(r"\$\{\w+(:?[-?][^}]*)?\}", str(v)) and "sk-" not in str(v), w,
                         f"{k} must come from the environment (${{{k}}}), never be written here")
        for vol in s.get("volumes", []):
            src = str(vol).split(":")[0]
            if src.startswith("."):
                p.expect((ROOT / "infra" / src).exists(), w, f"mounts {src}, which does not exist")
    p.expect("OPENAI_API_KEY" in svcs.get("completion", {}).get("environment", {}), f"{where}: completion",
             "OPENAI_API_KEY is not passed to the completion workers")

    nginx = (ROOT / "infra/compose/nginx.conf").read_text(encoding="utf-8")
    n = "infra/compose/nginx.conf"
    body = re.sub(r"#[^\n]*", "", nginx)
    p.expect(body.count("{") == body.count("}"), n, "unbalanced braces")
    m = re.search(r"location\s+/ws\s*\{([^}]*)\}", body)
    if p.expect(m, n, "no `location /ws` block"):
        ws = m.group(1)
        p.expect("proxy_http_version 1.1" in ws or re.search(r"^\s*proxy_http_version 1\.1;", body, re.M), n,
                 "proxy_http_version 1.1")
        p.expect(re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade;", ws), n, "/ws: proxy_set_header Upgrade $http_upgrade")
        p.expect(re.search(r"proxy_set_header\s+Connection\s+(\$connection_upgrade|\"upgrade\");", ws), n,
                 "/ws: proxy_set_header Connection upgrade")
        t = re.search(r"proxy_read_timeout\s+(\d+)s?;", ws)
        p.expect(t and int(t.group(1)) >= 300, n, "/ws: proxy_read_timeout of 300 s or more")
        p.expect(re.search(r"proxy_pass\s+\S+;", ws), n, "/ws: no proxy_pass")
    p.expect(re.search(r"map\s+\$http_upgrade\s+\$connection_upgrade", body) or "$connection_upgrade" not in body, n,
             "$connection_upgrade is used but not defined by a map")
    for line in re.findall(r"\bproxy_pass\s+(\S+);", body):
        p.expect(line.startswith("$") or "gateway" in line, n, f"proxy_pass {line} does not reach the gateways")
    p.done()


# ---------------------------------------------------------------- Kubernetes
def container_port(container, ref):
    for port in container.get("ports", []):
        if ref in (port.get("name"), port.get("containerPort")):
            return port["containerPort"]
    return None


def probe_target(container, probe):
    get = container.get(probe, {}).get("httpGet", {})
    return get.get("path"), container_port(container, get.get("port"))


def cpu(v):
    v = str(v)
    return float(v[:-1]) / 1000 if v.endswith("m") else float(v)


def check_k8s():
    p = Problems("infra/k8s/ (policy)")
    objs = []
    for f in sorted((ROOT / "infra/k8s").glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        for d in load_docs(f):
            objs.append((f"infra/k8s/{f.name}", d))
    by_kind = {}
    for f, d in objs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = (f, d)
    deps = by_kind.get("Deployment", {})
    roles = {}
    for name, (f, d) in deps.items():
        c = d["spec"]["template"]["spec"]["containers"][0]
        cmd = c.get("command", [])
        role = "gateway" if cmd == ["/app/gateway"] else (cmd[1] if cmd[:1] == ["/app/workers"] and len(cmd) == 2 else None)
        p.expect(role in ("gateway", *ROLES), f"{f}: {name}", f"runs neither the gateway nor a worker role: {cmd}")
        p.expect(role not in roles, f"{f}: {name}", f"a second Deployment for {role}")
        roles[role] = (f, d)
    for role in ("gateway", *ROLES):
        p.expect(role in roles, "infra/k8s", f"no Deployment for {role}")
    cms = by_kind.get("ConfigMap", {})
    secrets = by_kind.get("Secret", {})
    images = set()
    for role, (f, d) in roles.items():
        w = f"{f}: {d['metadata']['name']}"
        spec = d["spec"]
        tmpl = spec["template"]
        sel = spec["selector"]["matchLabels"]
        p.expect(all(tmpl["metadata"].get("labels", {}).get(k) == v for k, v in sel.items()), w,
                 "selector does not match the pod labels")
        ps = tmpl["spec"]
        psc = ps.get("securityContext", {})
        grace = ps.get("terminationGracePeriodSeconds", 30)
        for c in ps["containers"]:
            cw = f"{w} container {c['name']}"
            images.add(c.get("image"))
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    p.expect(r in res.get(kind, {}), cw, f"resources.{kind}.{r} missing")
            if all(r in res.get(k, {}) for k in ("requests", "limits") for r in ("cpu",)):
                p.expect(cpu(res["requests"]["cpu"]) <= cpu(res["limits"]["cpu"]), cw, "cpu request above its limit")
            sc = {**psc, **c.get("securityContext", {})}
            p.expect(sc.get("runAsNonRoot") is True, cw, "securityContext.runAsNonRoot: true")
            p.expect(isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] > 0, cw, "securityContext.runAsUser non-zero")
            csc = c.get("securityContext", {})
            p.expect(csc.get("readOnlyRootFilesystem") is True, cw, "readOnlyRootFilesystem: true")
            p.expect(csc.get("allowPrivilegeEscalation") is False, cw, "allowPrivilegeEscalation: false")
            p.expect("ALL" in csc.get("capabilities", {}).get("drop", []), cw, "capabilities.drop: [ALL]")
            env = {e["name"]: e for e in c.get("env", [])}
            if role == "gateway":
                port = port_of(env.get("GATEWAY_ADDR", {}).get("value", "0.0.0.0:3000"))
            else:
                addr = env.get("METRICS_ADDR", {}).get("value")
                p.expect(addr, cw, "METRICS_ADDR unset: the worker serves no probes")
                port = port_of(addr) if addr else None
            p.expect(probe_target(c, "readinessProbe") == ("/readyz", port), cw, f"readinessProbe must GET /readyz on {port}")
            p.expect(probe_target(c, "livenessProbe") == ("/healthz", port), cw, f"livenessProbe must GET /healthz on {port}")
            ann = tmpl["metadata"].get("annotations", {})
            if ann.get("prometheus.io/scrape") == "true":
                p.expect(ann.get("prometheus.io/port") == str(port), w, f"prometheus.io/port should be {port}")
            for src in c.get("envFrom", []):
                ref = src.get("configMapRef", {}).get("name")
                p.expect(ref is None or ref in cms, cw, f"envFrom ConfigMap {ref} is not in infra/k8s")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    s = secrets.get(ref["name"])
                    keys = set((s[1].get("stringData") or {}) | (s[1].get("data") or {})) if s else set()
                    p.expect(ref["key"] in keys, cw, f"Secret {ref['name']} has no key {ref['key']}")
            p.expect("OPENAI_API_KEY" not in env or "valueFrom" in env["OPENAI_API_KEY"], cw,
                     "OPENAI_API_KEY must come from a Secret")
            pre = c.get("lifecycle", {}).get("preStop", {})
            pause = pre.get("sleep", {}).get("seconds")
            cmd = pre.get("exec", {}).get("command", [])
            if pause is None and len(cmd) == 2 and cmd[0].endswith("sleep"):
                pause = int(cmd[1])
            if role == "gateway":
                p.expect(pause and pause > 0, cw, "preStop pause (sleep) so endpoints go before SIGTERM")
                p.expect(grace >= (pause or 0) + 20, w,
                         f"terminationGracePeriodSeconds {grace} leaves under 20 s of drain after the preStop pause")
            if role == "completion":
                p.expect("OPENAI_API_KEY" in env, cw, "no OPENAI_API_KEY from the Secret")
                p.expect(grace >= 8 + 30, w, f"terminationGracePeriodSeconds {grace}: running answers get 8 s, plus room")
            p.expect(grace >= 30, w, f"terminationGracePeriodSeconds {grace} < 30")
        p.expect(ps.get("automountServiceAccountToken") is False, w, "automountServiceAccountToken: false (no API access needed)")
    p.expect(len(images) == 1, "infra/k8s", f"every role should run the one image, not {sorted(images)}")
    for name, (f, d) in cms.items():
        for k, v in d.get("data", {}).items():
            p.expect("KEY" not in k and "PASSWORD" not in k, f"{f}: {name}", f"{k} belongs in a Secret")

    pdbs = by_kind.get("PodDisruptionBudget", {})
    for role, (f, d) in roles.items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        match = [n for n, (_, b) in pdbs.items()
                 if all(labels.get(k) == v for k, v in b["spec"]["selector"]["matchLabels"].items())]
        p.expect(len(match) == 1, f"{f}: {d['metadata']['name']}", f"wants exactly one PodDisruptionBudget, has {match}")
    for n, (f, b) in pdbs.items():
        p.expect("minAvailable" not in b["spec"] or b["spec"]["minAvailable"] != "100%", f"{f}: {n}", "blocks every eviction")

    gw_f, gw = roles.get("gateway", (None, None))
    services = by_kind.get("Service", {})
    gw_svcs = {}
    if gw:
        labels = gw["spec"]["template"]["metadata"]["labels"]
        c = gw["spec"]["template"]["spec"]["containers"][0]
        for n, (f, s) in services.items():
            if s["spec"].get("selector") and all(labels.get(k) == v for k, v in s["spec"]["selector"].items()):
                gw_svcs[n] = s
                for port in s["spec"]["ports"]:
                    p.expect(container_port(c, port.get("targetPort", port["port"])), f"{f}: {n}",
                             f"targetPort {port.get('targetPort')} is no port of the gateway")
    p.expect(gw_svcs, "infra/k8s", "no Service selects the gateway pods")
    ingresses = by_kind.get("Ingress", {})
    p.expect(ingresses, "infra/k8s", "no Ingress")
    for n, (f, ing) in ingresses.items():
        ann = ing["metadata"].get("annotations", {})
        paths = [pth for r in ing["spec"].get("rules", []) for pth in r.get("http", {}).get("paths", [])]
        for pth in paths:
            svc = pth["backend"]["service"]
            s = gw_svcs.get(svc["name"])
            ok = s and any(svc["port"].get("name") == sp.get("name") or svc["port"].get("number") == sp["port"]
                           for sp in s["spec"]["ports"])
            p.expect(ok, f"{f}: {n}", f"backend {svc} is no port of a gateway Service")
        if any(pth["path"] == "/" for pth in paths):
            for a in ("proxy-read-timeout", "proxy-send-timeout"):
                v = ann.get(f"nginx.ingress.kubernetes.io/{a}")
                p.expect(v and v.isdigit() and int(v) >= 300, f"{f}: {n}", f"{a} of 300 s or more for WebSockets")
    p.done()


if __name__ == "__main__":
    {"dockerfile": check_dockerfile, "compose": check_compose, "k8s": check_k8s}[sys.argv[1]]()
