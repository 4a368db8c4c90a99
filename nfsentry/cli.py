"""The nfsentry command line (typer)."""
from __future__ import annotations

import typer

from nfsentry import __version__

app = typer.Typer(add_completion=True, no_args_is_help=True, help="nfsentry: port-scan detection and blocking for nftables")


@app.command()
def version() -> None:
    """Print the nfsentry version."""
    typer.echo(f"nfsentry {__version__}")


@app.command()
def run(config: str = typer.Option(None, "--config", "-c"), foreground: bool = typer.Option(False, "--foreground")) -> None:
    """Run the daemon."""
    typer.echo("nfsentry: the daemon is not built yet; nothing was loaded", err=True)
    raise typer.Exit(1)


def main() -> None:
    app()
