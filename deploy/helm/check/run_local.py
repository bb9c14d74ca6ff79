"""Runs a rendering of the chart on this machine, so that the chart cannot drift from the
binaries' settings: every Deployment's and StatefulSet's containers start as local
processes with exactly the command, arguments and environment the chart gives them
(Secrets and ConfigMaps resolved from the rendering, `$(VAR)` expanded as the kubelet
does, volumes as local folders, Services' names and ports mapped to 127.0.0.1 and free
ports), each must pass its own probes, and then the chart's `helm test` pod runs the same
way and must see its job reach SUCCESS. Last, every process gets SIGTERM and must exit
within its pod's terminationGracePeriodSeconds.

Also checked: every environment variable a container sets is one its binary reads (its
`--help` lists it), or one another variable expands; a misspelt name would otherwise be
ignored silently.

The broker is the private RabbitMQ node (AMQP_URL in the environment); the rendering gets
it through rabbitmq.url, so it reaches the processes through the chart's Secret. Each run
has its own AMQP_PREFIX.

Usage: run_local.py --helm H --chart C --values V --bin-dir target/debug --examples examples
"""

import argparse
import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import yaml

OUT = "target/k8s-check/run"
READY_DEADLINE = 180
# Variables a container may set that no binary's --help names: the TLS roots of the
# rustls platform verifier and the log filter.
AMBIENT = {"SSL_CERT_FILE", "RUST_LOG"}


def log(msg):
    print(f"k8s-check: run: {msg}", flush=True)


def fail(msg):
    sys.exit(f"k8s-check: run: {msg}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(args, prefix):
    override = os.path.join(OUT, "override-values.yaml")
    with open(override, "w", encoding="utf-8") as f:
        yaml.safe_dump({"rabbitmq": {"url": os.environ["AMQP_URL"]}, "amqp": {"prefix": prefix}}, f)
    cmd = [args.helm, "template", "imagejobs", args.chart, "-f", args.values, "-f", override, "--namespace", "imagejobs"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        fail(f"helm template failed: {r.stderr}")
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def binary_env_names(path, sub):
    """The environment variables a binary (or a subcommand of it) reads, from its --help."""
    cmd = [path] + ([sub] if sub else []) + ["--help"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        fail(f"{' '.join(cmd)} failed: {r.stderr}")
    return set(re.findall(r"\[env: ([A-Z0-9_]+)", r.stdout))


class Rendering:
    def __init__(self, objs, workdir):
        self.objs, self.workdir = objs, workdir
        self.secrets, self.configmaps = {}, {}
        for o in objs:
            if o["kind"] == "Secret":
                data = {k: base64.b64decode(v).decode() for k, v in (o.get("data") or {}).items()}
                data.update(o.get("stringData") or {})
                self.secrets[o["metadata"]["name"]] = data
            elif o["kind"] == "ConfigMap":
                self.configmaps[o["metadata"]["name"]] = o.get("data") or {}
        self.workloads = [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]
        self.tests = [o for o in objs if o["kind"] == "Pod"
                      and o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
        # Every container port of every workload gets a free local port.
        self.local = {}
        for w in self.workloads:
            for c in w["spec"]["template"]["spec"]["containers"]:
                for p in c.get("ports", []):
                    self.local[(w["metadata"]["name"], p["containerPort"])] = free_port()
        # Service name (and its DNS forms) and port -> the local port of the pod behind it.
        self.hosts = {}
        for s in (o for o in objs if o["kind"] == "Service"):
            sel = s["spec"].get("selector", {})
            for w in self.workloads:
                labels = w["spec"]["template"]["metadata"]["labels"]
                if not sel or any(labels.get(k) != v for k, v in sel.items()):
                    continue
                for sp in s["spec"]["ports"]:
                    target = self.container_port(w, sp.get("targetPort", sp["port"]))
                    n, ns = s["metadata"]["name"], "imagejobs"
                    for alias in (n, f"{n}.{ns}", f"{n}.{ns}.svc", f"{n}.{ns}.svc.cluster.local"):
                        self.hosts[(alias, sp["port"])] = self.local[(w["metadata"]["name"], target)]

    @staticmethod
    def container_port(w, port):
        if isinstance(port, int):
            return port
        for c in w["spec"]["template"]["spec"]["containers"]:
            for p in c.get("ports", []):
                if p.get("name") == port:
                    return p["containerPort"]
        fail(f"{w['metadata']['name']}: no container port named {port}")

    def map_hosts(self, value):
        for (alias, port), local in self.hosts.items():
            value = re.sub(rf"(?<=[/@]){re.escape(alias)}:{port}(?=[/,]|$)", f"127.0.0.1:{local}", value)
            scheme_port = {80: "http", 443: "https"}.get(port)
            if scheme_port:
                value = re.sub(rf"{scheme_port}://{re.escape(alias)}(?=[/,]|$)", f"{scheme_port}://127.0.0.1:{local}", value)
        return value

    def volumes(self, owner, spec, container):
        """Mount path -> local folder; secret and configMap volumes written out as files."""
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = {}
        for m in container.get("volumeMounts", []):
            d = os.path.join(self.workdir, owner, m["name"])
            os.makedirs(d, exist_ok=True)
            v = vols.get(m["name"], {})
            if "secret" in v:
                data = self.secrets.get(v["secret"]["secretName"])
                if data is None:
                    fail(f"{owner}: volume {m['name']}: Secret {v['secret']['secretName']} is not in the rendering")
                for k, val in data.items():
                    with open(os.path.join(d, k), "w", encoding="utf-8") as f:
                        f.write(val)
            elif "configMap" in v:
                for k, val in self.configmaps.get(v["configMap"]["name"], {}).items():
                    with open(os.path.join(d, k), "w", encoding="utf-8") as f:
                        f.write(val)
            mounts[m["mountPath"]] = d
        return mounts

    def environment(self, owner, container, mounts, own_ports):
        env = {}
        for var in container.get("env", []):
            if "value" in var:
                # $(NAME) of a variable defined before it; $$ escapes, as the kubelet does.
                value = re.sub(r"\$\$|\$\(([A-Za-z0-9_]+)\)",
                               lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
                               str(var["value"]))
            else:
                ref = var["valueFrom"]
                if "secretKeyRef" in ref:
                    r = ref["secretKeyRef"]
                    value = self.secrets.get(r["name"], {}).get(r["key"])
                    where = f"Secret {r['name']} key {r['key']}"
                elif "configMapKeyRef" in ref:
                    r = ref["configMapKeyRef"]
                    value = self.configmaps.get(r["name"], {}).get(r["key"])
                    where = f"ConfigMap {r['name']} key {r['key']}"
                else:
                    fail(f"{owner}: {var['name']}: only secretKeyRef and configMapKeyRef are supported here")
                if value is None:
                    fail(f"{owner}: {var['name']} comes from {where}, which the rendering does not have")
            value = self.map_hosts(value)
            for path, local in mounts.items():
                if value == path or value.startswith(path + "/"):
                    value = local + value[len(path):]
            if value in {str(p) for p in own_ports}:
                value = str(own_ports[int(value)])
            env[var["name"]] = value
        return env


class Process:
    def __init__(self, name, cmd, env, grace):
        self.name, self.grace = name, grace
        self.log_path = os.path.join(OUT, f"{name}.log")
        self.log = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def tail(self, n=25):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return f"{self.name} did not exit within its grace period of {self.grace}s"
        finally:
            self.log.close()
        if code != 0:
            return f"{self.name} exited with {code} after SIGTERM"
        return None


def http_ok(url, timeout=3):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - not up yet, or refusing: poll again
        return False


def main():
    ap = argparse.ArgumentParser()
    for a in ("--helm", "--chart", "--values", "--bin-dir", "--examples"):
        ap.add_argument(a, required=True)
    args = ap.parse_args()
    if "AMQP_URL" not in os.environ:
        fail("AMQP_URL is not set: run through scripts/k8s-check.sh, which starts the private node")
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    workdir = os.path.abspath(os.path.join(OUT, "volumes"))
    prefix = f"k8s-check-{secrets.token_hex(4)}"
    r = Rendering(render(args, prefix), workdir)
    bin_dir, examples = os.path.abspath(args.bin_dir), os.path.abspath(args.examples)
    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": workdir, "RUST_LOG": "info"}
    problems, procs, probes = [], [], []

    def prepare(owner, spec, c):
        cmd = list(c.get("command", [])) + list(c.get("args", []))
        if not cmd:
            fail(f"{owner}: container {c['name']} has no command (the image has no default to fall back on here)")
        exe = os.path.join(bin_dir, cmd[0])
        if not os.access(exe, os.X_OK):
            fail(f"{owner}: {cmd[0]} is not a binary of {bin_dir}")
        accepted = binary_env_names(exe, cmd[1] if len(cmd) > 1 and not cmd[1].startswith("-") else None)
        mounts = r.volumes(owner, spec, c)
        own = {}
        for p in c.get("ports", []):
            own[p["containerPort"]] = r.local[(owner, p["containerPort"])]
        env = r.environment(owner, c, mounts, own)
        expanded = {m for var in c.get("env", []) for m in re.findall(r"\$\(([A-Za-z0-9_]+)\)", str(var.get("value", "")))}
        for n in env:
            if n not in accepted and n not in expanded and n not in AMBIENT:
                problems.append(f"{owner}: {n} is not read by {cmd[0]} (its --help does not list it)")
        args_mapped = [a.replace("/examples/", examples + "/") for a in cmd[1:]]
        args_mapped = [r.map_hosts(a) for a in args_mapped]
        return [exe] + args_mapped, dict(base_env, **env), own

    for w in r.workloads:
        spec = w["spec"]["template"]["spec"]
        grace = spec.get("terminationGracePeriodSeconds", 30)
        for c in spec["containers"]:
            owner = w["metadata"]["name"]
            cmd, env, own = prepare(owner, spec, c)
            log(f"starting {owner}/{c['name']}: {' '.join(os.path.basename(x) if i == 0 else x for i, x in enumerate(cmd))}")
            procs.append(Process(f"{owner}-{c['name']}", cmd, env, grace))
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                g = c.get(kind, {}).get("httpGet")
                if g:
                    port = own[Rendering.container_port(w, g["port"])]
                    probes.append((f"{owner} {kind}", procs[-1], f"{g.get('scheme', 'HTTP').lower()}://127.0.0.1:{port}{g['path']}"))
    if problems:
        for p in procs:
            p.stop()
        fail("the chart sets variables the binaries do not read:\n  " + "\n  ".join(problems))

    try:
        deadline = time.monotonic() + READY_DEADLINE
        for what, proc, url in probes:
            while not http_ok(url):
                if proc.proc.poll() is not None:
                    fail(f"{proc.name} exited ({proc.proc.returncode}) before its {what} passed:\n{proc.tail()}")
                if time.monotonic() > deadline:
                    fail(f"{what} ({url}) did not pass within {READY_DEADLINE}s:\n{proc.tail()}")
                time.sleep(0.2)
            log(f"{what} passes ({url})")
        if not r.tests:
            fail("the rendering has no helm test pod to run")
        for t in r.tests:
            owner = t["metadata"]["name"]
            for c in t["spec"]["containers"]:
                cmd, env, _ = prepare(owner, t["spec"], c)
                if problems:
                    fail("the test pod sets variables its binary does not read:\n  " + "\n  ".join(problems))
                log(f"helm test {owner}: {' '.join(os.path.basename(x) if i == 0 else x for i, x in enumerate(cmd))}")
                res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
                with open(os.path.join(OUT, f"{owner}.log"), "w", encoding="utf-8") as f:
                    f.write(res.stdout + res.stderr)
                if res.returncode != 0 or "SUCCESS" not in res.stdout:
                    tails = "\n".join(f"--- {p.name}\n{p.tail(10)}" for p in procs)
                    fail(f"helm test {owner} failed ({res.returncode}):\n{res.stdout}{res.stderr}\n{tails}")
                log(f"helm test {owner}: {res.stdout.strip().splitlines()[-1]}")
    finally:
        stops = [p.stop() for p in procs]
    late = [s for s in stops if s]
    if late:
        fail("; ".join(late))
    log(f"ok: {len(procs)} processes from the rendered manifests ran a job to SUCCESS "
        f"(prefix {prefix}) and stopped within their grace periods")
    json.dump({"prefix": prefix, "processes": [p.name for p in procs]}, open(os.path.join(OUT, "result.json"), "w"))


if __name__ == "__main__":
    main()
