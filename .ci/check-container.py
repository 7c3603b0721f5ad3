#!/usr/bin/env python3
"""The container files checked by construction, in a second, before anything is built (the compose
suite, which starts them for real, comes last and needs a Docker engine): the compose file
parses, every service is either built from this repository or names an image, every path it
mounts or builds from exists, and every file the Dockerfile copies exists."""
import os
import re
import sys

import yaml

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
problems = []

with open(os.path.join(root, "docker-compose.yml")) as f:
    compose = yaml.safe_load(f)
services = compose.get("services") or {}
if not services:
    problems.append("docker-compose.yml defines no services")
for name, service in services.items():
    build = service.get("build")
    if not build and not service.get("image"):
        problems.append(f"service {name}: neither build nor image")
    if build:
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        if not os.path.isfile(os.path.join(root, context, dockerfile)):
            problems.append(f"service {name}: {context}/{dockerfile} does not exist")
    for volume in service.get("volumes", []):
        source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith(".") and not os.path.exists(os.path.join(root, source)) and source != "./data":
            problems.append(f"service {name}: mounted path {source} does not exist")
        if not source.startswith((".", "/")) and source not in (compose.get("volumes") or {}):
            problems.append(f"service {name}: named volume {source} is not declared")
    for dependency in service.get("depends_on", []) or []:
        if dependency not in services:
            problems.append(f"service {name}: depends on unknown service {dependency}")

# Replicas on one database must not share a node id: each would think the other's operations
# its own, and leases and fencing would mean nothing.
node_ids = {}
for name, service in services.items():
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment if "=" in item)
    node = environment.get("KTRDR_OPS__NODE__ID")
    if node in node_ids:
        problems.append(f"services {node_ids[node]} and {name} share the node id {node}")
    elif node:
        node_ids[node] = name

with open(os.path.join(root, "Dockerfile")) as f:
    for line in f:
        match = re.match(r"^COPY\s+(?!--from)(.+)\s+\S+\s*$", line.strip())
        if match:
            for source in match.group(1).split():
                if not os.path.exists(os.path.join(root, source)):
                    problems.append(f"Dockerfile copies {source}, which does not exist")

if problems:
    print("container files:", *problems, sep="\n  ")
    sys.exit(1)
print(f"container files ok: {len(services)} compose services, Dockerfile sources present")
