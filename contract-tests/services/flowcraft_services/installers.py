"""Idempotent installers: Debian packages, npm packages, Maven Central assemblies, Python tools.

Every installer checks first and does nothing when the thing is already there, so calling it
on each `start()` costs milliseconds. Downloads land in the cache directory, outside git.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import venv
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from .errors import ServiceError
from .locks import file_lock
from .paths import cache_dir


def run(
    argv: Sequence[str],
    *,
    what: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 900,
) -> str:
    """Run an install command, raising ServiceError with its output if it fails."""
    full_env = {**os.environ, **(env or {})}
    try:
        done = subprocess.run(
            list(argv),
            cwd=cwd,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError(f"{what}: {' '.join(argv)} failed: {exc}") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-4000:]
        raise ServiceError(f"{what}: {' '.join(argv)} exited {done.returncode}\n{output}")
    return done.stdout


def require_tool(tool: str, hint: str) -> str:
    """Return the path of a command-line tool, or explain how to get it."""
    found = shutil.which(tool)
    if not found:
        raise ServiceError(f"`{tool}` is not on PATH; {hint}")
    return found


# --- Debian packages -------------------------------------------------------------------------


def dpkg_installed(package: str) -> bool:
    """Tell whether a Debian package is installed."""
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode == 0 and done.stdout.strip().endswith("installed")


def apt_install(packages: Sequence[str]) -> None:
    """Install Debian packages that are missing, without starting their system services.

    Args:
        packages: Debian package names.

    Raises:
        ServiceError: apt is missing, we are not root and have no sudo, or apt failed.
    """
    if all(dpkg_installed(p) for p in packages):
        return
    require_tool("apt-get", f"install {' '.join(packages)} with your system's package manager")
    prefix: list[str] = []
    if os.geteuid() != 0:
        prefix = [require_tool("sudo", f"run as root: apt-get install {' '.join(packages)}"), "-E"]
    # One lock for all apt work: dpkg allows a single writer and parallel `up` calls would clash.
    with file_lock("apt"):
        missing = [p for p in packages if not dpkg_installed(p)]
        if not missing:
            return
        # RUNLEVEL=1 makes invoke-rc.d refuse to start the packages' system-wide services, which
        # would listen on all interfaces on the default ports.
        env = {"DEBIAN_FRONTEND": "noninteractive", "RUNLEVEL": "1"}
        argv = [*prefix, "apt-get", "install", "-y", "--no-install-recommends", *missing]
        try:
            run(argv, what="apt-get install", env=env)
        except ServiceError:
            # A fresh machine has no package lists yet; fetch them once and retry.
            run([*prefix, "apt-get", "update"], what="apt-get update", env=env)
            run(argv, what="apt-get install", env=env)


# --- npm ---------------------------------------------------------------------------------------


def _npm_prefix(spec: str) -> Path:
    """Return the cached prefix folder of one npm package version."""
    return cache_dir() / "npm" / re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)


def npm_package_dir(spec: str) -> Path:
    """Return where npm_install puts a package's own files."""
    name = spec[: spec.rindex("@")] if spec.rfind("@") > 0 else spec
    return _npm_prefix(spec) / "node_modules" / name


def npm_install(spec: str, binary: str | None = None) -> Path:
    """Install an npm package into its own cached prefix.

    Args:
        spec: Package and exact version, e.g. "azurite@3.35.0".
        binary: Name of an executable under node_modules/.bin to return, if any.

    Returns:
        Path to the executable, or to the package folder when `binary` is None.
    """
    prefix = _npm_prefix(spec)
    target = prefix / "node_modules" / ".bin" / binary if binary else npm_package_dir(spec)
    marker = prefix / ".complete"
    if marker.exists() and target.exists():
        return target
    npm = require_tool("npm", "install Node.js and npm (Debian: apt-get install nodejs npm)")
    with file_lock(f"npm-{prefix.name}"):
        if marker.exists() and target.exists():
            return target
        prefix.mkdir(parents=True, exist_ok=True)
        (prefix / "package.json").write_text('{"name": "flowcraft-service", "private": true}\n')
        run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
                str(prefix),
                spec,
            ],
            what=f"npm install {spec}",
            cwd=prefix,
        )
        marker.write_text(spec + "\n")
    if not target.exists():
        raise ServiceError(f"npm install {spec} did not provide {target}")
    return target


def npm_install_locked(directory: Path) -> None:
    """Install the packages ``directory``'s lock file pins into its ``node_modules`` (a test's
    own Node client), once per change of its ``package.json`` or lock file.

    ``npm ci`` is not used: some npm releases write lock files without other platforms'
    optional packages, which ``npm ci`` then rejects. ``npm install --no-save`` installs the
    locked versions and leaves the committed lock file untouched.
    """
    sources = (directory / "package-lock.json", directory / "package.json")
    stamp = directory / "node_modules" / ".package-lock.json"

    def current() -> bool:
        return stamp.exists() and stamp.stat().st_mtime >= max(p.stat().st_mtime for p in sources)

    if current():
        return
    npm = require_tool("npm", "install Node.js and npm (Debian: apt-get install nodejs npm)")
    with file_lock(f"npm-{hashlib.sha1(str(directory).encode()).hexdigest()[:12]}"):
        if current():
            return
        argv = [npm, "install", "--no-save", "--ignore-scripts", "--no-audit", "--no-fund"]
        try:
            run(
                [*argv, "--prefer-offline", "--loglevel=error"],
                what=f"npm install in {directory}",
                cwd=directory,
                env={"npm_config_update_notifier": "false"},
            )
        except ServiceError:
            # A half-written node_modules must not pass for an installed one next time.
            stamp.unlink(missing_ok=True)
            raise


# --- Maven Central -----------------------------------------------------------------------------

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>flowcraft.services</groupId>
  <artifactId>{name}</artifactId>
  <version>0</version>
  <dependencies>
{deps}
  </dependencies>
</project>
"""


def maven_assemble(name: str, artifacts: Sequence[str]) -> Path:
    """Download artifacts and all their runtime dependencies from Maven Central into one folder.

    A generated pom and `mvn dependency:copy-dependencies` do the resolving, so the result is
    the same class path the project itself would run with.

    Args:
        name: Folder name under the cache, e.g. "kafka-4.1.1".
        artifacts: "group:artifact:version" coordinates.

    Returns:
        Folder of jars, suitable for `java -cp "<folder>/*"`.
    """
    base = cache_dir() / "maven" / name
    lib = base / "lib"
    marker = base / ".complete"
    if marker.exists():
        return lib
    mvn = require_tool("mvn", "install Maven (Debian: apt-get install maven)")
    with file_lock(f"maven-{name}"):
        if marker.exists():
            return lib
        base.mkdir(parents=True, exist_ok=True)
        deps = []
        for coordinate in artifacts:
            group, artifact, version = coordinate.split(":")
            deps.append(
                f"    <dependency><groupId>{escape(group)}</groupId>"
                f"<artifactId>{escape(artifact)}</artifactId>"
                f"<version>{escape(version)}</version></dependency>"
            )
        (base / "pom.xml").write_text(_POM.format(name=escape(name), deps="\n".join(deps)))
        shutil.rmtree(lib, ignore_errors=True)
        # A private local repository per assembly: Maven 3.8 does not lock its repository, so
        # two assemblies running in parallel must not share one.
        run(
            [
                mvn,
                "-B",
                "-q",
                f"-Dmaven.repo.local={base / 'repository'}",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={lib}",
                "-DincludeScope=runtime",
            ],
            what=f"assembling {name} from Maven Central",
            cwd=base,
        )
        shutil.rmtree(base / "repository", ignore_errors=True)
        marker.write_text("\n".join(artifacts) + "\n")
    return lib


# --- Python tools ------------------------------------------------------------------------------


def python_tool(name: str, requirements: Sequence[str]) -> Path:
    """Create (once) a cached virtual environment holding a Python-packaged server.

    Servers such as moto get their own environment so their pinned dependencies never clash
    with the clients under test.

    Returns:
        The environment's bin directory.
    """
    digest = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:10]
    home = cache_dir() / "venvs" / f"{name}-{digest}"
    bindir = home / "bin"
    marker = home / ".complete"
    if marker.exists():
        return bindir
    with file_lock(f"venv-{name}-{digest}"):
        if marker.exists():
            return bindir
        shutil.rmtree(home, ignore_errors=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(home)
        run(
            [
                str(bindir / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *requirements,
            ],
            what=f"pip install {' '.join(requirements)}",
        )
        marker.write_text("\n".join(requirements) + "\n")
    return bindir


def java() -> str:
    """Return the java executable (JAVA_HOME first), or explain how to get Java 17."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    return require_tool("java", "install Java 17 (Debian: apt-get install openjdk-17-jre-headless)")


def python() -> str:
    """Return the interpreter running this code."""
    return sys.executable
