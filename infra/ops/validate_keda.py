"""Validates the KEDA ScaledObjects against KEDA's CRD schema, vendored in infra/keda/schema/.

- The vendored file is intact (the sha256 in its header matches what follows the header).
- Every document of infra/keda/scaledobjects.yaml is a keda.sh ScaledObject that validates
  against the CRD's openAPIV3Schema for its version (JSON Schema draft 7; x-kubernetes-*
  keys ignored, except that x-kubernetes-preserve-unknown-fields allows unknown keys), and
  strictly: an object schema with `properties` and no `additionalProperties` rejects
  unknown keys, as the API server does (metadata is checked against the ObjectMeta fields a
  manifest may carry).
- Semantics the issue asks for: one ScaledObject per worker role, each targeting an existing
  Deployment of infra/k8s/, with exactly one Prometheus trigger; persistence capped at
  STREAM_PARTITIONS (from the ConfigMap); completion allowed down to zero; min <= max.
- The kustomizations: infra/k8s/kustomization.yaml lists every manifest of infra/k8s/, and
  infra/keda/kustomization.yaml builds on it, adds the ScaledObjects and removes `replicas`
  from exactly the Deployments KEDA scales.
"""

import copy
import hashlib
import re
import sys
from pathlib import Path

import jsonschema
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from opslib import ROOT, Problems, load_docs, load_yaml  # noqa: E402

CRD = ROOT / "infra/keda/schema/keda.sh_scaledobjects.yaml"
SCALED = ROOT / "infra/keda/scaledobjects.yaml"
K8S = ROOT / "infra/k8s"
ROLES = ("persistence", "completion", "cleanup")

OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def strict(schema):
    """The CRD schema as strict JSON Schema."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    out = {k: strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def vendored_body(text):
    """(declared sha256, body) of the vendored CRD: the header is the leading comment block."""
    lines = text.splitlines(keepends=True)
    n = 0
    while n < len(lines) and lines[n].startswith("#"):
        n += 1
    m = re.search(r"sha256:\s*([0-9a-f]{64})", "".join(lines[:n]))
    return (m.group(1) if m else None), "".join(lines[n:])


def main():
    p = Problems("KEDA ScaledObjects against the vendored CRD schema, kustomizations")

    text = CRD.read_text(encoding="utf-8")
    declared, body = vendored_body(text)
    p.expect(declared and hashlib.sha256(body.encode()).hexdigest() == declared,
             "infra/keda/schema/keda.sh_scaledobjects.yaml",
             "sha256 in the header does not match the vendored text (edited by hand?)")
    crd = yaml.safe_load(body)
    p.expect(crd.get("kind") == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == "ScaledObject",
             "infra/keda/schema/keda.sh_scaledobjects.yaml", "is not the ScaledObject CRD")
    group = crd["spec"]["group"]
    schemas = {}
    for v in crd["spec"]["versions"]:
        s = strict(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
        s["properties"]["metadata"] = OBJECT_META
        s["required"] = sorted(set(s.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
        s["$schema"] = "http://json-schema.org/draft-07/schema#"
        jsonschema.Draft7Validator.check_schema(s)
        schemas[f"{group}/{v['name']}"] = s

    # Deployments and the partition count of infra/k8s/
    deployments, config = {}, {}
    for f in sorted(K8S.glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        for d in load_docs(f):
            if d.get("kind") == "Deployment":
                deployments[d["metadata"]["name"]] = d
            if d.get("kind") == "ConfigMap":
                config.update(d.get("data", {}))
    partitions = int(config.get("STREAM_PARTITIONS", 16))

    by_role = {}
    for doc in load_docs(SCALED):
        name = doc.get("metadata", {}).get("name", "?")
        where = f"infra/keda/scaledobjects.yaml: {name}"
        if not p.expect(doc.get("kind") == "ScaledObject" and doc.get("apiVersion") in schemas, where,
                        f"not a ScaledObject of {sorted(schemas)}"):
            continue
        errors = sorted(jsonschema.Draft7Validator(schemas[doc["apiVersion"]]).iter_errors(doc),
                        key=lambda e: list(e.absolute_path))
        for e in errors:
            path = ".".join(str(x) for x in e.absolute_path) or "(top)"
            p.fail(where, f"{path}: {e.message}")
        p.ok()
        spec = doc.get("spec", {})
        target = spec.get("scaleTargetRef", {})
        dep = deployments.get(target.get("name"))
        p.expect(target.get("kind", "Deployment") == "Deployment" and dep is not None, where,
                 f"scaleTargetRef {target.get('name')!r} is no Deployment of infra/k8s/")
        role = None
        if dep:
            cmd = dep["spec"]["template"]["spec"]["containers"][0].get("command", [])
            role = cmd[1] if len(cmd) == 2 and cmd[0] == "/app/workers" else None
            p.expect(role in ROLES, where, f"targets {target.get('name')}, which runs no worker role ({cmd})")
            p.expect(role not in by_role, where, f"a second ScaledObject for {role}")
            by_role[role] = spec
        lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if isinstance(lo, int) and isinstance(hi, int):
            p.expect(lo <= hi, where, f"minReplicaCount {lo} > maxReplicaCount {hi}")
        triggers = spec.get("triggers", [])
        p.expect(len(triggers) == 1 and triggers[0].get("type") == "prometheus", where,
                 "one Prometheus trigger (the summed backlog of every partition)")
        for t in triggers:
            md = t.get("metadata", {})
            for key in ("serverAddress", "query", "threshold"):
                p.expect(md.get(key), where, f"trigger without {key}")
            for key in ("threshold", "activationThreshold"):
                if key in md:
                    p.expect(re.fullmatch(r"\d+(\.\d+)?", md[key]), where, f"{key} must be a number")
            q = md.get("query", "")
            if role in ("persistence", "completion"):
                p.expect("max by (stream)" in q, where,
                         "every process exports the lag: aggregate with max by (stream) before summing")
    for role in ROLES:
        p.expect(role in by_role, "infra/keda/scaledobjects.yaml", f"no ScaledObject for the {role} role")
    if "persistence" in by_role:
        p.expect(by_role["persistence"].get("maxReplicaCount") == partitions, "infra/keda/scaledobjects.yaml",
                 f"persistence maxReplicaCount must be STREAM_PARTITIONS ({partitions})")
    if "completion" in by_role:
        p.expect(by_role["completion"].get("minReplicaCount") == 0, "infra/keda/scaledobjects.yaml",
                 "completion should scale to zero (minReplicaCount 0)")

    # ------------------------------------------------------------ kustomizations
    kz = load_yaml(K8S / "kustomization.yaml")
    listed = [r.split("#")[0].strip() for r in kz.get("resources", [])]
    present = sorted(f.name for f in K8S.glob("*.yaml") if f.name != "kustomization.yaml")
    p.expect(sorted(listed) == present, "infra/k8s/kustomization.yaml",
             f"resources {sorted(listed)} should be exactly the manifests {present}")
    kk = load_yaml(ROOT / "infra/keda/kustomization.yaml")
    p.expect(sorted(kk.get("resources", [])) == ["../k8s", "scaledobjects.yaml"], "infra/keda/kustomization.yaml",
             "resources should be ../k8s and scaledobjects.yaml")
    scaled = {n for n, d in deployments.items()
              if d["spec"]["template"]["spec"]["containers"][0].get("command", [""])[-1] in by_role}
    patched = set()
    for patch in kk.get("patches", []):
        t = patch.get("target", {})
        ops = yaml.safe_load(patch.get("patch", "[]"))
        if t.get("kind") == "Deployment" and ops == [{"op": "remove", "path": "/spec/replicas"}]:
            patched |= {n for n in deployments if re.fullmatch(t.get("name", ".*"), n)}
    p.expect(patched == scaled, "infra/keda/kustomization.yaml",
             f"`replicas` removed from {sorted(patched)}, but KEDA scales {sorted(scaled)}")
    for n in scaled:
        p.expect("replicas" in deployments[n]["spec"], f"infra/k8s: {n}",
                 "keep `replicas` for use without KEDA (the KEDA overlay removes it)")
    p.done()


if __name__ == "__main__":
    main()
