#!/usr/bin/env python3
"""Checks the docker/ files without Docker: they parse, and they agree with each other
and with the server.

- docker-compose.yml, prometheus.yml and Grafana's provisioning parse as YAML, the
  dashboard as JSON;
- the Dockerfile's stages, its JSON-form ENTRYPOINT and HEALTHCHECK, and its EXPOSEd
  ports; every flag of the ENTRYPOINT is one `sabot serve --help` lists (--sabot);
- compose: the sabot service builds from this Dockerfile and publishes the ports it
  exposes; every mounted host path exists; `depends_on` names services;
- Prometheus scrapes a compose service on a port that service exposes, at /metrics;
- Grafana's datasource points at the Prometheus service, the dashboard provider's folder
  is mounted, and every panel queries that datasource; panel ids are unique and panels
  fit the 24-column grid.

The metric names the dashboard queries are checked against a live server's /metrics by
server/tests/metrics.rs. Exits 1 with a list of problems.
"""

import argparse
import json
import os
import re
import subprocess
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))


def load_yaml(name, problems):
    try:
        with open(os.path.join(HERE, name)) as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        problems.append(f"{name}: {e}")
        return None


def dockerfile(problems):
    with open(os.path.join(HERE, "Dockerfile")) as f:
        text = f.read()
    # Join continuation lines, drop comments.
    lines = []
    for raw in re.sub(r"\\\n", " ", text).splitlines():
        if raw.strip() and not raw.lstrip().startswith("#"):
            lines.append(raw.strip())
    instructions = [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l else "") for l in lines]
    known = {"FROM", "RUN", "COPY", "WORKDIR", "USER", "VOLUME", "EXPOSE", "HEALTHCHECK",
             "ENTRYPOINT", "CMD", "ENV", "ARG", "LABEL"}
    for op, _ in instructions:
        if op not in known:
            problems.append(f"Dockerfile: unknown instruction {op}")
    if not instructions or instructions[0][0] != "FROM":
        problems.append("Dockerfile: does not start with FROM")
    stages = [a.split()[-1] for op, a in instructions if op == "FROM" and " AS " in a.upper()]
    for op, a in instructions:
        m = re.match(r"--from=(\S+)", a)
        if op == "COPY" and m and m.group(1) not in stages:
            problems.append(f"Dockerfile: COPY --from={m.group(1)}: no such stage")
    entry = [json.loads(a) for op, a in instructions if op == "ENTRYPOINT"]
    if len(entry) != 1 or not isinstance(entry[0], list):
        problems.append("Dockerfile: needs one ENTRYPOINT in JSON form")
        entry = [[]]
    for op, a in instructions:
        if op == "HEALTHCHECK":
            cmd = a.split("CMD", 1)[1].strip()
            if not isinstance(json.loads(cmd), list):
                problems.append("Dockerfile: HEALTHCHECK CMD is not in JSON form")
    exposed = set()
    for op, a in instructions:
        if op == "EXPOSE":
            exposed.update(int(p.split("/")[0]) for p in a.split())
    return entry[0], exposed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sabot", help="the sabot binary, to check the ENTRYPOINT's flags")
    args = ap.parse_args()
    problems = []

    entry, exposed = dockerfile(problems)
    if args.sabot:
        help_text = subprocess.run([args.sabot, "serve", "--help"], capture_output=True,
                                   text=True, check=True).stdout
        if entry[:2] != ["sabot", "serve"]:
            problems.append(f"Dockerfile: ENTRYPOINT {entry} is not `sabot serve ...`")
        for flag in (a for a in entry if a.startswith("--")):
            if flag not in help_text:
                problems.append(f"Dockerfile: `sabot serve` has no {flag}")
    listen_ports = {int(a.rsplit(":", 1)[1]) for a in entry if re.fullmatch(r"[\d.]+:\d+", a)}
    if listen_ports != exposed:
        problems.append(f"Dockerfile: listens on {sorted(listen_ports)}, exposes {sorted(exposed)}")

    compose = load_yaml("docker-compose.yml", problems) or {}
    services = compose.get("services", {})
    for need in ("sabot", "kafka", "prometheus", "grafana"):
        if need not in services:
            problems.append(f"docker-compose.yml: no {need} service")
    sabot = services.get("sabot", {})
    build = sabot.get("build", {})
    dockerfile_path = os.path.normpath(os.path.join(HERE, build.get("context", "."), build.get("dockerfile", "")))
    if dockerfile_path != os.path.join(HERE, "Dockerfile"):
        problems.append(f"docker-compose.yml: sabot builds {dockerfile_path}, not docker/Dockerfile")
    published = {int(p.split(":")[-1]) for p in sabot.get("ports", [])}
    if published != exposed:
        problems.append(f"docker-compose.yml: sabot publishes {sorted(published)}, the image exposes {sorted(exposed)}")
    named_volumes = set((compose.get("volumes") or {}).keys())
    for name, svc in services.items():
        for dep in svc.get("depends_on", []):
            if dep not in services:
                problems.append(f"docker-compose.yml: {name} depends on unknown {dep}")
        for v in svc.get("volumes", []):
            source = v.split(":")[0]
            if source.startswith("."):
                if not os.path.exists(os.path.join(HERE, source)):
                    problems.append(f"docker-compose.yml: {name} mounts missing {source}")
            elif source not in named_volumes:
                problems.append(f"docker-compose.yml: {name} uses undeclared volume {source}")

    prom = load_yaml("prometheus.yml", problems) or {}
    for job in prom.get("scrape_configs", []):
        if job.get("metrics_path", "/metrics") != "/metrics":
            problems.append(f"prometheus.yml: {job.get('job_name')} scrapes {job.get('metrics_path')}")
        for sc in job.get("static_configs", []):
            for target in sc.get("targets", []):
                host, port = target.rsplit(":", 1)
                if host not in services:
                    problems.append(f"prometheus.yml: target {target} is no compose service")
                elif host == "sabot" and int(port) not in exposed:
                    problems.append(f"prometheus.yml: sabot does not expose {port}")

    grafana = services.get("grafana", {})
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana.get("volumes", [])}
    ds = load_yaml("grafana/provisioning/datasources/prometheus.yml", problems) or {}
    uids = set()
    for d in ds.get("datasources", []):
        uids.add(d.get("uid"))
        m = re.match(r"https?://([^:/]+):(\d+)", d.get("url", ""))
        if not m or m.group(1) not in services:
            problems.append(f"grafana datasource {d.get('name')}: {d.get('url')} is no compose service")
    providers = load_yaml("grafana/provisioning/dashboards/sabot.yml", problems) or {}
    for p in providers.get("providers", []):
        path = p.get("options", {}).get("path", "")
        if path not in mounts:
            problems.append(f"grafana dashboards provider reads {path}, which is not mounted")
        elif not os.path.isdir(os.path.join(HERE, mounts[path])):
            problems.append(f"grafana dashboards: {mounts[path]} is missing")
    if "/etc/grafana/provisioning" not in mounts:
        problems.append("grafana: provisioning is not mounted")
    try:
        with open(os.path.join(HERE, "grafana/dashboards/sabot.json")) as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        problems.append(f"grafana/dashboards/sabot.json: {e}")
        dash = {"panels": []}
    ids = [p.get("id") for p in dash["panels"]]
    if len(ids) != len(set(ids)):
        problems.append("dashboard: panel ids repeat")
    for p in dash["panels"]:
        g = p.get("gridPos", {})
        if g.get("x", 0) + g.get("w", 0) > 24:
            problems.append(f"dashboard: panel {p.get('title')} overflows the grid")
        for t in p.get("targets", []):
            if t.get("datasource", {}).get("uid") not in uids:
                problems.append(f"dashboard: panel {p.get('title')} queries an unknown datasource")
            if not t.get("expr"):
                problems.append(f"dashboard: panel {p.get('title')} has an empty query")

    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(f"docker/: {len(services)} services, {len(dash['panels'])} dashboard panels: ok")


if __name__ == "__main__":
    main()
