"""Command line: `python -m flowcraft_services up|down|status|reset|env [name...]`.

This is what `nox -s services -- ...` runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from .base import Service
from .errors import ServiceError
from .paths import state_dir
from .registry import ALIASES, DEFAULT, PROVIDERS, expand
from .resolve import MODES, from_state, resolve
from .state import RunState


def start_many(names: Sequence[str], mode: str | None = None) -> dict[str, Service | Exception]:
    """Start services in parallel; return each provider, or the error that stopped it.

    Installs are parallel too: apt, npm and Maven each lock what they must not share.
    """
    providers = {name: resolve(name, mode) for name in names}

    def one(service: Service) -> Service | Exception:
        try:
            service.start()
        except Exception as exc:  # reported per service; the others keep going
            return exc
        return service

    with ThreadPoolExecutor(max_workers=max(1, len(providers))) as pool:
        results = list(pool.map(one, providers.values()))
    return dict(zip(providers, results, strict=True))


def running_env() -> dict[str, str]:
    """Return the merged settings of every server this checkout has running."""
    env: dict[str, str] = {}
    for name in PROVIDERS:
        state = RunState.load(name)
        if state is not None:
            env.update(state.env)
    return env


def write_env_files() -> None:
    """Write env.sh (for `source`) and .env (for docker compose / dotenv) in the state dir."""
    env = running_env()
    lines = [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    (state_dir() / "env.sh").write_text("\n".join(lines) + "\n")
    (state_dir() / ".env").write_text("".join(f"{k}={v}\n" for k, v in sorted(env.items())))


def cmd_up(args: argparse.Namespace) -> int:
    """Start the named services (default: one per backend) and print their settings."""
    names = expand(args.names)
    began = time.monotonic()
    results = start_many(names, args.mode)
    failed = 0
    for name, result in results.items():
        if isinstance(result, Exception):
            failed += 1
            print(f"FAILED  {name}: {result}", file=sys.stderr)
            continue
        info = result.describe()
        print(
            f"up      {name:15} {result.mode:8} {info.get('start_seconds', 0):6.1f} s "
            f"{info.get('rss_mb', 0):6} MB"
        )
        for key, value in sorted(result.env.items()):
            print(f"          {key}={value}")
    write_env_files()
    print(
        f"{len(results) - failed}/{len(results)} up in {time.monotonic() - began:.1f} s; "
        f"settings: source {state_dir() / 'env.sh'}"
    )
    return 1 if failed else 0


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the named services, or every service this checkout started."""
    names = expand(args.names) if args.names else list(PROVIDERS)
    for name in names:
        service = from_state(name)
        if service is None:
            continue
        service.stop()
        print(f"down    {name}")
    write_env_files()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Show what is running, its PIDs, memory and settings."""
    rows = []
    for name in PROVIDERS:
        service = from_state(name)
        if service is None:
            continue
        info = service.describe()
        info["answering"] = service.running()
        rows.append(info)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no services running (state dir: {state_dir()})")
    for info in rows:
        health = "ok" if info["answering"] else "NOT ANSWERING"
        ids = info.get("pids") or info.get("containers")
        print(f"{info['name']:15} {info['mode']:7} {health:14} {info['rss_mb']:6} MB  ids={ids}")
        for key, value in sorted(info["env"].items()):
            print(f"    {key}={value}")
    return 0 if all(r["answering"] for r in rows) else 1


def cmd_reset(args: argparse.Namespace) -> int:
    """Empty the named (default: all running) services."""
    names = expand(args.names) if args.names else [n for n in PROVIDERS if RunState.load(n)]
    for name in names:
        service = from_state(name) or resolve(name)
        if service.mode == "external":
            service.start()  # only checks it answers and loads its settings
        service.reset()
        print(f"reset   {name}")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """Print `export` lines for every running service: eval "$(... env)"."""
    for key, value in sorted(running_env().items()):
        print(f"export {key}={shlex.quote(value)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    names_help = (
        "service names: "
        + ", ".join([*PROVIDERS, *ALIASES, "all"])
        + f"; default for up: {' '.join(DEFAULT)}"
    )
    parser = argparse.ArgumentParser(prog="flowcraft-services", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="install if needed, start, wait until a client call works")
    up.add_argument("names", nargs="*", help=names_help)
    up.add_argument(
        "--mode",
        choices=MODES,
        default=None,
        help="default: FLOWCRAFT_SERVICES_MODE or auto (env vars > docker > local)",
    )
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop by PID / container id (default: everything)")
    down.add_argument("names", nargs="*", help=names_help)
    down.set_defaults(func=cmd_down)
    status = sub.add_parser("status", help="what runs, PIDs, memory, settings")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    reset = sub.add_parser("reset", help="delete all data in running services")
    reset.add_argument("names", nargs="*", help=names_help)
    reset.set_defaults(func=cmd_reset)
    env = sub.add_parser("env", help="print export lines of running services")
    env.set_defaults(func=cmd_env)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
