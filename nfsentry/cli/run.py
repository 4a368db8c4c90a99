"""`nfsentry run`: run the daemon in this process. The one CLI module that imports
``nfsentry.daemon`` (registered on the app by cli/app.py)."""

from __future__ import annotations

import sys

import typer


def register(app: typer.Typer) -> None:
    from nfsentry.cli.app import EXIT_RUNTIME, ConfigOpt, fail, load_config

    @app.command()
    def run(
        config: str | None = ConfigOpt,
        foreground: bool = typer.Option(False, "--foreground", help="also log to stderr"),
        portsentry_config: str | None = typer.Option(
            None, "--portsentry-config", metavar="FILE", help="run from a PortSentry portsentry.conf"
        ),
        portsentry_defaults: str | None = typer.Option(
            None, "--portsentry-defaults", metavar="FILE", help="PortSentry /etc/default/portsentry (TCP_MODE/UDP_MODE)"
        ),
    ):
        """Run the daemon (in the foreground of this process; systemd keeps it running)."""
        from nfsentry.daemon.daemon import Daemon, StartupError, require_root

        try:
            require_root()
        except StartupError as e:
            fail(str(e), e.exit_code)
        cfg = load_config(config, portsentry_config, portsentry_defaults)
        d = Daemon(cfg, foreground=True if foreground or sys.stderr.isatty() else foreground)
        try:
            d.start()
        except StartupError as e:
            fail(str(e), e.exit_code)
        except ImportError as e:
            fail(str(e), EXIT_RUNTIME)
        except Exception as e:
            fail(f"start-up failed: {type(e).__name__}: {e}", EXIT_RUNTIME)
        raise typer.Exit(d.run())
