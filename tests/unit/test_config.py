"""Configuration loading and validation: defaults, every validator, one-line errors naming the key."""

from __future__ import annotations

import pytest

from nfsentry.config import schema as C
from nfsentry.config.schema import ConfigError


def test_defaults_monitor_low_ports_plus_trojans_and_one_hour_blocks():
    cfg = C.defaults()
    assert cfg.tcp_ports[0] == (1, 1023)
    assert (31337, 31337) in cfg.tcp_ports and (12345, 12346) in cfg.tcp_ports
    assert (31335, 31335) in cfg.udp_ports
    assert cfg.durations["block_duration"] == 3600
    assert cfg.durations["max_block_duration"] == 7 * 86400
    assert cfg["detection"]["scan_trigger"] == 0
    assert cfg["response"]["tcp"] == "block"


def test_file_overrides_only_what_it_names(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[response]\nblock_duration = "2h30m"\n[monitor]\ntcp_ports = [22, "100-200"]\ntcp_exclude = ["150-160"]\n')
    cfg = C.load(p)
    assert cfg.durations["block_duration"] == 9000
    assert cfg.tcp_ports == [(22, 22), (100, 149), (161, 200)]
    assert cfg["response"]["udp"] == "block"


@pytest.mark.parametrize(
    "toml, fragment",
    [
        ("[response]\nfoo = 1", "[response] unknown key 'foo'"),
        ("[bogus]\nx = 1", "unknown section [bogus]"),
        ('[monitor]\ntcp_ports = ["1-99999"]', "[monitor] tcp_ports"),
        ('[monitor]\ntcp_ports = ["200-100"]', "start after end"),
        ("[monitor]\ntcp_ports = [0]", "outside 1-65535"),
        ('[monitor]\ntcp_ports = "1-1023"', "[monitor] tcp_ports: expected a list"),
        ('[ignore]\naddresses = ["198.18.0.300"]', "[ignore] addresses: bad address"),
        ('[ignore]\naddresses = ["0.0.0.0/0"]', "would match every address"),
        ('[ignore]\naddresses = ["::/0"]', "would match every address"),
        ('[response]\nblock_duration = "forever"', "[response] block_duration: bad duration"),
        ("[response]\nblock_duration = -5", "[response] block_duration"),
        ('[response]\ntcp = "nuke"', "[response] tcp: 'nuke' is not one of"),
        ("[detection]\nscan_trigger = true", "[detection] scan_trigger: expected an integer"),
        ("[detection]\nscan_trigger = -1", "[detection] scan_trigger: -1 outside"),
        ('[detection]\ninstant_labels = ["BOGUS"]', "unknown label"),
        ('[response]\ncommand = "/bin/echo $TARGET$"', "never run through a shell"),
        ('[response]\ncommand = ["/bin/echo", "$TARGET$; rm -rf /"]', "shell metacharacters"),
        ('[response]\ncommand = ["echo", "$TARGET$"]', "absolute path"),
        ('[response]\ntcp = "command"', "needs a command"),
        ('[logging]\njson_file = "relative.jsonl"', "must be an absolute path"),
        ("[nft]\nftp_queue = 0", "must differ"),
        ('[nft]\ntable = "x y"', "bad table name"),
        ("this is not toml", "TOML syntax error"),
        ('[monitor]\nrecent_service_grace = "soon"', "[monitor] recent_service_grace: bad duration"),
        ("[monitor]\nrecent_service_grace = -1", "[monitor] recent_service_grace: bad duration"),
        ("[monitor]\nrecent_service_grace = true", "[monitor] recent_service_grace: expected a duration"),
        ('[monitor]\nrecent_service_grace = "2d"', "[monitor] recent_service_grace: longer than 1d"),
    ],
)
def test_bad_values_are_refused_with_one_line_naming_the_key(tmp_path, toml, fragment):
    p = tmp_path / "bad.toml"
    p.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        C.load(p)
    msg = str(exc.value)
    assert fragment in msg
    assert "\n" not in msg
    assert str(p) in msg


@pytest.mark.parametrize("value,seconds", [(None, 600), ('"0"', 0), ("0", 0), ('"90s"', 90), ('"0.5s"', 1), ('"1d"', 86400)])
def test_recent_service_grace_reaches_the_ruleset_spec(tmp_path, value, seconds):
    from nfsentry.config.derive import ruleset_spec

    p = tmp_path / "c.toml"
    p.write_text("" if value is None else f"[monitor]\nrecent_service_grace = {value}\n")
    spec = ruleset_spec(C.load(p), []).normalized()
    assert spec.recent_service_grace == seconds  # whole seconds, a fraction rounded up (never 0 by rounding)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        C.load(tmp_path / "nope.toml")


def test_command_with_placeholders_is_accepted():
    cfg = C.validate({"response": {"command": ["/usr/local/sbin/notify", "--host=$TARGET$", "$PORT$", "$MODE$"], "tcp": "command"}})
    assert cfg["response"]["command"][1] == "--host=$TARGET$"


def test_ignore_file_portsentry_format(tmp_path):
    f = tmp_path / "portsentry.ignore"
    f.write_text("# comment\n127.0.0.1/32\n198.18.5.0/24  # lab\n\n2001:db8::/48\n0.0.0.0\n")
    cfg = C.validate({"ignore": {"files": [str(f)]}})
    assert [str(n) for n in cfg.ignore] == ["127.0.0.1/32", "198.18.5.0/24", "2001:db8::/48", "0.0.0.0/32"]
    f.write_text("198.18.0.1\nnot-an-address\n")
    with pytest.raises(ConfigError, match=r"portsentry.ignore:2: bad address"):
        C.validate({"ignore": {"files": [str(f)]}})


def test_example_config_lists_every_key_with_its_default():
    """examples/nfsentry.toml documents every key, and its values are the built-in defaults."""
    import tomllib
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "nfsentry.toml"
    raw = tomllib.loads(path.read_text())
    assert set(raw) == set(C.DEFAULTS)
    for section, keys in C.DEFAULTS.items():
        assert set(raw[section]) == set(keys), section
        for key, default in keys.items():
            assert raw[section][key] == default, f"[{section}] {key}"
    C.load(path)
