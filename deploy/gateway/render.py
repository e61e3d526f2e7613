"""Write the compose gateway's nginx configuration from the route table (``routes.yaml``).

    .venv/bin/python deploy/gateway/render.py            # rewrite nginx.conf and nginx-tls.conf
    .venv/bin/python deploy/gateway/render.py --check    # exit 1 when they are stale (tests do it)

``nginx.conf``: HTTP on 8080. ``nginx-tls.conf``: the same on 8080 and HTTPS with HTTP/2 on 8443,
with the certificate and key at ``--tls-certificate`` / ``--tls-certificate-key`` (compose mounts
``GATEWAY_TLS_DIR`` at /etc/nginx/tls; choose the file with ``GATEWAY_CONFIG=nginx-tls.conf``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from shared.gateway import NginxSettings, RouteTable, render_nginx  # noqa: E402

HEADER = (
    "# Generated from deploy/gateway/routes.yaml by deploy/gateway/render.py: edit those.\n"
    "# The compose gateway (service `gateway`, port 8080{tls})."
)


def outputs(cert: str, key: str) -> dict[Path, str]:
    """The checked-in files and what they should hold."""
    table = RouteTable.load(HERE / "routes.yaml")
    plain = NginxSettings(header=HEADER.format(tls=""))
    tls = NginxSettings(
        header=HEADER.format(tls="; HTTPS with HTTP/2 on 8443"),
        tls_listen=8443,
        tls_certificate=cert,
        tls_certificate_key=key,
    )
    return {
        HERE / "nginx.conf": render_nginx(table, plain),
        HERE / "nginx-tls.conf": render_nginx(table, tls),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether they are stale")
    parser.add_argument("--tls-certificate", default="/etc/nginx/tls/tls.crt")
    parser.add_argument("--tls-certificate-key", default="/etc/nginx/tls/tls.key")
    args = parser.parse_args()
    stale = []
    for path, text in outputs(args.tls_certificate, args.tls_certificate_key).items():
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            stale.append(path.name)
            if not args.check:
                path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(
            f"网关配置已过期 / stale: {', '.join(stale)}; run deploy/gateway/render.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
