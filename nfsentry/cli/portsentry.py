"""`nfsentry import-portsentry`: PortSentry configuration -> nfsentry TOML (registered by cli.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import typer

EXIT_USAGE = 2
# nfsentry.config.portsentry's, for the help text: importing that module at every CLI start cost
# ~10 ms of each command (tests/unit/test_portsentry_cli.py checks they are the same)
DEFAULT_CONF = "/etc/portsentry/portsentry.conf"
DEFAULTS_FILE = "/etc/default/portsentry"


def _fail(msg: str, code: int = EXIT_USAGE) -> None:
    typer.echo(f"nfsentry: {msg}", err=True)
    raise typer.Exit(code)


def _write_atomic(path: Path, text: str) -> None:
    """Write next to the target and rename, so a half-written configuration never exists."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def register(app: typer.Typer) -> None:
    @app.command("import-portsentry")
    def import_portsentry(
        conf: str = typer.Argument(DEFAULT_CONF, metavar="FILE", help="PortSentry's portsentry.conf"),
        defaults: str | None = typer.Option(
            None, "--defaults", metavar="FILE", help=f"Debian's TCP_MODE/UDP_MODE file (default: {DEFAULTS_FILE} if it exists)"
        ),
        no_defaults: bool = typer.Option(False, "--no-defaults", help="read no defaults file: TCP_MODE=tcp, UDP_MODE=udp"),
        output: str | None = typer.Option(None, "--write", metavar="FILE", help="write the TOML to FILE instead of stdout"),
        version: str | None = typer.Option(None, "--portsentry-version", metavar="1|2", help="1 or 2 (default: guessed from the file)"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="do not list the problems on stderr"),
    ):
        """Convert a PortSentry configuration to nfsentry TOML (each key not carried over gets a comment why)."""
        from nfsentry.config import portsentry as P
        from nfsentry.config.schema import ConfigError

        if version not in (None, "1", "2"):
            _fail(f"--portsentry-version must be 1 or 2, not {version!r}")
        if defaults is not None and no_defaults:
            _fail("give --defaults or --no-defaults, not both")
        try:
            text, problems = P.import_config(conf, "" if no_defaults else defaults, version)
        except ConfigError as e:
            _fail(str(e))
        if not quiet:
            for p in problems:
                typer.echo(f"nfsentry: warning: {p}", err=True)
        if output is None:
            typer.echo(text, nl=False)
            return
        try:
            _write_atomic(Path(output), text)
        except OSError as e:
            _fail(f"cannot write {output}: {e.strerror or e}")
        typer.echo(f"wrote {output}" + (f" ({len(problems)} problem(s), listed at its top)" if problems else ""), err=True)
