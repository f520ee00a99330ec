"""Models the build context docker/Dockerfile gets under docker/Dockerfile.dockerignore.

    python3 build_context.py REPO_ROOT DOCKERFILE IGNORE_FILE

A model of Docker's matcher (moby/patternmatcher), not Docker itself: patterns are cleaned
paths; `*` and `?` stay within one path element, `**` spans any number; a pattern that matches
a directory matches everything under it; the last pattern that matches a path decides, and a
leading `!` re-includes. Checks that every COPY source of the Dockerfile is sent and that
nothing large or secret is (target/, .git/, .env files, fuzz/, tests/).
"""

import os
import re
import sys

repo, dockerfile, ignore = sys.argv[1:4]


def regex(pattern):
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


rules = []
for line in open(ignore):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    negated = line.startswith("!")
    rules.append((negated, regex(os.path.normpath(line.lstrip("!").strip()).lstrip("/"))))


def excluded(path):
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    verdict = False
    for negated, rx in rules:
        if any(rx.match(p) for p in prefixes):
            verdict = not negated
    return verdict


sent, size = [], 0
for root, dirs, files in os.walk(repo):
    rel_root = os.path.relpath(root, repo)
    # Directories nothing could re-include are not walked (target/ is large).
    dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(rel_root, d)) not in ("target", ".git")]
    for f in files:
        rel = os.path.normpath(os.path.join(rel_root, f))
        if not excluded(rel):
            sent.append(rel)
            size += os.path.getsize(os.path.join(root, f))

for skipped in ("target/release/teachback", ".git/HEAD"):
    if not excluded(skipped):
        sent.append(skipped)

sources = []
for line in open(dockerfile):
    m = re.match(r"COPY\s+(?!--from)(.+)\s+\S+$", line.strip())
    if m:
        sources += m.group(1).split()
missing = [s for s in sources if not any(p == s or p.startswith(s.rstrip("/") + "/") for p in sent)]
leaked = [p for p in sent
          if p.startswith(("target/", ".git/", "fuzz/", "tests/", "data/"))
          or os.path.basename(p) == ".env" or p.endswith("/tests") or "/tests/" in p]
print(f"{len(sent)} files, {size / 2**20:.1f} MiB; COPY sources: {' '.join(sources)}")
print("missing:", missing or "none", "| should not be sent:", leaked[:5] or "none")
sys.exit(1 if missing or leaked else 0)
