"""Settings: a bad environment stops a process with one line naming the variable (exit 2)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from intake.settings import IntakeSettings
from shared.cli import gunicorn_argv
from shared.settings import PROJECT_ROOT, ServiceSettings, load_settings


def _one_line_exit(capsys, cls, **env) -> str:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        with pytest.raises(SystemExit) as stopped:
            load_settings(cls)
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("DATABASE_URL", "mysql://x"),
        ("RABBITMQ_URL", "http://localhost:5672"),
        ("APP_ENV", "staging"),
        ("LOG_LEVEL", "LOUD"),
        ("RELAY_BATCH_SIZE", "0"),
    ],
)
def test_a_bad_value_stops_with_one_line_naming_the_variable(capsys, variable, value):
    line = _one_line_exit(capsys, ServiceSettings, **{variable: value})

    assert line.startswith("配置错误")
    assert variable in line


def test_intake_refuses_the_dev_login_in_production(capsys):
    line = _one_line_exit(capsys, IntakeSettings, APP_ENV="production", WECHAT_MODE="dev")

    assert "WECHAT_MODE" in line


def test_intake_refuses_demo_data_in_production(capsys):
    line = _one_line_exit(capsys, IntakeSettings, APP_ENV="production", DEMO_DATA="true")

    assert "DEMO_DATA" in line


def test_a_postgresql_url_is_given_the_psycopg_driver(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db:5432/intake")

    settings = load_settings(ServiceSettings)

    assert settings.sqlalchemy_url == "postgresql+psycopg://u@db:5432/intake"


def test_without_database_url_the_service_uses_a_sqlite_file_under_var(monkeypatch, tmp_path):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("SERVICE365_VAR_DIR", str(tmp_path))

    settings = load_settings(IntakeSettings)

    assert settings.sqlalchemy_url == f"sqlite:///{tmp_path / 'intake.db'}"


def _run_intake(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS")}
    full_env.update(
        PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "services" / "intake")]),
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "intake", *args],
        cwd=PROJECT_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_line_stops_on_a_bad_port_with_one_line_and_exit_2(tmp_path):
    result = _run_intake("migrate", PORT="abc", SERVICE365_VAR_DIR=str(tmp_path))

    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("配置错误")]
    assert len(errors) == 1
    assert "PORT" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "intake.db").exists()


def test_the_command_line_stops_on_a_bad_web_concurrency_before_starting_gunicorn(tmp_path):
    result = _run_intake("web", WEB_CONCURRENCY="many", SERVICE365_VAR_DIR=str(tmp_path))

    assert result.returncode == 2
    assert "WEB_CONCURRENCY" in result.stderr
    assert "gunicorn" not in result.stderr.lower()


def _settings_classes() -> list[type[ServiceSettings]]:
    """ServiceSettings and every service's subclass (services/<svc>/<svc>/settings.py)."""
    classes: list[type[ServiceSettings]] = [ServiceSettings]
    for path in sorted(PROJECT_ROOT.glob("services/*/*/settings.py")):
        name = f"{path.parent.name}.settings"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = sys.modules.get(name)
        if module is None:
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        classes += [
            value
            for value in vars(module).values()
            if isinstance(value, type)
            and issubclass(value, ServiceSettings)
            and value is not ServiceSettings
        ]
    return classes


def test_the_readme_lists_every_environment_variable_of_the_settings():
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", readme, flags=re.MULTILINE))

    classes = _settings_classes()
    assert IntakeSettings in classes
    for cls in classes:
        missing = {name.upper() for name in cls.model_fields} - documented
        assert not missing, f"README.md lacks {sorted(missing)} from {cls.__name__}"


def test_each_service_web_gets_its_own_gunicorn_control_socket(monkeypatch, tmp_path):
    monkeypatch.setenv("SERVICE365_VAR_DIR", str(tmp_path))
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)

    argvs = {
        name: gunicorn_argv(name, ServiceSettings(port=port), f"{name}.app:create_app()")
        for name, port in (("intake", 8001), ("dispatch", 8002))
    }

    sockets = {name: argv[argv.index("--control-socket") + 1] for name, argv in argvs.items()}
    assert sockets == {
        "intake": str(tmp_path / "run" / "intake.ctl"),
        "dispatch": str(tmp_path / "run" / "dispatch.ctl"),
    }
    assert argvs["intake"][argvs["intake"].index("--workers") + 1] == "2"
    assert "0.0.0.0:8002" in argvs["dispatch"]
