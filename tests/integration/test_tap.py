"""cwmpgw.tap, the twistd plugin and the .tac files, down to the real ``twistd`` script."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import IService, MultiService
from twisted.python import usage

from cwmpgw.config import Config, RedisTarget, default_config
from cwmpgw.tap import Options, makeService
from tests.support.paths import REPO

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
OPTIONS = ["--config", "--data-dir", "--node", "--port", "--interface", "--redis", "--prefix"]
OPTIONS += ["--no-tls", "-c"]

BAD_TOML = """\
[acs]
port = "7547"
tls = "yes"
[auth]
schemes = ["digest", "ntlm"]
realms = "typo"
"""
BAD_ERRORS = [
    "acs.port: must be an integer, not a string",
    "acs.tls: must be true or false, not a string",
    "auth.realms: unknown key (did you mean 'realm'?)",
    "auth.schemes: unknown value 'ntlm'; expected 'digest', 'basic'",
]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command with a clean CWMPGW_* environment; output is stdout+stderr together."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CWMPGW_")}
    environ.update(env)
    return subprocess.run(
        args,
        cwd=cwd,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        check=False,
    )


# -- Options -----------------------------------------------------------------------------------


def test_no_options_gives_the_defaults() -> None:
    config = parse()["config"]
    assert config == default_config()


def test_options_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[gateway]\nnode = "file-node"\n[acs]\nport = 1000\n[redis]\nprefix = "f:"\n')
    config = parse(
        "-c",
        str(path),
        "--data-dir",
        "state",
        "--port",
        "2000",
        "--interface",
        "::",
        "--redis",
        "redis://:pw@r:6380/1",
        "--no-tls",
    )["config"]
    assert isinstance(config, Config)
    assert config.source == str(path)
    assert config.gateway.data_dir == str(tmp_path / "state")
    assert config.gateway.node == "file-node"  # not given: the file's value stays
    assert config.redis.prefix == "f:"
    assert (config.acs.port, config.acs.interface, config.acs.tls) == (2000, "::", False)
    assert config.redis.target == RedisTarget("r", 6380, None, 1, "pw")


def test_node_and_prefix_options() -> None:
    config = parse("--node", "gw-b", "--prefix", "fleet:")["config"]
    assert (config.gateway.node, config.redis.prefix) == ("gw-b", "fleet:")


def test_every_override_names_its_config_key() -> None:
    for name, _short, _default, help_text, *_ in Options.optParameters:
        if name != "config":
            assert "[config: " in help_text, name
    for name, _short, help_text in Options.optFlags:
        assert "[config: acs.tls = false]" in help_text, name
    assert "config-file key" in Options.longdesc


def test_bad_file_lists_every_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD_TOML)
    with pytest.raises(usage.UsageError) as info:
        parse("--config", str(path))
    message = str(info.value)
    assert message.splitlines()[0] == f"invalid configuration ({path}):"
    assert message.splitlines()[1:] == [f"  {e}" for e in BAD_ERRORS]


def test_bad_options_reported_with_the_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[acs]\nport = "x"\n[auth]\nrealm = ""\n')
    with pytest.raises(usage.UsageError) as info:
        parse("-c", str(path), "--port", "eighty", "--prefix", "a b", "--interface", "eth0")
    lines = str(info.value).splitlines()[1:]
    assert lines == [
        "  acs.port: must be an integer, got 'eighty' (--port)",
        "  acs.interface: must be an IP address ('' for all IPv4 interfaces, '::' for all), "
        "got 'eth0'",
        "  auth.realm: must not be empty",
        "  redis.prefix: must not contain spaces",
    ]


def test_toml_syntax_error_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[acs\n")
    with pytest.raises(usage.UsageError) as info:
        parse("-c", str(path))
    assert f"  {path}: " in str(info.value)


def test_make_service_passes_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Config] = []
    service = MultiService()

    def make_service(config: Config, reactor: Any = None) -> IService:
        built.append(config)
        return service

    fake = types.ModuleType("cwmpgw.service")
    fake.make_service = make_service  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cwmpgw.service", fake)
    options = parse("--port", "0")
    assert makeService(options) is service
    assert built == [options["config"]]
    assert built[0].acs.port == 0


# -- import hygiene ----------------------------------------------------------------------------


def test_tap_and_config_import_neither_reactor_nor_txredisapi(tmp_path: Path) -> None:
    code = (
        "import sys, cwmpgw.tap, cwmpgw.config\n"
        "bad = [m for m in ('twisted.internet.reactor', 'txredisapi') if m in sys.modules]\n"
        "print('LOADED', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = run([sys.executable, "-c", code], tmp_path)
    assert result.returncode == 0, result.stdout
    assert "LOADED []" in result.stdout


def test_plugin_module_imports_no_reactor(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from twisted.plugins import cwmpgw_plugin\n"
        "print(cwmpgw_plugin.cwmpgw.tapname, cwmpgw_plugin.cwmpgw.module)\n"
        "sys.exit('twisted.internet.reactor' in sys.modules)\n"
    )
    result = run([sys.executable, "-c", code], tmp_path)
    assert result.returncode == 0, result.stdout
    assert "cwmpgw cwmpgw.tap" in result.stdout


# -- the real twistd console script ---------------------------------------------------------


def test_twistd_lists_the_plugin(tmp_path: Path) -> None:
    result = run([TWISTD, "--help"], tmp_path)
    assert result.returncode == 0, result.stdout
    assert any(
        line.split()[:1] == ["cwmpgw"] and "TR-069 (CWMP) ACS gateway" in line
        for line in result.stdout.splitlines()
    ), result.stdout


def test_twistd_cwmpgw_help_lists_every_option(tmp_path: Path) -> None:
    result = run([TWISTD, "cwmpgw", "--help"], tmp_path)
    assert result.returncode == 0, result.stdout
    for option in OPTIONS:
        assert option in result.stdout, option
    assert "TR-069" in result.stdout


def test_twistd_with_a_bad_config_reports_every_error(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(BAD_TOML)
    result = run([TWISTD, "-n", "cwmpgw", "--config", "bad.toml"], tmp_path)
    assert result.returncode != 0
    assert "invalid configuration (bad.toml):" in result.stdout
    for error in BAD_ERRORS:
        assert error in result.stdout, error
    assert "Traceback" not in result.stdout
    assert not (tmp_path / "twistd.pid").exists()


# -- the .tac files ----------------------------------------------------------------------------


def test_tac_with_a_bad_config_exits_cleanly(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(BAD_TOML)
    tac = str(REPO / "tac" / "cwmpgw.tac")
    result = run([TWISTD, "-n", "-y", tac], tmp_path, CWMPGW_CONFIG="bad.toml")
    assert result.returncode == 1
    assert "cwmpgw: invalid configuration (bad.toml):" in result.stdout
    for error in BAD_ERRORS:
        assert f"  {error}\n" in result.stdout, error
    assert "Traceback" not in result.stdout


def test_cluster_tac_requires_an_external_redis(tmp_path: Path) -> None:
    tac = str(REPO / "tac" / "cluster-node.tac")
    result = run([TWISTD, "-n", "-y", tac], tmp_path)
    assert result.returncode == 1
    assert "redis.url: must be set for a cluster node" in result.stdout
    assert "Traceback" not in result.stdout


def test_cluster_tac_with_a_bad_config_exits_cleanly(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(BAD_TOML)
    tac = str(REPO / "tac" / "cluster-node.tac")
    result = run([TWISTD, "-n", "-y", tac], tmp_path, CWMPGW_CONFIG="bad.toml")
    assert result.returncode == 1
    for error in BAD_ERRORS:
        assert f"  {error}\n" in result.stdout, error
    assert "Traceback" not in result.stdout


def test_tac_builds_the_application_with_a_log_observer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loaded the way twistd -y loads it, with a stand-in composition root."""
    from twisted.application.service import IServiceCollection, loadApplication
    from twisted.logger import ILogObserver

    built: list[Config] = []
    children: list[IService] = []

    def make_service(config: Config, reactor: Any = None) -> IService:
        built.append(config)
        children.append(MultiService())
        return children[-1]

    fake = types.ModuleType("cwmpgw.service")
    fake.make_service = make_service  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cwmpgw.service", fake)
    (tmp_path / "gw.toml").write_text('[gateway]\nnode = "tac-node"\n[redis]\nurl = "redis://r"\n')
    monkeypatch.setenv("CWMPGW_CONFIG", "gw.toml")
    monkeypatch.setenv("CWMPGW_NODE", "proc-2")

    single = loadApplication(str(REPO / "tac" / "cwmpgw.tac"), "python")
    cluster = loadApplication(str(REPO / "tac" / "cluster-node.tac"), "python")

    assert [c.gateway.node for c in built] == ["tac-node", "proc-2"]
    assert built[1].redis.target == RedisTarget("r", 6379, None, 0, None)
    for application, child in zip((single, cluster), children, strict=True):
        assert callable(application.getComponent(ILogObserver, None))
        assert list(IServiceCollection(application)) == [child]
