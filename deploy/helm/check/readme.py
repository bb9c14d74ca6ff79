"""The chart README's table of values, made from values.schema.json (descriptions, types)
and values.yaml (defaults), between its `values:begin` and `values:end` markers, so that
every value is listed and none is listed that is gone.

Usage: readme.py --check CHART   (fails when the README's table is not what it would write)
       readme.py --write CHART
"""

import json
import sys

import yaml

BEGIN, END = "<!-- values:begin -->", "<!-- values:end -->"


def rows(schema, values, path=""):
    for key, sub in schema.get("properties", {}).items():
        p = f"{path}.{key}" if path else key
        v = values.get(key) if isinstance(values, dict) else None
        if sub.get("type") == "object" and "properties" in sub:
            yield from rows(sub, v or {}, p)
            continue
        default = json.dumps(v, separators=(",", ":")) if v is not None else ""
        if len(default) > 60:
            default = "see values.yaml"
        desc = sub.get("description", "").replace("|", "\\|")
        if "enum" in sub:
            desc += " One of " + ", ".join(f"`{e}`" for e in sub["enum"]) + "."
        yield f"| `{p}` | {sub.get('type', 'any')} | `{default}` | {desc} |".replace("``", "")


def table(chart):
    with open(f"{chart}/values.schema.json", encoding="utf-8") as f:
        schema = json.load(f)
    with open(f"{chart}/values.yaml", encoding="utf-8") as f:
        values = yaml.safe_load(f)
    head = ["| value | type | default | what it does |", "| --- | --- | --- | --- |"]
    return "\n".join(head + list(rows(schema, values)))


def main():
    mode, chart = sys.argv[1], sys.argv[2]
    path = f"{chart}/README.md"
    with open(path, encoding="utf-8") as f:
        text = f.read()
    before, rest = text.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    new = f"{before}{BEGIN}\n{table(chart)}\n{END}{after}"
    if mode == "--write":
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    elif new != text:
        sys.exit(f"k8s-check: {path}'s table of values is stale: run "
                 f"`.tools/k8s/venv/bin/python deploy/helm/check/readme.py --write {chart}`")
    else:
        print(f"k8s-check: {path} lists every value")


if __name__ == "__main__":
    main()
