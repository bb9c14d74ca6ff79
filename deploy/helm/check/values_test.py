"""The values the chart refuses, and why: `helm template` must fail, with the message a
user can act on, for a misspelt key at any depth, a wrong type, and settings that cannot
work together. Every case starts from ci/minimal-values.yaml.

Usage: values_test.py HELM CHART
"""

import subprocess
import sys

CASES = [
    # (what, --set arguments, text the error must contain)
    ("misspelt top-level key", ["replicaCont=3"], "additional properties 'replicaCont' not allowed"),
    ("misspelt nested key", ["consumer.autoscaling.keda.minReplica=1"], "additional properties 'minReplica' not allowed"),
    ("misspelt component key", ["ingress.snapshot.enabled=true"], "additional properties 'snapshot' not allowed"),
    ("wrong type", ["consumer.prefetch=many"], "/consumer/prefetch"),
    ("lanes out of range", ["amqp.jobLanes=0"], "/amqp/jobLanes"),
    ("unknown algorithm", ["auth.algorithm=none"], "/auth/algorithm"),
    ("KEDA and an HPA on the consumers", ["consumer.autoscaling.keda.enabled=true", "consumer.autoscaling.hpa.enabled=true",
                                          "rabbitmq.managementUrl=http://u:p@rabbitmq:15672/"], "enable keda or hpa, not both"),
    ("KEDA without the management API", ["consumer.autoscaling.keda.enabled=true"], "KEDA reads the queues' depth from the management API"),
    ("no broker", ["rabbitmq.url="], "set rabbitmq.url or rabbitmq.existingSecret"),
    ("no token secret", ["auth.jwtSecret="], "HS256 needs auth.jwtSecret or auth.existingSecret"),
    ("a public key algorithm without the key", ["auth.algorithm=ES256"], "ES256 needs auth.publicKeySecret"),
    ("no services and no stubs", ["stubs.enabled=false"], "set it, or stubs.enabled for a demo"),
]


def template(helm, chart, sets):
    cmd = [helm, "template", "imagejobs", chart, "-f", f"{chart}/ci/minimal-values.yaml"]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def main():
    helm, chart = sys.argv[1], sys.argv[2]
    failures = []
    for what, sets, expected in CASES:
        r = template(helm, chart, sets)
        if r.returncode == 0:
            failures.append(f"{what}: helm template accepted {sets}")
        elif expected not in r.stderr:
            failures.append(f"{what}: the error does not say {expected!r}:\n{r.stderr.strip()}")
    # And the minimal values alone render.
    if template(helm, chart, []).returncode != 0:
        failures.append("ci/minimal-values.yaml alone does not render")
    for f in failures:
        print(f"k8s-check: values: {f}", file=sys.stderr)
    if failures:
        sys.exit(1)
    print(f"k8s-check: {len(CASES)} kinds of bad values refused by helm template, with their reasons")


if __name__ == "__main__":
    main()
