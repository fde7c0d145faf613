"""nginx's mail proxy as a peer for proxy_bench.py: its configuration, its version, whether it
can run here. Only text and look-ups; proxy_bench.py starts and stops the process.

nginx (Debian `nginx-light` + `libnginx-mod-mail`) answers the client before login itself,
asks an `auth_http` server where the user lives, then logs in to that backend with the
client's credentials and relays bytes, like `suction proxy`. The auth server here is a static
`location` in the same nginx's own http block (no extra process): it answers every login with
`Auth-Status: OK` and the backend's address, so what is measured is nginx's relay plus its own
auth round trip, as a real deployment with a local auth_http service would pay.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"
INSTALL_HINT = "apt-get install -y --no-install-recommends nginx-light libnginx-mod-mail"


@dataclass
class MailServer:
    """One `server` in nginx's mail block: a listener in front of one backend."""
    label: str             # e.g. "nginx 64k -> fake server"
    port: int              # nginx's listener on 127.0.0.1
    backend_port: int      # where auth_http sends the login (Dovecot or the fake backend)
    buffer: str = ""       # proxy_buffer ("" = nginx's default: one page, 4k here)
    tls: bool = False      # implicit TLS on the listener (plaintext to the backend)


def missing() -> str | None:
    """Why nginx's mail proxy cannot run here, or None."""
    if not shutil.which("nginx"):
        return f"nginx not installed ({INSTALL_HINT})"
    if not os.path.exists(MAIL_MODULE):
        return f"{MAIL_MODULE} missing ({INSTALL_HINT})"
    return None


def version() -> str:
    """"nginx 1.22.1" from `nginx -v` (it prints to stderr)."""
    try:
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=10).stderr
    except (OSError, subprocess.TimeoutExpired):
        return "nginx ?"
    m = re.search(r"nginx/(\S+)", out)
    return f"nginx {m.group(1)}" if m else "nginx ?"


def capabilities_like(greeting: bytes) -> str:
    """nginx's imap_capabilities from a backend's greeting `* OK [CAPABILITY ...]`: the same list
    without what nginx itself decides (AUTH=, STARTTLS, LOGINDISABLED)."""
    m = re.search(rb"\[CAPABILITY ([^\]]*)\]", greeting)
    caps = m.group(1).decode("ascii", "replace").split() if m else ["IMAP4rev1"]
    keep = [c for c in caps if not c.upper().startswith(("AUTH=", "STARTTLS", "LOGINDISABLED"))]
    return " ".join(keep)


def config(prefix: str, auth_port: int, servers: list[MailServer], *, cert: str, key: str,
           capabilities: str, worker_connections: int, host: str = "127.0.0.1") -> str:
    """nginx.conf for one instance under `prefix`: a master and one worker (one event loop,
    like single-threaded suction), as root (the bench runs as root; no other user must read the
    work directory), logs at `warn` like suction's bench config, every path under `prefix`."""
    backends = sorted({s.backend_port for s in servers})
    auth = "\n".join(
        f"""        location = /auth/{port} {{
            add_header Auth-Status OK;
            add_header Auth-Server {host};
            add_header Auth-Port {port};
            return 204;
        }}""" for port in backends)
    mail = "\n".join(_mail_server(s, host, auth_port) for s in servers)
    tmp = os.path.join(prefix, "tmp")
    return f"""# written by tests/bench/proxy_bench.py
load_module {MAIL_MODULE};
user root;
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections {worker_connections};
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen {host}:{auth_port};
{auth}
    }}
}}
mail {{
    proxy_pass_error_message on;
    imap_capabilities {capabilities};
    starttls off;
    ssl_certificate {cert};
    ssl_certificate_key {key};
{mail}
}}
"""


def _mail_server(s: MailServer, host: str, auth_port: int) -> str:
    lines = [f"    server {{  # {s.label}",
             f"        listen {host}:{s.port}{' ssl' if s.tls else ''};",
             "        protocol imap;",
             f"        auth_http {host}:{auth_port}/auth/{s.backend_port};"]
    if s.buffer:
        lines.append(f"        proxy_buffer {s.buffer};")
    lines.append("    }")
    return "\n".join(lines)
