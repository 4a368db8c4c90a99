"""PortSentry configuration import: parsing as PortSentry parses, and every key's effect on the
validated nfsentry Config (the importer's TOML always goes through config.validate here)."""

from __future__ import annotations

import ipaddress
import shutil
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfsentry.config import portsentry as P
from nfsentry.config import schema as C
from nfsentry.config.schema import ConfigError

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "portsentry"
DEBIAN = (FIX / "debian-1.2.conf").read_text()
V2 = (FIX / "portsentry-2.0.conf").read_text()


@pytest.fixture
def etc(tmp_path):
    """A copy of /etc/portsentry (ignore files) under tmp_path."""
    d = tmp_path / "etc" / "portsentry"
    d.mkdir(parents=True)
    for name in ("portsentry.ignore", "portsentry.ignore.static"):
        shutil.copy(FIX / name, d / name)
    return d


def conf_file(tmp_path, etc, text, *replace):
    text = text.replace("/etc/portsentry/", f"{etc}/")
    for old, new in replace:
        assert old in text, old
        text = text.replace(old, new)
    p = tmp_path / "portsentry.conf"
    p.write_text(text)
    return p


def load(tmp_path, etc, text, *replace, defaults: str | None = "", version=None):
    """Import and validate; returns (Config, toml text, problems)."""
    p = conf_file(tmp_path, etc, text, *replace)
    dpath = ""
    if defaults is not None and defaults != "":
        dpath = tmp_path / "default-portsentry"
        dpath.write_text(defaults)
    toml, problems = P.import_config(p, dpath, version)
    cfg = C.validate(tomllib.loads(toml), str(p))
    return cfg, toml, problems


def line_of(text, prefix):
    return next(n for n, line in enumerate(text.splitlines(), 1) if line.startswith(prefix))


# == parsing like PortSentry =======================================================================
def test_debian_file_parses_cleanly_and_commented_alternatives_are_ignored():
    entries, problems = P.parse_conf(DEBIAN)
    assert problems == []
    assert set(entries) == {
        "TCP_PORTS",
        "UDP_PORTS",
        "ADVANCED_PORTS_TCP",
        "ADVANCED_PORTS_UDP",
        "ADVANCED_EXCLUDE_TCP",
        "ADVANCED_EXCLUDE_UDP",
        "IGNORE_FILE",
        "HISTORY_FILE",
        "BLOCKED_FILE",
        "RESOLVE_HOST",
        "BLOCK_UDP",
        "BLOCK_TCP",
        "KILL_ROUTE",
        "KILL_HOSTS_DENY",
        "SCAN_TRIGGER",
    }
    # 13 commented KILL_ROUTE alternatives surround the one live line
    assert entries["KILL_ROUTE"].raw == "/sbin/route add -host $TARGET$ reject"
    assert DEBIAN.splitlines()[entries["KILL_ROUTE"].line - 1].startswith("KILL_ROUTE=")
    assert entries["TCP_PORTS"].value[:3] == [1, 11, 15] and entries["TCP_PORTS"].value[-1] == 54320
    assert entries["RESOLVE_HOST"].value is False  # RESOLVE_HOST = "0", spaces around '='
    assert entries["KILL_HOSTS_DENY"].raw == "ALL: $TARGET$ : DENY"
    assert "KILL_RUN_CMD" not in entries and "PORT_BANNER" not in entries  # commented out
    assert P.guess_version(DEBIAN) == "1"


def test_2_0_file_parses_with_ranges():
    entries, problems = P.parse_conf(V2)
    assert problems == []
    assert P.guess_version(V2) == "2"
    assert "109-111" in entries["TCP_PORTS"].value and "32771-32774" in entries["TCP_PORTS"].value
    assert entries["KILL_RUN_CMD_FIRST"].value is True  # KILL_RUN_CMD_FIRST = "1"
    assert entries["SCAN_TRIGGER"].value == 2


@pytest.mark.parametrize(
    "text, key, raw",
    [
        ('SCAN_TRIGGER="1"', "SCAN_TRIGGER", "1"),
        ('SCAN_TRIGGER = "1"', "SCAN_TRIGGER", "1"),
        ('SCAN_TRIGGER\t=\t"1"', "SCAN_TRIGGER", "1"),
        ('SCAN_TRIGGER="1"   # after the value', "SCAN_TRIGGER", "1"),
        ('SCAN_TRIGGER="1"\r', "SCAN_TRIGGER", "1"),
        ("KILL_RUN_CMD=\"/usr/bin/logger -t ps 'scan from $TARGET$'\"", "KILL_RUN_CMD", "/usr/bin/logger -t ps 'scan from $TARGET$'"),
        ('PORT_BANNER="** GO AWAY **"', "PORT_BANNER", "** GO AWAY **"),
    ],
)
def test_quoting_as_portsentry_reads_it(text, key, raw):
    entries, problems = P.parse_conf(text + "\n")
    assert entries[key].raw == raw and entries[key].line == 1
    assert problems == []


def test_value_stops_at_a_tab_like_1_2():
    entries, problems = P.parse_conf('KILL_RUN_CMD="/usr/local/bin/x\t$TARGET$"\n')
    assert entries["KILL_RUN_CMD"].raw == "/usr/local/bin/x"
    assert len(problems) == 1 and "control character" in problems[0].message and problems[0].line == 1


def test_missing_closing_quote_takes_the_rest_of_the_line():
    entries, problems = P.parse_conf('#\nKILL_HOSTS_DENY="ALL: $TARGET$\n')
    assert entries["KILL_HOSTS_DENY"].raw == "ALL: $TARGET$"
    assert [(p.line, "closing quote missing" in p.message) for p in problems] == [(2, True)]


def test_empty_value_is_no_value():
    entries, problems = P.parse_conf('KILL_ROUTE=""\n')
    assert entries["KILL_ROUTE"].value is None and problems == []


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("# c\nUDP_PORTS=1,7,9\n", 2, "must be in double quotes"),
        ('# c\n\n  BLOCK_TCP="1"\n', 3, "BLOCK_TCP is indented"),
        ('SYSLOG_FACILITY="auth"\n', 1, "unknown key SYSLOG_FACILITY"),
        ('# c\nBLOCK_FILE="/var/lib/x"\n', 2, "unknown key BLOCK_FILE (did you mean BLOCKED_FILE?)"),
        ('scan_trigger="1"\n', 1, "unknown key scan_trigger (did you mean SCAN_TRIGGER?)"),
        ("this is not a setting\n", 1, 'not a KEY="value" line'),
        ('TCP_PORTS="1,abc,70000,0,20-10,79"\n', 1, "skipped 'abc', '70000', '0', '20-10'"),
        ('TCP_PORTS="abc"\n', 1, "no usable ports"),
        ('ADVANCED_PORTS_TCP="lots"\n', 1, "not a port number 1-65535"),
        ('ADVANCED_PORTS_TCP="70000"\n', 1, "not a port number 1-65535"),
        ('SCAN_TRIGGER="two"\n', 1, "not a count >= 0"),
        ('SCAN_TRIGGER="-1"\n', 1, "not a count >= 0"),
        ('BLOCK_TCP="3"\n', 1, "not 0, 1 or 2"),
        ('BLOCK_UDP="yes"\n', 1, "not 0, 1 or 2"),
        ('RESOLVE_HOST="yes"\n', 1, "not 0 or 1"),
        ('KILL_RUN_CMD_FIRST="2"\n', 1, "not 0 or 1"),
        ('HISTORY_FILE="portsentry.history"\n', 1, "not an absolute path"),
    ],
)
def test_problems_name_the_line(text, line, fragment):
    _, problems = P.parse_conf(text, version="1", source="ps.conf")
    assert len(problems) == 1, problems
    assert problems[0].line == line and fragment in problems[0].message
    assert str(problems[0]).startswith(f"ps.conf:{line}: ")


def test_indented_comments_and_blank_lines_are_fine():
    _, problems = P.parse_conf('\n   \n  # indented comment\n\t# tab comment\n#KILL_ROUTE="x"\n')
    assert problems == []


def test_repeated_key_1_2_takes_the_first_2_0_the_last():
    text = '# c\nKILL_ROUTE="/sbin/iptables -I INPUT -s $TARGET$ -j DROP"\nKILL_ROUTE="/sbin/route add -host $TARGET$ reject"\n'
    e1, p1 = P.parse_conf(text, version="1")
    e2, p2 = P.parse_conf(text, version="2")
    assert e1["KILL_ROUTE"].line == 2 and e2["KILL_ROUTE"].line == 3
    assert p1[0].line == 3 and "1.2 uses the first" in p1[0].message
    assert p2[0].line == 2 and "2.0 uses the last" in p2[0].message


def test_version_guess():
    assert P.guess_version('TCP_PORTS="1,2,3"\n') == "1"
    assert P.guess_version('TCP_PORTS="1-1023,31337"\n') == "2"
    assert P.guess_version("# Portsentry 2.0 Configuration\n") == "2"
    assert P.guess_version("# PortSentry v2.0.2\n") == "2"


@pytest.mark.parametrize(
    "text, modes",
    [
        ('TCP_MODE="atcp"\nUDP_MODE="audp"\n', {"TCP_MODE": "atcp", "UDP_MODE": "audp"}),
        ("TCP_MODE=stcp\nUDP_MODE='sudp'  # stealth\n", {"TCP_MODE": "stcp", "UDP_MODE": "sudp"}),
        ('export TCP_MODE="-tcp"\n', {"TCP_MODE": "tcp"}),
        ('TCP_MODE=""\nUDP_MODE="udp"\n', {"TCP_MODE": "", "UDP_MODE": "udp"}),
    ],
)
def test_defaults_file(text, modes):
    got, problems = P.parse_defaults(text)
    assert {k: v[0] for k, v in got.items()} == modes and problems == []


def test_defaults_file_problems():
    got, problems = P.parse_defaults('# x\nTCP_MODE="udp"\nUDP_MODE="audp"\nDAEMON_OPTS="-x"\nnonsense\n', "default")
    assert got["TCP_MODE"][0] == "tcp" and got["UDP_MODE"][0] == "audp"
    assert [(p.line, p.source) for p in problems] == [(2, "default"), (4, "default"), (5, "default")]
    assert "not one of tcp, stcp, atcp" in problems[0].message


# == every key's effect on the validated Config ====================================================
def test_debian_1_2_classic_modes(tmp_path, etc):
    cfg, toml, problems = load(tmp_path, etc, DEBIAN, defaults=(FIX / "debian-default").read_text())
    assert problems == []
    entries, _ = P.parse_conf(DEBIAN)
    assert cfg.tcp_ports == C.parse_ports(entries["TCP_PORTS"].value)
    assert cfg.udp_ports == C.parse_ports(entries["UDP_PORTS"].value)
    assert (31337, 31337) in cfg.tcp_ports and (22, 22) not in cfg.tcp_ports
    m, d, r, lg = cfg["monitor"], cfg["detection"], cfg["response"], cfg["logging"]
    assert m["tcp_exclude"] == [] and m["udp_exclude"] == [] and m["inuse"] == "auto"
    assert d["scan_trigger"] == 0
    assert (r["tcp"], r["udp"]) == ("log", "log")  # BLOCK_TCP="0", BLOCK_UDP="0"
    assert cfg.durations["block_duration"] == 0  # PortSentry blocks forever
    assert r["hosts_deny"] == "/etc/hosts.deny" and r["command"] == []
    assert cfg["ignore"]["files"] == [str(etc / "portsentry.ignore")]
    assert ipaddress.ip_network("192.168.10.0/24") in cfg.ignore and ipaddress.ip_network("2001:db8:100::/48") in cfg.ignore
    assert lg["format"] == "portsentry1" and lg["history_format"] == "portsentry1" and lg["syslog_facility"] == "daemon"
    assert lg["history_file"] == "/var/lib/portsentry/portsentry.history"
    assert lg["blocked_file"] == "/var/lib/portsentry/portsentry.blocked"
    assert lg["syslog_ident"] == "portsentry"  # Debian's logcheck rules anchor on "portsentry["
    assert lg["resolve_hosts"] is False
    # not carried over, and said why
    assert '# KILL_ROUTE="/sbin/route add -host $TARGET$ reject" (line 128) not carried over: not needed.' in toml
    assert '# ADVANCED_PORTS_TCP="1024" (line 50) not used: only the advanced mode atcp reads it' in toml
    assert "# (Debian builds it from" in toml  # portsentry.ignore.static is next to it


def test_debian_1_2_blocking_in_advanced_modes(tmp_path, etc):
    cfg, toml, problems = load(
        tmp_path,
        etc,
        DEBIAN,
        ('BLOCK_UDP="0"', 'BLOCK_UDP="1"'),
        ('BLOCK_TCP="0"', 'BLOCK_TCP="1"'),
        defaults=(FIX / "debian-default-advanced").read_text(),
    )
    assert problems == []
    # atcp: every port *below* ADVANCED_PORTS_TCP="1024" (1.2), minus ADVANCED_EXCLUDE_TCP="113,139"
    assert cfg.tcp_ports == [(1, 112), (114, 138), (140, 1023)]
    assert cfg["monitor"]["tcp_exclude"] == [113, 139]
    # sudp: UDP_PORTS as listed
    assert cfg.udp_ports == C.parse_ports(P.parse_conf(DEBIAN)[0]["UDP_PORTS"].value)
    assert (cfg["response"]["tcp"], cfg["response"]["udp"]) == ("block", "block")
    assert '# TCP_PORTS="1,11,15' in toml and "not used: TCP_MODE is atcp" in toml


def test_audp_excludes_and_2_0_includes_the_bound(tmp_path, etc):
    cfg, _, _ = load(tmp_path, etc, DEBIAN, defaults='TCP_MODE="stcp"\nUDP_MODE="audp"\n')
    assert cfg.udp_ports == [(1, 66), (68, 136), (139, 519), (521, 1023)]
    cfg2, toml2, _ = load(tmp_path, etc, DEBIAN, defaults='TCP_MODE="atcp"\nUDP_MODE="audp"\n', version="2")
    assert cfg2.tcp_ports[-1] == (140, 1024) and "up to and including it: 1-1024" in toml2


def test_advanced_port_count_edges(tmp_path, etc):
    cfg, toml, problems = load(
        tmp_path,
        etc,
        DEBIAN,
        ('ADVANCED_PORTS_TCP="1024"', 'ADVANCED_PORTS_TCP="100"'),
        ('ADVANCED_EXCLUDE_TCP="113,139"', 'ADVANCED_EXCLUDE_TCP=""'),
        defaults='TCP_MODE="atcp"\n',
    )
    assert cfg.tcp_ports == [(1, 99)] and cfg["monitor"]["tcp_exclude"] == []
    cfg, toml, problems = load(
        tmp_path, etc, DEBIAN, ('ADVANCED_PORTS_TCP="1024"', 'ADVANCED_PORTS_TCP="oops"'), defaults='TCP_MODE="atcp"\n'
    )
    assert cfg.tcp_ports[-1] == (140, 1023) and problems[0].line == 50
    cfg, _, _ = load(tmp_path, etc, DEBIAN, ('ADVANCED_PORTS_TCP="1024"', 'ADVANCED_PORTS_TCP="1"'), defaults='TCP_MODE="atcp"\n')
    assert cfg.tcp_ports == []


def test_empty_mode_watches_nothing_for_that_protocol(tmp_path, etc):
    cfg, toml, _ = load(tmp_path, etc, DEBIAN, defaults='TCP_MODE="tcp"\nUDP_MODE=""\n')
    assert cfg.udp_ports == [] and cfg.tcp_ports
    assert "PortSentry did not watch UDP at all" in toml


def test_2_0_file(tmp_path, etc):
    cfg, toml, problems = load(tmp_path, etc, V2)
    assert problems == []
    assert (109, 111) in cfg.tcp_ports and (32771, 32774) in cfg.tcp_ports and (512, 515) in cfg.tcp_ports
    assert (32770, 32774) in cfg.udp_ports
    r, lg = cfg["response"], cfg["logging"]
    assert (r["tcp"], r["udp"]) == ("block", "command")
    assert r["command"] == ["/usr/local/sbin/portsentry-notify", "--host", "$TARGET$", "--port", "$PORT$", "--mode", "$MODE$"]
    assert r["command_first"] is True and r["hosts_deny"] == ""
    assert cfg["detection"]["scan_trigger"] == 1  # SCAN_TRIGGER="2": reaction on hit 2
    assert lg["format"] == "portsentry2" and lg["history_format"] == "portsentry2" and lg["resolve_hosts"] is True
    assert lg["history_file"] == "/var/log/portsentry/portsentry.history"
    assert "$MODE$ is nfsentry's scan label" in toml
    assert "PORT_BANNER=" in toml and "never answers from a monitored port" in toml


@pytest.mark.parametrize("trigger, expected", [("0", 0), ("1", 0), ("2", 1), ("3", 2), ("10", 9)])
def test_scan_trigger_counts_like_portsentry(tmp_path, etc, trigger, expected):
    cfg, toml, _ = load(tmp_path, etc, DEBIAN, ('SCAN_TRIGGER="0"', f'SCAN_TRIGGER="{trigger}"'))
    assert cfg["detection"]["scan_trigger"] == expected
    assert f"(reaction on hit {max(int(trigger), 1)})" in toml


def test_scan_trigger_beyond_1_2s_state_table_is_reported(tmp_path, etc):
    cfg, _, problems = load(tmp_path, etc, DEBIAN, ('SCAN_TRIGGER="0"', 'SCAN_TRIGGER="80"'))
    assert cfg["detection"]["scan_trigger"] == 79
    assert any("state table" in p.message for p in problems)


@pytest.mark.parametrize(
    "tcp, udp, cmd, expected",
    [
        ("0", "0", None, ("log", "log")),
        ("1", "0", None, ("block", "log")),
        ("2", "1", "/usr/local/bin/page $TARGET$", ("command", "block")),
        ("2", "2", None, ("log", "log")),  # BLOCK=2 without a command: PortSentry ran nothing
        ("2", "2", "/bin/echo $TARGET$ > /tmp/x", ("log", "log")),  # a shell command nfsentry cannot run
    ],
)
def test_block_tcp_udp(tmp_path, etc, tcp, udp, cmd, expected):
    extra = [('#KILL_RUN_CMD="/some/path/here/script $TARGET$ $PORT$"', f'KILL_RUN_CMD="{cmd}"')] if cmd else []
    cfg, toml, _ = load(tmp_path, etc, DEBIAN, ('BLOCK_TCP="0"', f'BLOCK_TCP="{tcp}"'), ('BLOCK_UDP="0"', f'BLOCK_UDP="{udp}"'), *extra)
    assert (cfg["response"]["tcp"], cfg["response"]["udp"]) == expected


def test_missing_block_keys_mean_log_only(tmp_path, etc):
    cfg, toml, _ = load(tmp_path, etc, DEBIAN, ('BLOCK_UDP="0"', ""), ('BLOCK_TCP="0"', ""))
    assert (cfg["response"]["tcp"], cfg["response"]["udp"]) == ("log", "log")
    assert "BLOCK_TCP is not set: PortSentry only logged TCP scans." in toml


def test_kill_run_cmd_shlex_split_keeps_placeholders(tmp_path, etc):
    cmd = "/usr/local/bin/alert --subject 'port scan' $TARGET$ $PORT$ $MODE$"
    cfg, toml, problems = load(
        tmp_path,
        etc,
        DEBIAN,
        ('#KILL_RUN_CMD="/some/path/here/script $TARGET$ $PORT$"', f'KILL_RUN_CMD="{cmd}"'),
        ('#KILL_RUN_CMD_FIRST = "0"', 'KILL_RUN_CMD_FIRST = "0"'),
    )
    assert cfg["response"]["command"] == ["/usr/local/bin/alert", "--subject", "port scan", "$TARGET$", "$PORT$", "$MODE$"]
    assert cfg["response"]["command_first"] is False and problems == []


@pytest.mark.parametrize(
    "cmd, why",
    [
        ("/bin/echo $TARGET$ >> /tmp/scanners", "shell metacharacters"),
        ("/sbin/iptables -I INPUT -s $TARGET$ -j DROP && /usr/bin/logger blocked", "shell metacharacters"),
        ("/usr/bin/mail -s 'scan from $TARGET$ root", "does not split into arguments"),
        ("/usr/local/bin/x `id`", "shell metacharacters"),
        ("no-such-program-anywhere $TARGET$", "absolute path"),
    ],
)
def test_kill_run_cmd_nfsentry_refuses_is_commented_out(tmp_path, etc, cmd, why):
    cfg, toml, problems = load(
        tmp_path,
        etc,
        DEBIAN,
        ('#KILL_RUN_CMD="/some/path/here/script $TARGET$ $PORT$"', f'KILL_RUN_CMD="{cmd}"'),
        ('BLOCK_TCP="0"', 'BLOCK_TCP="1"'),
    )
    assert cfg["response"]["command"] == []
    assert any(why in p.message and p.line == line_of(DEBIAN, "#KILL_RUN_CMD=") for p in problems), problems
    assert "\n# command = " in toml and "never through a shell" in toml


def test_kill_run_cmd_program_found_in_path_is_made_absolute(tmp_path, etc):
    found = shutil.which("logger", path=P.PATH_FOR_COMMANDS)
    if not found:
        pytest.skip("no logger(1) on this machine")
    cfg, toml, _ = load(
        tmp_path, etc, DEBIAN, ('#KILL_RUN_CMD="/some/path/here/script $TARGET$ $PORT$"', 'KILL_RUN_CMD="logger -t portsentry $TARGET$"')
    )
    assert cfg["response"]["command"] == [found, "-t", "portsentry", "$TARGET$"]
    assert "resolved to" in toml


def test_kill_run_cmd_first_without_a_command_is_a_comment(tmp_path, etc):
    cfg, toml, _ = load(tmp_path, etc, DEBIAN, ('#KILL_RUN_CMD_FIRST = "0"', 'KILL_RUN_CMD_FIRST = "1"'))
    assert cfg["response"]["command_first"] is False
    n = line_of(DEBIAN, "#KILL_RUN_CMD_FIRST")
    assert f'KILL_RUN_CMD_FIRST="1" (line {n}) not carried over: there is no command to order.' in toml


@pytest.mark.parametrize(
    "template, carried, note",
    [
        ("ALL: $TARGET$", True, None),
        ("ALL: $TARGET$ : DENY", True, None),
        ("sshd: $TARGET$", True, "differs"),
        ("ALL: 10.0.0.1", False, "no $TARGET$"),
    ],
)
def test_kill_hosts_deny(tmp_path, etc, template, carried, note):
    cfg, toml, _ = load(tmp_path, etc, DEBIAN, ('KILL_HOSTS_DENY="ALL: $TARGET$ : DENY"', f'KILL_HOSTS_DENY="{template}"'))
    assert cfg["response"]["hosts_deny"] == ("/etc/hosts.deny" if carried else "")
    if note:
        assert note in toml


def test_resolve_host(tmp_path, etc):
    cfg, _, _ = load(tmp_path, etc, DEBIAN, ('RESOLVE_HOST = "0"', 'RESOLVE_HOST = "1"'))
    assert cfg["logging"]["resolve_hosts"] is True


def test_every_key_in_the_file_is_named_in_the_output(tmp_path, etc):
    for text in (DEBIAN, V2):
        cfg, toml, _ = load(tmp_path, etc, text, defaults='TCP_MODE="atcp"\nUDP_MODE="udp"\n')
        entries, _ = P.parse_conf((tmp_path / "portsentry.conf").read_text())
        for key, e in entries.items():
            assert f'{key}="{e.raw}" (line {e.line})' in toml, key


def test_missing_ignore_file_is_commented_out_not_fatal(tmp_path, etc):
    (etc / "portsentry.ignore").unlink()
    cfg, toml, problems = load(tmp_path, etc, DEBIAN)
    assert cfg["ignore"]["files"] == [C.DEFAULT_IGNORE_FILE]  # nfsentry's own (empty while missing) only
    assert any(p.line == 69 and "does not exist" in p.message for p in problems)
    assert f'# files = ["{etc}/portsentry.ignore"]' in toml


def test_ignore_file_nfsentry_cannot_read_is_copied_the_way_portsentry_reads_it(tmp_path, etc):
    (etc / "portsentry.ignore").write_text(
        "# hosts\n127.0.0.1\n192.168.1.1 router\n10.1.0.0/16\tlab\ngateway.example.net\n10.9.9.9/40\n2001:db8::/32 office\n"
    )
    cfg, toml, problems = load(tmp_path, etc, DEBIAN)
    assert cfg["ignore"]["files"] == [C.DEFAULT_IGNORE_FILE]
    assert cfg["ignore"]["addresses"] == ["127.0.0.1", "192.168.1.1", "10.1.0.0/16", "2001:db8::/32"]
    skipped = sorted(p.line for p in problems if p.source.endswith("portsentry.ignore"))
    assert skipped == [5, 6]  # a host name and a /40 mask: PortSentry matched nothing with them either
    assert any(p.line == 69 and "copied into [ignore] addresses" in p.message for p in problems)


def test_missing_required_keys_are_reported(tmp_path, etc):
    cfg, toml, problems = load(tmp_path, etc, 'TCP_PORTS="1,2,3"\nUDP_PORTS="7"\n')
    msgs = " | ".join(p.message for p in problems)
    assert "IGNORE_FILE is not set" in msgs and "HISTORY_FILE is not set" in msgs
    assert cfg["logging"]["history_file"] == "" and cfg.tcp_ports == [(1, 3)]


def test_messy_file_still_imports_and_validates(tmp_path, etc):
    text = (FIX / "messy.conf").read_text()
    cfg, toml, problems = load(tmp_path, etc, text, version="1")
    lines = sorted({p.line for p in problems if p.line})
    assert lines == [2, 3, 4, 5, 6, 7, 9, 10, 11, 13, 14, 15, 16]
    assert cfg.tcp_ports == [(1, 1), (11, 11), (15, 15), (79, 79)]
    assert cfg.udp_ports == []  # UDP_PORTS unquoted: PortSentry skipped it
    assert cfg["response"]["tcp"] == "log"  # the indented BLOCK_TCP was not read
    assert cfg["logging"]["history_file"] == ""  # relative path
    for p in problems:
        assert f"#   {p}" in toml


def test_import_reads_debians_defaults_file_when_present(tmp_path, etc, monkeypatch):
    p = conf_file(tmp_path, etc, DEBIAN)
    d = tmp_path / "default"
    d.write_text('TCP_MODE="atcp"\n')
    monkeypatch.setattr(P, "DEFAULTS_FILE", str(d))
    toml, _ = P.import_config(p)
    assert C.validate(tomllib.loads(toml)).tcp_ports[-1] == (140, 1023)
    toml, _ = P.import_config(p, "")  # "" = read none
    assert 'TCP_MODE="tcp" (no defaults file read' in toml


def test_unreadable_files_raise_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^cannot read PortSentry configuration .*/nope.conf: No such file or directory$"):
        P.import_config(tmp_path / "nope.conf", "")
    conf = tmp_path / "ps.conf"
    conf.write_text('TCP_PORTS="1"\n')
    with pytest.raises(ConfigError, match="cannot read PortSentry defaults file"):
        P.import_config(conf, tmp_path / "nodefaults")


def test_load_as_config(tmp_path, etc, caplog):
    p = conf_file(tmp_path, etc, DEBIAN, ("SCAN_TRIGGER=", 'BOGUS_KEY="1"\nSCAN_TRIGGER='))
    cfg = P.load_as_config(p, "")
    assert isinstance(cfg, C.Config) and cfg.path == str(p)
    assert cfg["logging"]["format"] == "portsentry1" and cfg.durations["block_duration"] == 0
    assert [pr.message.split(":")[0] for pr in cfg.portsentry_problems] == ["unknown key BOGUS_KEY"]
    assert "unknown key BOGUS_KEY" in caplog.text
    with pytest.raises(ConfigError):
        P.load_as_config(tmp_path / "missing.conf", "")


def test_config_load_accepts_the_written_file(tmp_path, etc):
    p = conf_file(tmp_path, etc, V2)
    toml, _ = P.import_config(p, "")
    out = tmp_path / "nfsentry.toml"
    out.write_text(toml)
    assert C.load(out)["response"]["udp"] == "command"


# == the importer never writes what nfsentry refuses ===============================================
_port = st.integers(min_value=0, max_value=70000).map(str)
_ports = st.lists(st.one_of(_port, st.tuples(_port, _port).map("-".join), st.sampled_from(["", " 22", "x", "1-"])), max_size=6).map(
    ",".join
)
_cmd = st.sampled_from(
    [
        "/usr/local/bin/x $TARGET$ $PORT$",
        "/bin/echo $TARGET$ > /x",
        "echo hi",
        "'unbalanced",
        "/usr/bin/logger -t 'port scan' $MODE$",
        "",
        "/sbin/iptables -I INPUT -s $TARGET$ -j DROP",
    ]
)
_values = {
    "TCP_PORTS": _ports,
    "UDP_PORTS": _ports,
    "ADVANCED_EXCLUDE_TCP": _ports,
    "ADVANCED_EXCLUDE_UDP": _ports,
    "ADVANCED_PORTS_TCP": st.one_of(_port, st.just("x")),
    "ADVANCED_PORTS_UDP": st.one_of(_port, st.just("")),
    "SCAN_TRIGGER": st.sampled_from(["0", "1", "2", "49", "51", "2000000", "-3", "x"]),
    "BLOCK_TCP": st.sampled_from(["0", "1", "2", "3", "x"]),
    "BLOCK_UDP": st.sampled_from(["0", "1", "2", "3", "x"]),
    "RESOLVE_HOST": st.sampled_from(["0", "1", "yes"]),
    "KILL_RUN_CMD_FIRST": st.sampled_from(["0", "1", "2"]),
    "IGNORE_FILE": st.sampled_from(["/nonexistent/ignore", "relative", ""]),
    "HISTORY_FILE": st.sampled_from(["/var/lib/portsentry/portsentry.history", "history", ""]),
    "BLOCKED_FILE": st.sampled_from(["/var/lib/portsentry/portsentry.blocked", "blocked"]),
    "KILL_ROUTE": _cmd,
    "KILL_RUN_CMD": _cmd,
    "PORT_BANNER": st.sampled_from(["go away", ""]),
    "KILL_HOSTS_DENY": st.sampled_from(["ALL: $TARGET$", "ALL: $TARGET$ : DENY", "sshd: $TARGET$", "ALL: 1.2.3.4", ""]),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    keys=st.fixed_dictionaries({}, optional={k: v for k, v in _values.items()}),
    tcp_mode=st.sampled_from(["tcp", "stcp", "atcp", "", "bogus"]),
    udp_mode=st.sampled_from(["udp", "sudp", "audp", ""]),
    version=st.sampled_from([None, "1", "2"]),
    junk=st.sampled_from(["", '  INDENTED="1"\n', 'NOPE="1"\n', "KEY=unquoted\n"]),
)
def test_any_portsentry_file_imports_to_a_valid_config(keys, tcp_mode, udp_mode, version, junk):
    text = junk + "".join(f'{k}="{v}"\n' for k, v in keys.items())
    toml, problems, raw = P.convert(text, f'TCP_MODE="{tcp_mode}"\nUDP_MODE="{udp_mode}"\n', version)
    assert tomllib.loads(toml) == raw
    C.validate(raw, read_files=False)
    for k in keys:
        assert k in toml


def test_odd_paths_cannot_break_the_toml():
    toml, problems, raw = P.convert(
        'BOGUS="1"\nHISTORY_FILE="/var/log/a b\\c"\n', 'TCP_MODE="x"\n', "1", source="/tmp/we\nird\r.conf", defaults_source="/tmp/de\nfault"
    )
    assert tomllib.loads(toml) == raw and raw["logging"]["history_file"] == "/var/log/a b\\c"
    assert "/tmp/we\\nird\\r.conf:1: unknown key BOGUS" in toml


# == PortSentry ignore files, as config.read_ignore_file reads them ================================
def test_realistic_ignore_files(tmp_path):
    nets = C.read_ignore_file(FIX / "portsentry.ignore")
    got = {str(n) for n in nets}
    assert got == {
        "127.0.0.1/32",
        "0.0.0.0/32",
        "192.168.10.0/24",
        "10.20.0.5/32",
        "172.16.0.0/12",
        "::1/128",
        "2001:db8:100::/48",
        "2001:db8:200::7/128",
        "fe80::/10",
        "192.168.1.10/32",
        "2001:db8:1::10/128",
    }
    assert {str(n) for n in C.read_ignore_file(FIX / "portsentry.ignore.static")} == {"127.0.0.1/32", "0.0.0.0/32"}


@pytest.mark.parametrize(
    "line, expected",
    [
        ("192.168.2.5/24", "192.168.2.0/24"),  # host bits set: PortSentry masks both sides too
        ("10.0.0.1\r", "10.0.0.1/32"),  # CRLF files
        ("10.0.0.2   # comment", "10.0.0.2/32"),
        ("2001:DB8::1", "2001:db8::1/128"),
        ("192.168.0.0/255.255.0.0", "192.168.0.0/16"),  # netmask form (PortSentry 1.2 would skip it)
    ],
)
def test_ignore_file_entries_portsentry_accepts(tmp_path, line, expected):
    f = tmp_path / "ignore"
    f.write_text(f"# x\n{line}\n")
    assert [str(n) for n in C.read_ignore_file(f)] == [expected]


@pytest.mark.parametrize("line, expected", [("192.168.1.1 router", "192.168.1.1/32"), ("10.1.0.0/16\tlab", "10.1.0.0/16")])
def test_ignore_file_trailing_text_is_ignored_like_portsentry(tmp_path, line, expected):
    """PortSentry 1.2 takes the leading address of a line; so does config.read_ignore_file."""
    f = tmp_path / "ignore"
    f.write_text(f"127.0.0.1\n{line}\n")
    assert [str(n) for n in C.read_ignore_file(f)] == ["127.0.0.1/32", expected]
    entries, problems = P.read_ignore_lenient(f)
    assert len(entries) == 2 and problems == []


@pytest.mark.parametrize("line", ["gateway.example.net", "10.9.9.9/40", "0.0.0.0/0", "fe80::1%eth0"])
def test_ignore_file_lines_config_refuses(tmp_path, line):
    """Host names, impossible masks, /0 and zone-scoped addresses are refused naming the line
    (PortSentry 1.2 matched nothing with such lines)."""
    f = tmp_path / "ignore"
    f.write_text(f"127.0.0.1\n{line}\n")
    with pytest.raises(ValueError, match=r"ignore:2: "):
        C.read_ignore_file(f)
    entries, problems = P.read_ignore_lenient(f)
    assert entries[0] == "127.0.0.1"
    if "%" not in line:
        assert len(entries) == 1 and problems[0].line == 2
