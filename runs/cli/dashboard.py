"""`ssmscope app`: start the dashboard (Streamlit) over a store.

    ssmscope app                           # ./ssmscope-data/ssmscope.duckdb on http://127.0.0.1:8501
    ssmscope app --db runs.duckdb --port 8600
    ssmscope app --host 0.0.0.0            # reachable from other machines: only on a trusted network

runs/cli/main.py calls `register(app)`. The command runs
`python -m streamlit run app/main.py --server.headless true --server.address HOST --server.port PORT
--browser.gatherUsageStats false --client.toolbarMode viewer -- --db PATH` in a child process (viewer: no
Deploy button), prints the URL and waits; Ctrl-C or SIGTERM stops the server. A bad port, a port
already taken or a missing Streamlit end as one line and exit code 2; a missing or empty store is not
an error (the app says how to fill it).
"""

from __future__ import annotations

import importlib.util
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from ssmscope.runs.cli.bounds import check_option
from ssmscope.runs.cli.console import DB_HELP, db_path, fail


def main_script() -> Path:
    """The dashboard's entry script (ssmscope.app's main.py, wherever the package is installed)."""
    spec = importlib.util.find_spec("ssmscope.app")
    return Path(spec.origin).parent / "main.py"


DEFAULT_PORT = 8501
DEFAULT_HOST = "127.0.0.1"


def streamlit_command(db: Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> list[str]:
    """The command line that serves the dashboard over `db` on host:port."""
    return [sys.executable, "-m", "streamlit", "run", str(main_script()), "--server.headless", "true",
            "--server.address", host, "--server.port", str(port), "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "viewer", "--", "--db", str(db)]


def url_for(host: str, port: int) -> str:
    """The address to open; an any-address bind is reached through localhost."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    return f"http://{shown}:{port}"


def check_port(host: str, port: int) -> None:
    """Raise ConfigError unless host:port can be bound now (names what to change)."""
    from ssmscope.ssm.errors import ConfigError

    check_option("--port", port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except socket.gaierror:
            raise ConfigError(f"--host={host!r}: not an address of this machine") from None
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                              "pick another port with --port") from None


def serve(db: Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, echo=print) -> int:
    """Run the dashboard until it exits or is interrupted; returns the server's exit code."""
    from ssmscope.ssm.errors import ConfigError

    if importlib.util.find_spec("streamlit") is None:
        raise ConfigError("the dashboard needs streamlit: pip install 'streamlit>=1.40'")
    check_port(host, port)
    proc = subprocess.Popen(streamlit_command(db, host, port))
    echo(f"ssmscope dashboard on {url_for(host, port)} (store {db}); Ctrl-C stops it")

    def stop(signum: int, frame: object) -> None:
        proc.terminate()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def register(app: typer.Typer) -> None:
    """Add the `app` command to the ssmscope CLI."""

    @app.command("app")
    def app_command(
        db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
        port: Annotated[int, typer.Option(help="TCP port to serve on")] = DEFAULT_PORT,
        host: Annotated[str, typer.Option(help="address to bind (127.0.0.1: this machine only)")] = DEFAULT_HOST,
    ) -> None:
        """Start the dashboard: runs, the coordinate check, the slope table, comparisons, LR transfer."""
        from ssmscope.ssm.errors import ConfigError

        try:
            check_option("--port", port)  # before the store or Streamlit is looked at
        except ConfigError as exc:
            fail(str(exc))
        path = db_path(db).resolve()  # a FIFO or a folder is refused here
        if not path.exists():
            typer.echo(f"note: no store at {path} yet; the dashboard will say how to fill it", err=True)
        try:
            code = serve(path, host, port, echo=typer.echo)
        except ConfigError as exc:
            fail(str(exc))
        if code not in (0, -signal.SIGTERM, -signal.SIGINT):
            raise typer.Exit(code)
