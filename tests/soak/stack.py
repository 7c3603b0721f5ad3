"""The soak's stack: docker-compose.yml with tests/soak/soak.yml, and the few ways the soak talks to
it — compose and docker commands, JSON over HTTP, the simulators' logs and files."""

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from datetime import datetime

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "compose"))
from suite import wait as wait_for  # noqa: E402 - the compose suite's helper, shared

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROJECT = "ktrdrsoak"
FILES = ["-f", os.path.join(ROOT, "docker-compose.yml"), "-f", os.path.join(ROOT, "tests/soak/soak.yml")]
REPLICAS = {"ktrdr-ops": "http://127.0.0.1:8000", "ktrdr-ops-2": "http://127.0.0.1:8001"}
WORKERS = {"worker-1": "http://127.0.0.1:15011", "worker-2": "http://127.0.0.1:15012",
           "worker-3": "http://127.0.0.1:15013"}
IB = "http://127.0.0.1:15001"
TERMINAL = ("completed", "failed", "cancelled")


def compose_command():
    """`docker compose` (v2) where it exists, else `docker-compose` (v1)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"]


COMPOSE = compose_command() + ["-p", PROJECT] + FILES
# Compose v1 is not made for several commands at once on one project.
_compose_lock = threading.Lock()


def compose(*args, check=True):
    with _compose_lock:
        result = subprocess.run(COMPOSE + list(args), cwd=ROOT, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"compose {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def docker(*args, check=True):
    result = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def container(service):
    return compose("ps", "-q", service).strip()


def call(method, url, body=None, timeout=10, headers=None):
    """(status, JSON body); (None, None) when nothing answered."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"null")
        except ValueError:
            return e.code, None
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
        return None, None


def healthy(base):
    status, body = call("GET", f"{base}/api/v1/health", timeout=3)
    return status == 200 and body.get("database") == "ok"


def instant(text):
    """Seconds since the epoch of an RFC 3339 time (the service's, the simulators')."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def read_file(service, path):
    """A file in a running container, as text (empty when it does not exist)."""
    result = subprocess.run(["docker", "exec", container(service), "cat", path], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else ""


def up():
    compose("up", "-d", "--build")
    for base in REPLICAS.values():
        wait_for(f"{base} healthy", lambda: healthy(base), 120)
    wait_for("three workers registered",
             lambda: len(call("GET", f"{REPLICAS['ktrdr-ops']}/api/v1/workers")[1] or []) >= 3, 60)


def down():
    compose("down", "-v", "--remove-orphans", check=False)
