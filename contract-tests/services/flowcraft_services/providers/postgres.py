"""PostgreSQL: a private cluster (initdb) run by the `postgres` system user."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from flowcraft_services import installers, procs
from flowcraft_services.base import Launch, LocalService
from flowcraft_services.errors import ServiceError

USER = "flowcraft"
PASSWORD = "flowcraft"
DATABASE = "flowcraft"


def _bindir() -> Path:
    """Return the newest installed PostgreSQL server binaries (Debian keeps them off PATH)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if not candidates:
        found = shutil.which("postgres")
        if found:
            return Path(found).parent
        raise ServiceError("no PostgreSQL server binaries; apt-get install postgresql")
    return Path(candidates[-1]).parent


class PostgresService(LocalService):
    """A throwaway cluster in the run-state dir, trust-free, bound to 127.0.0.1."""

    name: ClassVar[str] = "postgres"
    summary: ClassVar[str] = "PostgreSQL (Debian postgresql, private initdb cluster)"
    env_vars: ClassVar[tuple[str, ...]] = ("DATABASE_URL",)
    start_timeout: ClassVar[float] = 60.0
    # SIGINT is PostgreSQL's "fast shutdown": roll back sessions and exit promptly.
    stop_signal: ClassVar[int] = signal.SIGINT

    def install(self) -> None:
        """Install the Debian server package if missing."""
        installers.apt_install(["postgresql"])

    def _run_as(self) -> str | None:
        """PostgreSQL refuses to run as root, so root runs it as the `postgres` system user."""
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam("postgres")
        except KeyError as exc:
            raise ServiceError(
                "running as root needs the `postgres` system user "
                "(created by the Debian postgresql package)"
            ) from exc
        return "postgres"

    def launch(self, workdir: Path) -> Launch:
        """initdb a fresh cluster, then run the postmaster in the foreground."""
        bindir = _bindir()
        user = self._run_as()
        # The cluster lives in a fresh temp dir rather than the run-state dir: the server user
        # must be able to reach it, and the repository may sit under a private home directory.
        home = Path(tempfile.mkdtemp(prefix="flowcraft-postgres-"))
        data = home / "data"
        sockets = home / "sockets"
        pwfile = home / "pwfile"
        sockets.mkdir()
        pwfile.write_text(PASSWORD + "\n")
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (home, sockets, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        _initdb(bindir, data, pwfile, user, home)
        port = procs.free_port()
        proc = procs.spawn(
            [
                str(bindir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-c",
                f"listen_addresses={procs.LOOPBACK}",
                "-c",
                f"unix_socket_directories={sockets}",
                # Durability is not needed for throwaway test data; this makes tests faster.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            log_path=self.log_path,
            user=user,
            cwd=home,
        )
        url = f"postgresql://{USER}:{PASSWORD}@{procs.LOOPBACK}:{port}/{DATABASE}"
        return Launch([proc], {"DATABASE_URL": url}, {"port": port, "home": str(home)})

    def stop(self) -> None:
        """Stop the postmaster, then delete its temp cluster."""
        home = self.state.extra.get("home") if self.state else None
        super().stop()
        if home and Path(home).name.startswith("flowcraft-postgres-"):
            shutil.rmtree(home, ignore_errors=True)

    @classmethod
    def probe(cls, env: Mapping[str, str]) -> None:
        """Connect to the `postgres` maintenance DB; create the app DB if it is missing."""
        import psycopg

        url = env["DATABASE_URL"]
        base, _, dbname = url.rpartition("/")
        with psycopg.connect(f"{base}/postgres", connect_timeout=2, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{dbname}"')
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")

    @classmethod
    def wipe(cls, env: Mapping[str, str]) -> None:
        """Drop and recreate the `public` schema, removing every table the tests made."""
        import psycopg

        with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
            conn.execute("CREATE SCHEMA public")


def _initdb(bindir: Path, data: Path, pwfile: Path, user: str | None, workdir: Path) -> None:
    """Create the cluster, as the server user when we are root."""
    done = subprocess.run(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ],
        cwd=workdir,
        user=user,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    )
    if done.returncode != 0:
        raise ServiceError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")
