"""README's examples, run as a reader would: in the order written, against a running service.

Every ```sh block after a `<!-- example: runs in CI -->` line is run by bash, one after the other
in one shell (variables carry over). Each `curl` must answer 2xx, unless its line says otherwise
with a `# → NNN` comment; any command that fails stops the run.

Usage: KTRDR_API_URL=http://127.0.0.1:8000 python tests/readme_examples.py [README.md]
(`ktrdr-ops` must be on PATH.)
"""

import os
import re
import subprocess
import sys

MARKER = "<!-- example: runs in CI -->"

# curl, checked: the body goes to stdout as usual, the status is compared with $EXPECT (2xx when
# unset), and a mismatch fails the command naming the request.
PRELUDE = r'''
set -euo pipefail
curl() {
    local body status
    body=$(mktemp)
    status=$(command curl -o "$body" -w '%{http_code}' "$@") || { echo "curl could not run: $*" >&2; return 1; }
    cat "$body"; echo; rm -f "$body"
    local expected="${EXPECT:-2..}"
    if ! [[ $status =~ ^${expected}$ ]]; then
        echo "README example answered HTTP $status (expected ${EXPECT:-2xx}): curl $*" >&2
        return 1
    fi
}
'''


def blocks(readme):
    """The marked ```sh blocks, in order."""
    lines = readme.splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        if i + 1 >= len(lines) or lines[i + 1].strip() != "```sh":
            sys.exit(f"README line {i + 1}: {MARKER} must stand right before a ```sh block")
        body = []
        for line in lines[i + 2:]:
            if line.strip() == "```":
                break
            body.append(line)
        found.append("\n".join(body))
    return found


def commands(block):
    """The block's commands, continuation lines joined; a `# → NNN` comment sets $EXPECT."""
    out, current = [], ""
    for line in block.splitlines():
        current += line
        if line.rstrip().endswith("\\"):
            current += "\n"
            continue
        if current.strip():
            expected = re.search(r"#\s*→\s*(\d{3})\b", current)
            out.append(f"EXPECT={expected.group(1)} {current.lstrip()}" if expected else current)
        current = ""
    return out


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "README.md")
    with open(path, encoding="utf-8") as f:
        found = blocks(f.read())
    if not found:
        sys.exit("README has no marked examples")
    url = os.environ.get("KTRDR_API_URL", "http://127.0.0.1:8000")
    script = [PRELUDE]
    for block in found:
        for command in commands(block):
            # The examples point at port 8000; here the service is wherever KTRDR_API_URL says.
            if command.startswith("export KTRDR_API_URL="):
                command = f"export KTRDR_API_URL={url}"
            script.append(f"echo '$ '{shell_quote(first_line(command))} >&2")
            script.append(command)
    run = subprocess.run(["bash", "-c", "\n".join(script)], timeout=300)
    if run.returncode != 0:
        sys.exit(f"README examples FAILED (exit {run.returncode})")
    print(f"README examples passed: {sum(len(commands(b)) for b in found)} commands in {len(found)} blocks")


def first_line(command):
    return command.splitlines()[0].rstrip("\\ ")


def shell_quote(text):
    return "'" + text.replace("'", "'\\''") + "'"


if __name__ == "__main__":
    main()
