"""Settings: validation of every flag, variable and config-file key, precedence, print-config.

These run ``leveret.broker.cli.main`` in-process up to the point where the broker would
start (a refused setting stops it before anything is started or created); the real
processes are in test_cli.py.
"""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from leveret.broker import cli, settings
from leveret.broker.setting_types import MASK
from leveret.broker.settings import SettingsError, resolve

pytestmark = pytest.mark.leveret_only

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """``cli.main`` configures the root logger; later tests (caplog) must not see that."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _no_leveret_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for setting in settings.SETTINGS:
        monkeypatch.delenv(setting.env_name, raising=False)
    monkeypatch.delenv(settings.CONFIG_ENV, raising=False)


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command line, expect exit status 2, return what it said."""
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


REJECTED_FLAGS = [
    (["--port", "70000"], "--port", "0..65535"),
    (["--port", "-1"], "--port", "0..65535"),
    (["--port", "amqp"], "--port", "0..65535"),
    (["--tls-port", "65536"], "--tls-port", "0..65535"),
    (["--heartbeat", "-1"], "--heartbeat", "0..65535"),
    (["--heartbeat", "65536"], "--heartbeat", "0..65535"),
    (["--memory-high-watermark", "-0.5"], "--memory-high-watermark", "0..1"),
    (["--memory-high-watermark", "1.5"], "--memory-high-watermark", "0..1"),
    (["--memory-high-watermark", "nan"], "--memory-high-watermark", "0..1"),
    (["--max-message-size", "0"], "--max-message-size", "1..536870912"),
    (["--max-message-size", "536870913"], "--max-message-size", "1..536870912"),
    (["--consumer-timeout", "-1"], "--consumer-timeout", ">= 0"),
    (["--sync-interval", "-5"], "--sync-interval", "0..10000"),
    (["--disk-free-limit", "-1"], "--disk-free-limit", ">= 0"),
    (["--frame-max", "1024"], "--frame-max", "4096..4294967295"),
    (["--channel-max", "0"], "--channel-max", "1..65535"),
    (["--connection-max", "-1"], "--connection-max", "'infinity'"),
    (["--handshake-timeout", "0"], "--handshake-timeout", "1..3600000"),
    (["--log-level", "loud"], "--log-level", "debug, info, warning, error"),
    (["--log-max-bytes", "-1"], "--log-max-bytes", ">= 0"),
    (["--auth-mechanisms", "PLAIN,CRAM-MD5"], "--auth-mechanisms", "EXTERNAL"),
    (["--auth-mechanisms", "none"], "--auth-mechanisms", "at least one"),
    (["--host", ""], "--host", "non-empty"),
    (["--tls-port", "5671"], "tls_port (--tls-port)", "tls_cert and tls_key"),
    (["--tls-port", "5672", "--tls-cert", "c", "--tls-key", "k"], "tls_port", "differ"),
    (["--tls-port", "5671", "--tls-cert", "/nonexistent/cert.pem", "--tls-key", "k"],
     "tls_cert (--tls-cert)", "cannot read /nonexistent/cert.pem: No such file"),
    (["--tls-fail-if-no-peer-cert"], "tls_fail_if_no_peer_cert", "tls_ca"),
]


@pytest.mark.parametrize(("flags", "named", "accepted"), REJECTED_FLAGS,
                         ids=[" ".join(flags) for flags, _, _ in REJECTED_FLAGS])
def test_a_bad_flag_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], named: str,
    accepted: str,
) -> None:
    err = _refused(["serve", "--data-dir", str(tmp_path / "data"), *flags], capsys)
    assert named in err and accepted in err, err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(("variable", "value", "accepted"), [
    ("LEVERET_PORT", "70000", "0..65535"),
    ("LEVERET_PORT", "5672.0", "0..65535"),
    ("LEVERET_LOG_LEVEL", "verbose", "debug, info"),
])
def test_a_bad_environment_variable_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    variable: str, value: str, accepted: str,
) -> None:
    monkeypatch.setenv(variable, value)
    err = _refused(["serve", "--data-dir", str(tmp_path / "data")], capsys)
    assert variable in err and accepted in err, err
    assert not (tmp_path / "data").exists()


REJECTED_FILES = [
    ("prot = 5672", "unknown key 'prot' (did you mean 'port'?)"),
    ("colour = 'blue'", "unknown key 'colour'"),
    ("port = '5672'", "port: expected an integer in 0..65535 (0: any free port), got '5672'"),
    ("port = 70000", "port: expected an integer in 0..65535"),
    ("heartbeat = -1", "heartbeat: expected an integer in 0..65535"),
    ("fsync = 'no'", "fsync: expected true or false"),
    ("memory_high_watermark = 2", "memory_high_watermark: expected a number in 0..1"),
    ("max_message_size = 0", "max_message_size: expected an integer in 1..536870912"),
    ("consumer_timeout = -1", "consumer_timeout: expected an integer >= 0"),
    ("loopback_users = 'guest'", "loopback_users: expected a list of names"),
    ("data_dir = ''", "data_dir: expected a path"),
    ("users = ['alice']", "users: expected a table of users"),
    ("[users.alice]\npassword = 1", "users: user 'alice': password: expected a string"),
    ("[users.alice]\npasword = 'x'", "users: user 'alice': unknown key 'pasword'"),
    ("[users.alice]\npassword = 'x'\npassword_hash = 'y'", "not both"),
    ("[users.alice]\npassword_hash = 'y'\nhashing_algorithm = 'md4'", "hashing_algorithm"),
    ("[users]\nalice = 'x'\n[[permissions]]\nvhost = '/'", "entry 1: user: expected"),
    ("[users]\nalice = 'x'\n[[permissions]]\nuser = 'alice'\nread = '('",
     "entry 1: read: not a regular expression"),
    ("[users]\nalice = 'x'\n[[permissions]]\nuser = 'bob'", "no user 'bob' in users"),
    ("[[permissions]]\nuser = 'bob'", "permissions: apply to the users table"),
    ("[vhost_limits.'/']\nmax-channels = 1", "vhost '/': unknown key 'max-channels'"),
    ("[vhost_limits.'/']\nmax-queues = -1", "max-queues: expected an integer >= 0"),
    ("port = ", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), REJECTED_FILES,
                         ids=[text.split("\n")[-1] for text, _ in REJECTED_FILES])
def test_a_bad_config_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    config = _write(tmp_path / "leveret.toml", text + "\n")
    err = _refused(["serve", "--config", str(config), "--data-dir", str(tmp_path / "data")],
                   capsys)
    assert f"config file {config}" in err or "permissions" in err, err
    assert message in err, err
    assert not (tmp_path / "data").exists()


def test_a_missing_config_file_is_refused(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(["serve", "--config", str(tmp_path / "nope.toml")], capsys)
    assert "nope.toml: cannot read it: No such file or directory" in err


@pytest.mark.parametrize(("cli_port", "env_port", "file_port", "expected", "origin"), [
    (3333, "2222", 1111, 3333, "--port"),
    (None, "2222", 1111, 2222, "LEVERET_PORT"),
    (None, None, 1111, 1111, "config file"),
    (None, None, None, 5672, None),
])
def test_command_line_beats_environment_beats_file_beats_default(
    tmp_path: Path, cli_port: int | None, env_port: str | None, file_port: int | None,
    expected: int, origin: str | None,
) -> None:
    config = _write(tmp_path / "leveret.toml",
                    f"port = {file_port}\n" if file_port is not None else "")
    cli_values: dict[str, object] = {"config": config}
    if cli_port is not None:
        cli_values["port"] = cli_port
    environ = {"LEVERET_PORT": env_port} if env_port is not None else {}
    found = resolve(cli_values, environ)
    assert found.values["port"] == expected
    assert found.origins.get("port") == origin


def test_config_path_from_the_environment(tmp_path: Path) -> None:
    config = _write(tmp_path / "leveret.toml", "heartbeat = 30\n")
    assert resolve({}, {"LEVERET_CONFIG": str(config)}).values["heartbeat"] == 30
    other = _write(tmp_path / "other.toml", "heartbeat = 20\n")
    found = resolve({"config": other}, {"LEVERET_CONFIG": str(config)})
    assert found.values["heartbeat"] == 20


def test_an_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    config = _write(tmp_path / "leveret.toml", "host = '::1'\n")
    found = resolve({"config": config}, {"LEVERET_HOST": ""})
    assert found.values["host"] == "::1"


def test_relative_paths_in_the_file_are_relative_to_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    definitions = {"vhosts": [{"name": "/"}], "users": [], "queues": [
        {"name": "q", "vhost": "/", "durable": True}]}
    _write(etc / "defs" / "definitions.json", json.dumps(definitions))
    config = _write(etc / "leveret.toml", 'data_dir = "state"\n'
                                          'load_definitions = "defs/definitions.json"\n'
                                          'log_file = "/var/log/leveret.log"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    found = resolve({"config": Path("../etc/leveret.toml")}, {})
    assert found.values["data_dir"].resolve() == (etc / "state").resolve()
    assert found.values["log_file"] == Path("/var/log/leveret.log")
    assert found.definitions == definitions
    assert found.broker_config().definitions == definitions
    assert config.exists()
    # On the command line (and in the environment) a relative path is the working
    # directory's.
    _write(elsewhere / "d.json", "{}")
    found = resolve({"config": config, "load_definitions": Path("d.json"),
                     "data_dir": Path("here")}, {})
    assert found.definitions == {}
    assert found.values["data_dir"] == Path("here")


@pytest.mark.parametrize(("content", "message"), [
    (None, "load_definitions: cannot read"),
    ("{not json", "is not valid JSON"),
    ("[]", "must hold a JSON object"),
])
def test_bad_load_definitions_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    if content is not None:
        _write(tmp_path / "definitions.json", content)
    config = _write(tmp_path / "leveret.toml", 'load_definitions = "definitions.json"\n')
    err = _refused(["serve", "--config", str(config)], capsys)
    assert message in err, err


SECRETS_FILE = """\
default_pass = "s3cret-default"
[users]
alice = "s3cret-alice"
[users.bob]
password_hash = "s3cret-HASH"
tags = ["administrator", "monitoring"]
[[permissions]]
user = "alice"
vhost = "/"
configure = "^alice\\\\."
[vhost_limits."/"]
max-connections = 10
"""


def test_print_config_masks_secrets_and_loads_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _write(tmp_path / "leveret.toml", SECRETS_FILE)
    monkeypatch.setenv("LEVERET_LOG_LEVEL", "debug")
    argv = ["serve", "--config", str(config), "--port", "1234", "--data-dir",
            str(tmp_path / "data"), "--print-config"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out
    assert out.count(MASK) == 3  # default_pass, alice's password, bob's hash
    assert "port = 1234  # --port" in out
    assert 'log_level = "debug"  # LEVERET_LOG_LEVEL' in out
    assert not (tmp_path / "data").exists()
    printed = tomllib.loads(out)
    assert printed["users"]["bob"]["tags"] == ["administrator", "monitoring"]
    assert printed["permissions"][0]["configure"] == "^alice\\."
    # What it prints is a config file giving the same settings (secrets aside).
    again = resolve({"config": _write(tmp_path / "printed.toml", out)}, {})
    original = resolve({"config": config, "port": 1234, "data_dir": tmp_path / "data"},
                       {"LEVERET_LOG_LEVEL": "debug"})
    for name, value in original.values.items():
        if name not in ("default_pass", "users"):
            assert again.values[name] == value, name


def test_settings_become_the_broker_config() -> None:
    found = resolve({"consumer_timeout": 1500, "sync_interval": 5.0, "handshake_timeout": 2500,
                     "memory_high_watermark": 0.0, "connection_max": None,
                     "loopback_users": ()}, {})
    config = found.broker_config()
    assert config.consumer_timeout == 1.5
    assert config.sync_interval == 0.005
    assert config.handshake_timeout == 2.5
    assert config.memory_high_watermark == 0  # 0: off
    assert config.loopback_users == ()
    assert config.users is None and config.definitions is None
    default = resolve({}, {}).broker_config()
    assert default.consumer_timeout is None
    assert default.port == 5672 and default.data_dir == Path("data")
    assert default.auth_mechanisms == ("PLAIN", "AMQPLAIN")
    assert default.memory_high_watermark > 0


def test_the_example_config_file_loads() -> None:
    example = REPO / "deploy" / "leveret.toml"
    found = resolve({"config": example}, {})
    assert found.values["host"] == "0.0.0.0"
    assert found.values["data_dir"] == Path("/var/lib/leveret")
    assert found.broker_config().port == 5672


def test_no_arguments_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "serve" in err and "check" in err and "usage: leveret" in err


def test_serve_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for shown in ("(default: 5672; $LEVERET_PORT)", "(default: info; $LEVERET_LOG_LEVEL)",
                  "(default: data; $LEVERET_DATA_DIR)", "(default: 60)"):
        assert shown in " ".join(out.split()), shown


def test_every_setting_is_a_broker_config_field() -> None:
    from dataclasses import fields

    from leveret.broker.config import BrokerConfig

    names = {f.name for f in fields(BrokerConfig)}
    derived = {"load_definitions": "definitions", "log_max_bytes": None, "log_backups": None,
               "log_level": None}
    for setting in settings.SETTINGS:
        target = derived.get(setting.name, setting.name)
        assert target is None or target in names, setting.name


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


def test_the_readme_config_example_loads(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    example = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    for name in ("server.pem", "server.key"):  # a TLS listener's files must be readable
        _write(tmp_path / "tls" / name, "")
    found = resolve({"config": _write(tmp_path / "leveret.toml", example)}, {})
    assert found.values["tls_cert"] == tmp_path / "tls" / "server.pem"
    assert found.values["permissions"][0]["configure"] == "^app\\."
    assert found.values["vhost_limits"] == {"orders": {"max-connections": 100,
                                                       "max-queues": 1000}}
    assert found.broker_config().users["admin"]["tags"] == ["administrator"]
