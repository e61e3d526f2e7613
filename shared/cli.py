"""The command line every service has: ``python -m <service> <command>``.

Common commands (``migrate``, ``web``, ``worker``) come from here; a service adds its own as
``Command`` objects. Example::

    COMMANDS = {"create-user": Command("创建账号 create an account", add_args, create_user)}

    # services/intake/intake/__main__.py
    main("intake", settings_cls=IntakeSettings, create_app_path="intake.app:create_app()",
         make_database=make_database, subscriptions=load_subscriptions, commands=COMMANDS)

``python -m shared.cli keys [--dir var/keys]`` makes the development JWT key pair (``make keys``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.settings import PROJECT_ROOT, ServiceSettings, load_settings, var_dir

GUNICORN_CONF = PROJECT_ROOT / "shared" / "gunicorn_conf.py"
DEFAULT_WEB_CONCURRENCY = 2


@dataclass(frozen=True)
class Command:
    """One sub-command: help text, how it adds its arguments, and what it runs (exit code)."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, ServiceSettings], int | None]


def fail(message: str, code: int = 2) -> SystemExit:
    """One clear line on stderr and the exit code, for the operator reading a terminal or log."""
    print(message, file=sys.stderr)
    return SystemExit(code)


# Long-running processes that show their series on an endpoint of their own (the worker and the
# scheduler on METRICS_PORT, notify's stream on its HTTP port): each writes to a metrics folder
# of its own, so that the web's /metrics does not add them up a second time.
OWN_METRICS_FOLDER = frozenset({"worker", "scheduler", "stream"})


def metrics_folder_name(service: str, command: str | None) -> str:
    """``intake`` for the web and one-shot commands, ``intake-worker`` for the worker."""
    return f"{service}-{command}" if command in OWN_METRICS_FOLDER else service


def default_environment(service: str, command: str | None = None) -> None:
    """Give a process started by hand the same metrics folder ``make run`` gives it.

    Call it before anything imports ``prometheus_client``: the library picks its multiprocess
    mode once, at import, from ``PROMETHEUS_MULTIPROC_DIR``. ``command`` defaults to the first
    argument of the command line (``python -m intake worker``).
    """
    if command is None and len(sys.argv) > 1:
        command = sys.argv[1]
    name = metrics_folder_name(service, command)
    folder = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(var_dir() / "metrics" / name))
    Path(folder).mkdir(parents=True, exist_ok=True)


def control_socket_path(service: str) -> Path:
    """Each gunicorn master gets its own control socket: gunicorn 27's default path is shared
    by every master of a user, and a second master deletes the first one's socket."""
    path = var_dir() / "run" / f"{service}.ctl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def web_concurrency() -> int:
    """Workers per web process, from ``WEB_CONCURRENCY`` (default 2)."""
    raw = os.environ.get("WEB_CONCURRENCY", "").strip()
    if not raw:
        return DEFAULT_WEB_CONCURRENCY
    try:
        value = int(raw)
    except ValueError:
        raise fail(
            f"配置错误 / invalid settings: WEB_CONCURRENCY: not an integer: {raw!r}"
        ) from None
    if not 1 <= value <= 64:
        raise fail(f"配置错误 / invalid settings: WEB_CONCURRENCY: must be 1..64, got {value}")
    return value


def gunicorn_argv(
    service: str,
    settings: ServiceSettings,
    create_app_path: str,
    *,
    process: str = "web",
    port: int | None = None,
    workers: int | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The gunicorn command line of ``<service> web`` (kept separate so tests can read it).

    A second HTTP process of a service names itself and may differ in port, workers and more
    gunicorn options; it gets a control socket of its own. Example (notify's event stream)::

        gunicorn_argv("notify", settings, "notify.stream:create_stream_app()", process="stream",
                      port=settings.stream_port, workers=1,
                      extra=["--worker-class", "gthread", "--threads", "100"])
    """
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        str(GUNICORN_CONF),
        "--bind",
        f"0.0.0.0:{port if port is not None else settings.port}",
        "--workers",
        str(workers if workers is not None else web_concurrency()),
        "--control-socket",
        str(control_socket_path(service if process == "web" else f"{service}-{process}")),
        "--name",
        f"{service}-{process}",
        *extra,
        create_app_path,
    ]


def _migrate(service: str, settings: ServiceSettings) -> int:
    from shared.migrations import upgrade

    upgrade(service, settings.sqlalchemy_url)
    print(f"{service}: 数据库已是最新版本 / database migrated to head", file=sys.stderr)
    return 0


def _web(service: str, settings: ServiceSettings, create_app_path: str) -> int:
    argv = gunicorn_argv(service, settings, create_app_path)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
    return 0  # not reached: exec replaces this process


def _worker(
    settings: ServiceSettings,
    make_database: Callable[[Any], Any],
    subscriptions: Callable[[], Mapping] | None,
    jobs: Callable[[Any], Sequence] | None = None,
) -> int:
    from shared.logging import configure_logging
    from shared.worker import run_worker

    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    run_worker(
        settings,
        make_database(settings),
        subscriptions() if subscriptions else None,
        jobs=jobs(settings) if jobs else (),
    )
    return 0


def _declare(
    settings: ServiceSettings,
    make_database: Callable[[Any], Any],
    subscriptions: Callable[[], Mapping] | None,
) -> int:
    """Create the service's queues and bindings now, so that every event type a service consumes
    is routed to its queue from the first publish (a type bound by no queue at all is returned
    to the relay and waits in the outbox; a type bound by another service only would reach that
    one alone). An empty main queue declared with older arguments is re-created."""
    from shared.consumer import TopologyConflict
    from shared.worker import declare_queues

    try:
        declare_queues(
            settings, make_database(settings), subscriptions() if subscriptions else None
        )
    except TopologyConflict as exc:
        print(
            f"{settings.service_name}: 队列配置冲突 / configuration error: {exc}",
            file=sys.stderr,
        )
        return 3
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback
        print(
            f"{settings.service_name}: 无法连接消息队列，队列将在 worker 启动时创建 / "
            f"broker not reachable ({type(exc).__name__}); the worker declares its queues "
            "when it connects",
            file=sys.stderr,
        )
        return 1
    print(f"{settings.service_name}: 队列已就绪 / queues declared", file=sys.stderr)
    return 0


def _replay_dlq(
    settings: ServiceSettings,
    make_database: Callable[[Any], Any],
    subscriptions: Callable[[], Mapping] | None,
    limit: int | None,
) -> int:
    """Send dead letters back through the service's queue once their cause is fixed."""
    from shared.worker import consumer_for

    if subscriptions is None:
        print(f"{settings.service_name}: 本服务不消费事件 / consumes no events", file=sys.stderr)
        return 0
    moved = consumer_for(settings, make_database(settings), subscriptions()).replay_dead_letters(
        limit
    )
    print(f"{settings.service_name}: 已重新投递 {moved} 条 / {moved} dead letter(s) replayed")
    return 0


def build_parser(service: str, commands: Mapping[str, Command]) -> argparse.ArgumentParser:
    """``<service> migrate|web|worker|<extra>``; every command is listed in ``--help``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {service}", description=f"Service365 {service}"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("migrate", help="把数据库升级到最新版本 (alembic upgrade head)")
    sub.add_parser("web", help="启动 HTTP 服务 (gunicorn; WEB_CONCURRENCY workers)")
    sub.add_parser("worker", help="启动后台进程: outbox relay + event consumer")
    sub.add_parser("declare", help="创建本服务的队列与绑定 (declare queues and bindings)")
    replay = sub.add_parser(
        "replay-dlq", help="把死信队列中的事件重新投递 (move dead letters back to the queue)"
    )
    replay.add_argument("--limit", type=int, default=None, help="at most this many")
    for name, command in commands.items():
        if name in ("migrate", "web", "worker", "declare", "replay-dlq"):
            raise ValueError(f"command {name!r} is built in")
        command.add_arguments(sub.add_parser(name, help=command.help))
    return parser


def main(
    service: str,
    *,
    settings_cls: type[ServiceSettings],
    create_app_path: str,
    make_database: Callable[[Any], Any],
    subscriptions: Callable[[], Mapping] | None = None,
    commands: Mapping[str, Command] = {},
    jobs: Callable[[Any], Sequence] | None = None,
    argv: Sequence[str] | None = None,
) -> None:
    """Run one command of ``service`` and exit with its code; bad settings exit 2 in one line."""
    default_environment(service, argv[0] if argv else None)
    args = build_parser(service, commands).parse_args(argv)
    settings = load_settings(settings_cls)
    if args.command == "migrate":
        code = _migrate(service, settings)
    elif args.command == "web":
        code = _web(service, settings, create_app_path)
    elif args.command == "worker":
        code = _worker(settings, make_database, subscriptions, jobs)
    elif args.command == "declare":
        code = _declare(settings, make_database, subscriptions)
    elif args.command == "replay-dlq":
        code = _replay_dlq(settings, make_database, subscriptions, args.limit)
    else:
        code = commands[args.command].run(args, settings)
    raise SystemExit(code or 0)


def _keys(argv: Sequence[str] | None = None) -> None:
    """``python -m shared.cli keys``: the Ed25519 pair intake signs with and all services check."""
    from shared.auth import ensure_keypair

    parser = argparse.ArgumentParser(
        prog="python -m shared.cli keys",
        description="生成令牌签名密钥对 / make the JWT key pair if it does not exist yet",
    )
    parser.add_argument("--dir", type=Path, default=None, help="folder for both files (var/keys)")
    parser.add_argument("--private", type=Path, default=None, help="private key file (intake)")
    parser.add_argument("--public", type=Path, default=None, help="public key file (everyone)")
    args = parser.parse_args(argv)
    folder = args.dir or var_dir() / "keys"
    private = args.private or folder / "jwt-private.pem"
    public = args.public or folder / "jwt-public.pem"
    existed = private.exists() and public.exists()
    public.parent.mkdir(parents=True, exist_ok=True)
    ensure_keypair(private, public)
    state = "已存在 / kept" if existed else "已生成 / created"
    print(f"JWT keys {state}: {private} {public}")


if __name__ == "__main__":
    if sys.argv[1:2] != ["keys"]:
        raise fail("usage: python -m shared.cli keys [--dir DIR] [--private FILE] [--public FILE]")
    _keys(sys.argv[2:])
