"""Development sessions. Run ``./run <session>`` on a fresh machine (it bootstraps nox and uv).

Sessions: ``tests`` (core unit tests), ``lint``, ``typecheck``, ``example``, ``bench``,
``contract-<backend>``, ``chaos-<backend>``, ``redis``, ``rabbitmq``, ``kafka``, ``azure``,
``sqs`` (each backend package's own tests), ``wheels``, ``services``,
``services-smoke``; ``ci`` runs what CI runs.
"""

from __future__ import annotations

from pathlib import Path

import nox

ROOT = Path(__file__).parent
PACKAGES = sorted(p.parent for p in ROOT.glob("packages/*/pyproject.toml"))
DEV = ["pytest>=8", "pytest-asyncio>=0.24", "hypothesis>=6.100"]
# Operability (issue 6): the core's optional extras and what their tests use. The browser test
# drives Debian's chromium (apt-get install chromium) through Playwright's Python driver.
OPERABILITY = [
    "opentelemetry-api>=1.20",
    "opentelemetry-sdk>=1.20",
    "starlette>=0.37",
    "httpx>=0.27",
    "click>=8.1",
    "rich>=13",
    "playwright>=1.40",
    # PNG graphs: CairoSVG in process (its cairo library comes with Debian's chromium).
    "cairosvg>=2.7",
]
DEV += OPERABILITY

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["ci"]


def _args(session: nox.Session) -> list[str]:
    """The session's arguments: ``./run tests -- -k x`` hands nox a second "--", dropped here."""
    args = list(session.posargs)
    return args[1:] if args[:1] == ["--"] else args


def _install_packages(session: nox.Session, *extra: str) -> None:
    args: list[str] = []
    for package in PACKAGES:
        args += ["-e", str(package)]
    session.install(*args, *extra)


@nox.session
def tests(session: nox.Session) -> None:
    """Core unit tests (no services needed)."""
    _install_packages(session, *DEV)
    session.run("pytest", "tests", *_args(session))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on every package."""
    _install_packages(session, "mypy>=1.10", *DEV)
    session.run("mypy")


@nox.session
def example(session: nox.Session) -> None:
    """Run the content-moderation example in memory (no services)."""
    _install_packages(session)
    session.run("python", "examples/content_moderation.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks; results go to benchmarks/results/. ``./run bench -- <backend>`` runs
    ``benchmarks/bench_<backend>.py`` (e.g. ``redis``); without a backend, the in-memory one."""
    args = _args(session)
    script = ROOT / "benchmarks" / f"bench_{args[0].replace('-', '_')}.py" if args else None
    if script is not None and script.exists():
        _install_packages(session, "-e", SERVICES)
        session.run("python", str(script.relative_to(ROOT)), *args[1:])
        return
    _install_packages(session)
    session.run("python", "benchmarks/bench_inmem.py", "--ts", *args)


SERVICES = "contract-tests/services"
# One fixture module per backend; "redis_streams.py" is the backend "redis-streams".
BACKENDS = sorted(
    p.stem.replace("_", "-")
    for p in ROOT.glob("contract-tests/backends/*.py")
    if not p.stem.startswith("_")
)


def _contract(session: nox.Session, backend: str) -> None:
    extra = [] if backend == "memory" else ["-e", SERVICES]
    _install_packages(session, *DEV, *extra)
    session.run("pytest", "contract-tests", "--backend", backend, *_args(session))


def _contract_session(backend: str) -> None:
    def run(session: nox.Session) -> None:
        _contract(session, backend)

    run.__doc__ = f"The contract suite against the {backend} backend."
    nox.session(name=f"contract-{backend}")(run)


for _backend in BACKENDS:
    _contract_session(_backend)


# The backends whose whole contract suite CI runs. A backend joins once its whole suite, chaos
# included, is reliably green on its servers; until then it is tested with
# ./run contract-<name>, and ./run contract-incubating runs all of those.
CI_BACKENDS = [
    "memory",
    "memory-generic",
    "memory-split",
    "redis",
    "redis-streams",
    "redis-cluster",
    "redis-streams-cluster",
    "rabbitmq",
    "rabbitmq-postgres",
    "kafka",
    "gcp",
    "azure",
    "sqs",
]


@nox.session(name="contract-incubating")
def contract_incubating(session: nox.Session) -> None:
    """The contract suite against every backend CI does not run yet."""
    for backend in BACKENDS:
        if backend not in CI_BACKENDS:
            _contract(session, backend)


@nox.session(name="contract-all")
def contract_all(session: nox.Session) -> None:
    """The contract suite against every backend that has a fixture module."""
    for backend in BACKENDS:
        _contract(session, backend)


def _chaos_session(backend: str) -> None:
    def run(session: nox.Session) -> None:
        import argparse

        args = _args(session)
        parser = argparse.ArgumentParser(prog=f"chaos-{backend}")
        parser.add_argument("--runs", type=int, default=200)
        parser.add_argument("--kills", type=int, default=20)
        sizes, rest = parser.parse_known_args(args)
        extra = [] if backend == "memory" else ["-e", SERVICES]
        _install_packages(session, *DEV, *extra)
        # The suite's conftest owns the pytest options, so the sizes travel as env vars.
        env = {"FLOWCRAFT_CHAOS_RUNS": str(sizes.runs), "FLOWCRAFT_CHAOS_KILLS": str(sizes.kills)}
        test = ["contract-tests/test_chaos.py", "--backend", backend, "-s"]
        session.run("pytest", *test, "-p", "no:cacheprovider", *rest, env=env)

    run.__doc__ = (
        f"The chaos test against the {backend} backend: ``-- --runs 1000 --kills 100``"
        " (default 200 runs, 20 SIGKILLed workers)."
    )
    nox.session(name=f"chaos-{backend}")(run)


for _backend in BACKENDS:
    _chaos_session(_backend)


# The Redis backend's own tests: TS-client interop (runs ``node``; npm packages are installed
# into the gitignored ts-client/node_modules on first use), restarts, the reconciler.
REDIS_TESTS = ["pytest", "packages/redis/tests", "-q", "-p", "no:cacheprovider", "--timeout=900"]


@nox.session
def redis(session: nox.Session) -> None:
    """The Redis backend's tests (TS-client interop, restarts, reconciler)."""
    _install_packages(session, *DEV, "-e", f"{SERVICES}[test]")
    session.run(*REDIS_TESTS, *_args(session))


def _package_session(package: str) -> None:
    def run(session: nox.Session) -> None:
        _install_packages(session, *DEV, "-e", f"{SERVICES}[test]")
        tests = ["pytest", f"packages/{package}/tests", "-q", "-p", "no:cacheprovider"]
        session.run(*tests, "--timeout=900", *_args(session))

    run.__doc__ = f"The {package} backend package's own tests, on the servers they start."
    nox.session(name=package)(run)


for _package in ("rabbitmq", "kafka", "azure", "sqs"):
    _package_session(_package)


# The package of each CI backend but memory and Redis (whose wheels run the example below).
BACKEND_PACKAGES = {
    "rabbitmq": "rabbitmq",
    "rabbitmq-postgres": "rabbitmq",
    "sqs": "sqs",
    "kafka": "kafka",
    "gcp": "gcp",
    "azure": "azure",
}
WHEEL_TEST = "contract-tests/test_faults.py::test_worker_process_killed_with_sigkill_mid_node"


def _fresh_venv(session: nox.Session, path: Path, dist: Path, package: str) -> str:
    """A new virtualenv with ``package``'s wheel and the shared ones (core, the Redis store)
    installed, the rest of its dependencies from the registry, as a user gets them; its
    python. Our wheels are given as files, so a same-named project on the index cannot win."""
    session.run("uv", "venv", "-q", "-p", "3.11", str(path), external=True)
    python = str(path / "bin" / "python")
    ours = [f"flowcraft_{name.replace('-', '_')}-" for name in ("core", "redis-store", package)]
    wheels = [str(w) for w in sorted(dist.glob("*.whl")) if w.name.startswith(tuple(ours))]
    session.run("uv", "pip", "install", "-q", "-p", python, *wheels, external=True)
    return python


@nox.session
def wheels(session: nox.Session) -> None:
    """Build every package's wheel and install each backend's alone into a fresh virtualenv:
    the Redis example's workers and client run from it, and each other CI backend's SIGKILL
    contract test runs with its worker processes from it (catches a file or a dependency
    missing from a wheel, or a backend the worker command cannot find)."""
    import tempfile

    _install_packages(session, *DEV, "-e", SERVICES)
    with tempfile.TemporaryDirectory() as tmp:
        dist = Path(tmp) / "dist"
        for package in PACKAGES:
            session.run(
                "uv", "build", "--wheel", "-q", "-o", str(dist), str(package), external=True
            )
        python = _fresh_venv(session, Path(tmp) / "redis", dist, "redis")
        session.run("python", "packages/redis/tests/wheel_smoke.py", python)
        for backend in CI_BACKENDS:
            package = BACKEND_PACKAGES.get(backend)
            if package is None:
                continue
            python = _fresh_venv(session, Path(tmp) / backend, dist, package)
            env = {"FLOWCRAFT_WORKER_PYTHON": python}
            session.run("pytest", WHEEL_TEST, "--backend", backend, "-q", env=env)


@nox.session
def services(session: nox.Session) -> None:
    """Install/start/stop the backends' servers: ``./run services up|down|status [name...]``."""
    session.install("--quiet", "-e", SERVICES)
    session.run("python", "-m", "flowcraft_services", *(session.posargs or ["status"]))


@nox.session(name="services-smoke")
def services_smoke(session: nox.Session) -> None:
    """Start every server in parallel and round-trip each with its backend's Python client."""
    session.install("--quiet", "-e", f"{SERVICES}[test]")
    session.run("pytest", "contract-tests/smoke", "-p", "no:cacheprovider", "--timeout=900")


def _ensure_chromium(session: nox.Session) -> None:
    # The inspector's browser test drives Debian's chromium; install it where we can.
    import shutil

    if shutil.which("chromium") or not shutil.which("apt-get"):
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    session.run(
        "apt-get",
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "chromium",
        external=True,
        env=env,
    )


# CI runs the backends' suites and packages' tests in two lanes at once: a suite spends most
# of its time waiting on its servers and its worker processes, so two lanes on two cores cut
# the wall time without starving either. The second lane's share, chosen so that the
# JVM-heavy suites (Kafka + Cassandra, then ElasticMQ + DynamoDB Local, in the first; the
# Google emulators in the second, with both RabbitMQ suites) do not overlap much.
CI_SECOND_LANE = ["rabbitmq", "rabbitmq-postgres", "gcp", "redis-streams", "redis-streams-cluster"]
# Each backend package's own tests (wire interop, limits, its servers' particulars): the
# lane they run in.
PACKAGE_TESTS = {
    "kafka": 0,
    "sqs": 0,
    "redis": 1,
    "rabbitmq": 1,
    "azure": 1,
}


def _in_lanes(session: nox.Session, lanes: list[list[list[str]]]) -> None:
    """Run each lane's commands one after another, the lanes at once: the first lane in this
    session, the others in background shells whose output is printed when they end. A failed
    command fails its lane and the session; a failure in the first lane stops the others."""
    import contextlib
    import os
    import shlex
    import signal
    import subprocess
    import tempfile

    env = {**os.environ, "PATH": f"{session.bin}{os.pathsep}{os.environ['PATH']}"}
    background: list[tuple[int, subprocess.Popen[bytes], Path]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for number, lane in enumerate(lanes[1:], start=1):
            log = Path(tmp) / f"lane-{number}.log"
            script = " && ".join(shlex.join(command) for command in lane)
            with log.open("wb") as out:
                process = subprocess.Popen(
                    ["bash", "-c", script],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            background.append((number, process, log))
        try:
            for command in lanes[0]:
                session.run(*command)
        except BaseException:
            for _, process, _ in background:
                # The lane's shell, its pytest and the pytest's worker processes.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
            raise
        finally:
            failed = []
            for number, process, log in background:
                code = process.wait()
                session.log(f"lane {number}, exit {code}:\n{log.read_text(errors='replace')}")
                if code:
                    failed.append(number)
        if failed:
            session.error(f"suites failed in lane {', '.join(map(str, failed))}")


@nox.session
def ci(session: nox.Session) -> None:
    """Everything CI runs, in one environment so it installs once."""
    _install_packages(session, *DEV, "mypy>=1.10", "ruff>=0.6", "-e", f"{SERVICES}[test]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    _ensure_chromium(session)
    try:
        session.run("pytest", "tests", "-q")
        # Every server at once, installs included; kept running for the suites below.
        smoke = ["pytest", "contract-tests/smoke", "-q", "-p", "no:cacheprovider", "--timeout=900"]
        session.run(*smoke, env={"FLOWCRAFT_SMOKE_KEEP": "1"})
        suite = ["pytest", "contract-tests", "-q", "--durations=5", "--backend"]
        lanes: list[list[list[str]]] = [[], []]
        for backend in CI_BACKENDS:
            lanes[backend in CI_SECOND_LANE].append([*suite, backend])
        for package, lane in PACKAGE_TESTS.items():
            tests = ["pytest", f"packages/{package}/tests", "-q", "-p", "no:cacheprovider"]
            lanes[lane].append([*tests, "--timeout=900"])
        _in_lanes(session, lanes)
        wheels(session)
        session.run("python", "examples/content_moderation.py")
    finally:
        # Also after a failure: what the tests started is stopped, by PID.
        session.run("python", "-m", "flowcraft_services", "down")
