"""Wait until every service's /readyz answers 200, then print where everything is.

Used by ``make up``:  ``python scripts/wait_ready.py --timeout 120 --log var/log/service365.log
intake dispatch``. On timeout it names each service that is not ready, with the reason its
/readyz gives, shows the log tail and exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_RESIDENT_CODE = "demo-resident-1"


def service_port(service: str) -> int:
    """The port a service listens on: ``<SERVICE>_PORT`` or its settings class default."""
    override = os.environ.get(f"{service.upper().replace('-', '_')}_PORT")
    if override:
        return int(override)
    sys.path[:0] = [str(ROOT), str(ROOT / "services" / service)]
    from shared.settings import ServiceSettings

    module = importlib.import_module(f"{service}.settings")
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, ServiceSettings)
            and value is not ServiceSettings
        ):
            return int(value.model_fields["port"].default)
    raise SystemExit(f"{service}: no ServiceSettings subclass in {service}.settings")


def readiness(port: int) -> tuple[bool, str]:
    """(ready?, reason) from GET /readyz."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as response:
            return response.status == 200, "ready"
    except urllib.error.HTTPError as exc:
        try:
            problems = json.loads(exc.read()).get("problems", [])
        except ValueError:
            problems = []
        return False, f"HTTP {exc.code} {', '.join(problems)}".strip()
    except OSError as exc:
        return False, f"not listening ({type(exc).__name__})"


def log_tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return "(no log file)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("services", nargs="+")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--log", type=Path, default=None)
    parser.add_argument("--pidfile", type=Path, default=None, help="fail early if this pid dies")
    args = parser.parse_args(argv)

    ports = {service: service_port(service) for service in args.services}
    deadline = time.monotonic() + args.timeout
    status: dict[str, tuple[bool, str]] = {}
    while True:
        status = {service: readiness(port) for service, port in ports.items()}
        if all(ready for ready, _ in status.values()):
            break
        supervisor_gone = args.pidfile is not None and not _alive(args.pidfile)
        if supervisor_gone or time.monotonic() > deadline:
            why = (
                "进程已退出 / the processes exited"
                if supervisor_gone
                else (f"{args.timeout:.0f}s 内未就绪 / not ready within {args.timeout:.0f}s")
            )
            print(f"\n启动失败 / start failed: {why}", file=sys.stderr)
            for service, (ready, reason) in status.items():
                mark = "ok" if ready else "NOT READY"
                print(f"  {service:<10} :{ports[service]}  {mark}  {reason}", file=sys.stderr)
            print(f"\n--- log tail ({args.log}) ---\n{log_tail(args.log)}", file=sys.stderr)
            print("\n进程仍在运行时可用 `make down` 停止 / stop with `make down`.", file=sys.stderr)
            return 1
        time.sleep(0.5)

    print("\nService365 已就绪 / ready:")
    for service, port in ports.items():
        base = f"http://127.0.0.1:{port}"
        print(f"  {service:<10} API {base}/api/v1/   docs {base}/docs   metrics {base}/metrics")
    password = os.environ.get("DEMO_PASSWORD", "demo365")
    if "intake" in ports and os.environ.get("APP_ENV", "development") != "production":
        print("\n演示账号 demo logins (POST /api/v1/auth/login on intake):")
        print(f"  admin / {password}   (also worker01, leader01, supervisor01 ... same password)")
        print(
            "  演示居民 demo resident (WECHAT_MODE=dev): "
            f'POST /api/v1/auth/wechat {{"code": "{DEMO_RESIDENT_CODE}"}}'
        )
    if args.log:
        print(f"\n日志 logs: {args.log}    停止 stop: make down")
    return 0


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
