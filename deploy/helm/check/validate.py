"""Validates rendered manifests: every object strictly against the Kubernetes schemas
(kubernetes-validate), the custom resources against crds.py, and the chart's promises
(security context, probes, selectors that select, KEDA watching every lane). Any kind
without a schema, and any removed API, is a failure, not a warning.

Usage: validate.py --kube-version 1.32 rendered.yaml...
"""

import argparse
import re
import sys

import jsonschema
import kubernetes_validate
import yaml

import crds

WORKLOADS = ("Deployment", "StatefulSet")


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def name(o):
    return f"{o.get('kind')}/{o.get('metadata', {}).get('name')}"


def pod_spec(o):
    if o["kind"] in WORKLOADS:
        return o["spec"]["template"]["spec"], o["spec"]["template"]["metadata"].get("labels", {})
    if o["kind"] == "Pod":
        return o["spec"], o["metadata"].get("labels", {})
    return None, None


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


class Checker:
    def __init__(self, path, objs, kube_version):
        self.path, self.objs, self.kube_version = path, objs, kube_version
        self.errors = []

    def fail(self, o, msg):
        self.errors.append(f"{self.path}: {name(o)}: {msg}")

    def schemas(self):
        for o in self.objs:
            key = (o.get("apiVersion"), o.get("kind"))
            if key in crds.SCHEMAS:
                for e in jsonschema.Draft7Validator(crds.SCHEMAS[key]).iter_errors(o):
                    self.fail(o, f"{'/'.join(map(str, e.absolute_path))}: {e.message}")
                continue
            try:
                kubernetes_validate.validate(o, self.kube_version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                self.fail(o, f"no schema for {key[0]} {key[1]} in Kubernetes {self.kube_version} "
                             "(a removed API, or a custom resource crds.py does not know)")
            except kubernetes_validate.ValidationError as e:
                self.fail(o, f"{'/'.join(map(str, e.path))}: {e.message}")

    def pods(self):
        """Non-root, read-only root filesystem, no capabilities, RuntimeDefault seccomp."""
        for o in self.objs:
            spec, _ = pod_spec(o)
            if spec is None:
                continue
            psc = spec.get("securityContext", {})
            if not psc.get("runAsNonRoot"):
                self.fail(o, "pod securityContext.runAsNonRoot is not true")
            if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                self.fail(o, "pod seccompProfile is not RuntimeDefault")
            if spec.get("automountServiceAccountToken") is not False:
                self.fail(o, "the service account token is mounted (nothing here calls the API)")
            for c in spec.get("containers", []):
                sc = c.get("securityContext", {})
                if not sc.get("readOnlyRootFilesystem"):
                    self.fail(o, f"container {c['name']}: root filesystem not read-only")
                if sc.get("allowPrivilegeEscalation") is not False:
                    self.fail(o, f"container {c['name']}: privilege escalation allowed")
                if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                    self.fail(o, f"container {c['name']}: capabilities not all dropped")
                if "resources" not in c or "requests" not in c["resources"]:
                    self.fail(o, f"container {c['name']}: no resource requests")
                for var in c.get("env", []):
                    if "value" in var and re.search(r"(?i)password|secret|token", var["name"]):
                        self.fail(o, f"container {c['name']}: {var['name']} is a literal, not from a Secret")

    def ingress_probes(self):
        for o in self.objs:
            spec, labels = pod_spec(o)
            if spec is None or labels.get("app.kubernetes.io/component") != "ingress":
                continue
            c = spec["containers"][0]
            for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                if c.get(probe, {}).get("httpGet", {}).get("path") != path:
                    self.fail(o, f"{probe} is not an httpGet of {path}")
            drain = next((int(v["value"]) for v in c["env"] if v["name"] == "DRAIN_TIMEOUT_SECS"), None)
            pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            if drain is None or spec.get("terminationGracePeriodSeconds", 30) < drain + pre + 5:
                self.fail(o, "terminationGracePeriodSeconds does not cover preStop + DRAIN_TIMEOUT_SECS")

    def selectors(self):
        """Services, PDBs, monitors and network policies select pods the chart makes; named
        target ports exist; autoscalers target workloads that exist, never two on one."""
        pods = [(o, *pod_spec(o)) for o in self.objs if o["kind"] in WORKLOADS]
        workloads = {(o["kind"], o["metadata"]["name"]) for o in self.objs if o["kind"] in WORKLOADS}
        for o in self.objs:
            kind = o["kind"]
            if kind == "Service":
                sel = o["spec"].get("selector", {})
                matched = [(w, s) for w, s, l in pods if selects(sel, l)]
                if not matched:
                    self.fail(o, "selects no pod of the chart")
                for port in o["spec"]["ports"]:
                    t = port.get("targetPort")
                    for w, s in matched:
                        names = {p.get("name") for c in s["containers"] for p in c.get("ports", [])}
                        if isinstance(t, str) and t not in names:
                            self.fail(o, f"targetPort {t} is not a port of {name(w)}")
            elif kind in ("PodDisruptionBudget", "PodMonitor", "ServiceMonitor", "NetworkPolicy"):
                sel = (o["spec"].get("podSelector") if kind == "NetworkPolicy" else o["spec"]["selector"]).get("matchLabels", {})
                if kind == "ServiceMonitor":
                    targets = [s["metadata"].get("labels", {}) for s in self.objs if s["kind"] == "Service"]
                else:
                    targets = [l for _, _, l in pods]
                if not any(selects(sel, l) for l in targets):
                    self.fail(o, "selects nothing the chart makes")
        targets = {}
        for o in self.objs:
            if o["kind"] == "HorizontalPodAutoscaler":
                ref = o["spec"]["scaleTargetRef"]
            elif o["kind"] == "ScaledObject":
                ref = dict(o["spec"]["scaleTargetRef"], kind=o["spec"]["scaleTargetRef"].get("kind", "Deployment"))
            else:
                continue
            key = (ref["kind"], ref["name"])
            if key not in workloads:
                self.fail(o, f"scales {key}, which the chart does not make")
            if key in targets:
                self.fail(o, f"{key} is already scaled by {targets[key]} (KEDA refuses a target with an HPA)")
            targets[key] = name(o)
            if "replicas" in next(w for w in self.objs if (w["kind"], w["metadata"]["name"]) == key)["spec"]:
                self.fail(o, f"{key} sets replicas, which the autoscaler owns")

    def keda(self):
        """The trigger sums every lane of the work queue, ready and unacknowledged."""
        auths = {o["metadata"]["name"]: o for o in self.objs if o["kind"] == "TriggerAuthentication"}
        env = {}
        for o in self.objs:
            spec, labels = pod_spec(o)
            if spec and labels.get("app.kubernetes.io/component") == "consumer":
                env = {v["name"]: v.get("value") for v in spec["containers"][0]["env"]}
        for o in self.objs:
            if o["kind"] != "ScaledObject":
                continue
            for t in o["spec"]["triggers"]:
                if t["type"] != "rabbitmq":
                    continue
                md = t["metadata"]
                for k in set(md) - crds.RABBITMQ_TRIGGER_METADATA:
                    self.fail(o, f"trigger metadata {k} is not a rabbitmq scaler parameter")
                want = {"protocol": "http", "mode": "QueueLength", "useRegex": "true", "operation": "sum"}
                for k, v in want.items():
                    if md.get(k) != v:
                        self.fail(o, f"trigger {k} is {md.get(k)!r}, not {v!r} (every lane, summed, with the jobs in hand)")
                if md.get("excludeUnacknowledged", "false") != "false":
                    self.fail(o, "excludeUnacknowledged would hide the jobs consumers hold")
                prefix, lanes = env.get("AMQP_PREFIX"), int(env.get("JOB_LANES", "0"))
                rx = re.compile(md["queueName"])
                queues = [f"{prefix}.jobs.work"] + [f"{prefix}.jobs.work.{n}" for n in range(lanes)]
                missed = [q for q in queues if not rx.search(q)]
                extra = [q for q in (f"{prefix}.jobs.dead", f"{prefix}.jobs.retry.5", f"{prefix}.events", f"{prefix}x.jobs.work.1") if rx.search(q)]
                if missed or extra or not lanes:
                    self.fail(o, f"queueName {md['queueName']!r}: misses {missed[:3]}, matches {extra[:3]}")
                if int(md.get("pageSize", "100")) < len(queues):
                    self.fail(o, "pageSize is smaller than the lanes: KEDA refuses a second page")
                ref = t.get("authenticationRef", {}).get("name")
                if ref not in auths:
                    self.fail(o, f"authenticationRef {ref} is not rendered")
                else:
                    for p in auths[ref]["spec"].get("secretTargetRef", []):
                        if p["parameter"] not in crds.RABBITMQ_AUTH_PARAMETERS:
                            self.fail(auths[ref], f"{p['parameter']} is not a rabbitmq scaler parameter")

    def rabbitmq_cluster(self):
        for o in self.objs:
            if o["kind"] == "RabbitmqCluster":
                plugins = o["spec"].get("rabbitmq", {}).get("additionalPlugins", [])
                if "rabbitmq_consistent_hash_exchange" not in plugins:
                    self.fail(o, "the lanes need the rabbitmq_consistent_hash_exchange plugin")

    def run(self):
        self.schemas()
        if self.errors:
            return self.errors
        for check in (self.pods, self.ingress_probes, self.selectors, self.keda, self.rabbitmq_cluster):
            check()
        return self.errors


def dockerfile(path, objs):
    """The image the chart runs: every binary its containers name is copied into the final
    stage's /usr/local/bin, the examples the helm test submits are there, the user is a
    numeric non-root one (runAsNonRoot can only verify a numeric user), and no shell
    command runs at run time."""
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"\\\n", " ", f.read())
    final = text.split("\nFROM ")[-1]
    errors = []
    built = set(re.findall(r"target/release/([a-z-]+)", text))
    if "COPY --from=build /out/bin/ /usr/local/bin/" not in final:
        errors.append("the final stage does not copy the binaries to /usr/local/bin")
    if "COPY examples/ /examples/" not in final:
        errors.append("the final stage does not copy examples/ (the helm test submits one)")
    user = re.findall(r"^USER\s+(\S+)", final, re.M)
    if not user or not re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user[-1]):
        errors.append("the final USER is not a numeric non-root user")
    if re.search(r"^(RUN|CMD|ENTRYPOINT)\s+[^\[]", final, re.M):
        errors.append("the final stage runs a shell form command (the image has no shell)")
    for o in objs:
        spec, _ = pod_spec(o)
        for c in (spec or {}).get("containers", []):
            if c.get("command") and c["command"][0] not in built:
                errors.append(f"{name(o)} runs {c['command'][0]}, which the Dockerfile does not build")
    return [f"{path}: {e}" for e in errors]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kube-version", required=True)
    ap.add_argument("--dockerfile")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    errors, total = [], 0
    for path in args.files:
        objs = load(path)
        total += len(objs)
        errors += Checker(path, objs, args.kube_version).run()
        if args.dockerfile:
            errors += dockerfile(args.dockerfile, objs)
    for e in errors:
        print(f"k8s-check: {e}", file=sys.stderr)
    if errors:
        sys.exit(f"k8s-check: {len(errors)} problem(s) in the rendered manifests")
    print(f"k8s-check: {total} rendered objects in {len(args.files)} renderings valid (Kubernetes {args.kube_version}, strict)")


if __name__ == "__main__":
    main()
