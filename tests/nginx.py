"""A real nginx (Debian's) in front of test servers, configured from deploy/nginx's site file
with TLS taken out: what a broker runs, on 127.0.0.1 and a free port."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port, wait_for

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
SITE = ROOT / "deploy" / "nginx" / "trading-webhook-gateway.conf"
BALANCER = ROOT / "deploy" / "nginx" / "compose-balancer.conf"  # compose.postgres.yaml's
# Several gateways: the balancer's part. A POST that found an instance gone (connection refused
# or reset) or overloaded goes to the next one: safe, since the gateway deduplicates retries.
FAILOVER = "proxy_next_upstream error timeout http_502 http_503 non_idempotent;"


@contextlib.contextmanager
def nginx(folder: Path, upstreams: Sequence[int], config: str = "site") -> Iterator[str]:
    """A real nginx on 127.0.0.1 balancing over 127.0.0.1:`upstreams`, configured from
    deploy/nginx: "site" is the TLS site without TLS, its proxy_pass turned into an upstream and
    the office network this machine; "balancer" is compose-balancer.conf, the instances' names
    turned into the ports. Yields its base URL."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    servers = [f"server 127.0.0.1:{upstream} max_fails=0;" for upstream in upstreams]
    if config == "site":
        site = SITE.read_text()
        site = re.sub(r"(?m)^\s*ssl_.*$", "", site).replace("listen 443 ssl http2;", f"listen 127.0.0.1:{port};")
        site = site.replace("allow 10.0.0.0/8;", "allow 127.0.0.1;")
        site = site.replace("proxy_pass http://127.0.0.1:8080;", f"proxy_pass http://gateways; {FAILOVER}")
        site = "upstream gateways {\n" + "".join(f"    {server}\n" for server in servers) + "}\n" + site
    else:
        site = BALANCER.read_text()
        named = re.findall(r"(?m)^\s*server gateway-\w+:8080 max_fails=0;$", site)
        assert len(named) == len(servers), named
        for line, server in zip(named, servers, strict=True):
            site = site.replace(line, "    " + server)
        assert "listen 8080;" in site
        site = site.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    (folder / "site.conf").write_text(site)
    (folder / "nginx.conf").write_text(f"""
user root;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    include {folder}/site.conf;
}}
""")
    conf = ["-p", str(folder), "-c", str(folder / "nginx.conf")]
    checked = subprocess.run([NGINX, *conf, "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr  # the whole file, limit_conn_zone included, is valid
    proc = subprocess.Popen([NGINX, *conf, "-g", "daemon off;"], stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                return True  # nginx answered (whatever the instances behind it said)
            except httpx.TransportError:
                return proc.poll() is not None
        wait_for(up, 20, "nginx to answer", seen=lambda: (folder / "error.log").read_text()[-2000:])
        assert proc.poll() is None
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
