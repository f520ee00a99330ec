"""Checks what the resolved compose files (`docker compose config` output) give the instances.

    python3 compose_facts.py DEFAULT_RESOLVED.yaml KURRENTDB_RESOLVED.yaml

- The S3 endpoint the instances sign upload URLs with is one that works inside the compose
  network and from this machine: its host is a network alias of `minio` on a network the
  instances share, and its port is MinIO's S3 port, published on the same port number.
- MinIO allows browser uploads from the web client's origin only.
- The default project keeps the log in PostgreSQL and runs no KurrentDB; the KurrentDB project
  builds the `kurrentdb` feature, points both instances at its node, and has its own volumes.
"""

import sys
import urllib.parse

import yaml

failed = []


def expect(what, cond):
    print(("ok   " if cond else "BAD  ") + what)
    if not cond:
        failed.append(what)


base, kurrent = (yaml.safe_load(open(p)) for p in sys.argv[1:3])
for name, d in (("default", base), ("kurrentdb", kurrent)):
    minio = d["services"]["minio"]
    aliases = set((minio["networks"].get("backend") or {}).get("aliases") or [])
    published = {str(p["published"]) for p in minio.get("ports", []) if p["target"] == 9000}
    for inst in ("teachback-1", "teachback-2"):
        svc = d["services"][inst]
        env = svc["environment"]
        url = urllib.parse.urlsplit(env["AWS_ENDPOINT_URL"])
        expect(f"{name} {inst}: {url.hostname} is an alias of minio on a network both are on",
               url.hostname in aliases and "backend" in svc["networks"])
        expect(f"{name} {inst}: port {url.port} is MinIO's S3 port, published as {sorted(published)}",
               url.port == 9000 and "9000" in published)
        store = env.get("TEACHBACK_EVENT_STORE", "sql")
        features = svc["build"]["args"]["FEATURES"].split(",")
        if name == "default":
            expect(f"{name} {inst}: event store {store}, features {features}",
                   store == "sql" and features == ["s3"])
        else:
            expect(f"{name} {inst}: event store {store}, features {features}, after kurrentdb",
                   store == "kurrentdb" and set(features) == {"s3", "kurrentdb"}
                   and env.get("TEACHBACK_KURRENTDB_URL", "").startswith("kurrentdb://kurrentdb:2113?")
                   and "kurrentdb" in svc["depends_on"])
    origin = urllib.parse.urlsplit(d["services"]["teachback-1"]["environment"]["TEACHBACK_PUBLIC_URL"])
    expect(f"{name}: MinIO allows browser uploads from {origin.scheme}://{origin.netloc} only",
           minio["environment"].get("MINIO_API_CORS_ALLOW_ORIGIN") == f"{origin.scheme}://{origin.netloc}")
expect("the default project runs no KurrentDB", "kurrentdb" not in base["services"])
expect("the KurrentDB project is another project (its own volumes)",
       kurrent["name"] != base["name"] and "kurrentdb-data" in kurrent["volumes"])
sys.exit(1 if failed else 0)
