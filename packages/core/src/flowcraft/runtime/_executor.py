"""Runs one node: class phases, retries with back-off, per-attempt timeouts and middleware."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from flowcraft.errors import FlowcraftError, NodeExecutionError, NodeTimeoutError, WorkflowCancelled
from flowcraft.events import EventBus
from flowcraft.middleware import Middleware
from flowcraft.node import Node, NodeContext, NodeResult, is_inline, to_node_result
from flowcraft.runtime._threads import run_in_thread

__all__ = ["Invoker", "invoker_for", "run_with_middleware", "threaded_body"]

_log = logging.getLogger("flowcraft.runtime")

Invoker = Callable[[NodeContext, "Attempts"], Awaitable[NodeResult]]


class Attempts:
    """Retry policy of one execution, and where ``node:retry`` events go.

    ``first`` is the number of the first attempt: a distributed job runs one attempt, its
    number counted durably, with ``max_attempts == first``.
    """

    __slots__ = ("bus", "delay", "first", "max_attempts", "timeout")

    def __init__(
        self,
        max_attempts: int,
        delay: float,
        timeout: float | None,
        bus: EventBus | None,
        first: int = 1,
    ) -> None:
        self.max_attempts = max_attempts
        self.delay = delay
        self.timeout = timeout
        self.bus = bus
        self.first = first


# How a node's callable runs: awaited on the loop, called on the loop (sync, opted in with
# @inline), or called in a worker thread (sync, the default).
_ASYNC = 0
_INLINE = 1
_THREAD = 2


def _mode(fn: Any, inline: bool = False) -> int:
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
    ):
        return _ASYNC
    return _INLINE if inline or is_inline(fn) else _THREAD


async def _call(fn: Callable[..., Any], mode: int, *args: Any) -> Any:
    if mode == _ASYNC:
        return await fn(*args)
    value = fn(*args) if mode == _INLINE else await run_in_thread(fn, *args)
    if inspect.isawaitable(value):
        value = await value
    return value


async def _attempt(
    run_once: Callable[[], Awaitable[Any]], timeout: float | None, ctx: NodeContext
) -> Any:
    if timeout is None:
        return await run_once()
    try:
        async with asyncio.timeout(timeout):
            return await run_once()
    except TimeoutError as exc:
        raise NodeTimeoutError(
            f"node '{ctx.node_id}' attempt {ctx.attempt} timed out after {timeout * 1000:g} ms",
            node_id=ctx.node_id,
            blueprint_id=ctx.blueprint_id,
            run_id=ctx.run_id,
        ) from exc


def _stop_retrying(exc: BaseException) -> bool:
    return (isinstance(exc, FlowcraftError) and exc.is_fatal) or isinstance(exc, WorkflowCancelled)


async def _retrying(
    ctx: NodeContext, attempts: Attempts, run_once: Callable[[], Awaitable[Any]]
) -> Any:
    attempt = attempts.first
    while True:
        if ctx.signal.is_set():
            raise WorkflowCancelled(
                f"run '{ctx.run_id}' was cancelled before node '{ctx.node_id}'",
                node_id=ctx.node_id,
                run_id=ctx.run_id,
            )
        ctx.attempt = attempt
        try:
            return await _attempt(run_once, attempts.timeout, ctx)
        except Exception as exc:
            if attempt >= attempts.max_attempts or _stop_retrying(exc):
                raise
            announce_retry(attempts.bus, ctx.run_id, ctx.blueprint_id, ctx.node_id, attempt, exc)
            if attempts.delay > 0:
                await asyncio.sleep(backoff(attempts.delay, attempt))
            attempt += 1


def backoff(delay: float, attempt: int) -> float:
    """Seconds to wait after failed attempt ``attempt`` (from 1): ``delay`` doubling."""
    return float(delay * 2 ** (attempt - 1))


def announce_retry(
    bus: EventBus | None,
    run_id: str,
    blueprint_id: str,
    node_id: str,
    attempt: int,
    exc: BaseException,
) -> None:
    """``node:retry`` for a failed attempt that will be retried, and a warning."""
    if bus is not None and bus.wants("node:retry"):
        bus.emit(
            "node:retry",
            {
                "nodeId": node_id,
                "attempt": attempt,
                "executionId": run_id,
                "blueprintId": blueprint_id,
                "error": str(exc),
            },
        )
    _log.warning("node %s attempt %d failed: %r; retrying", node_id, attempt, exc)


# Kept on the invoker itself: a registry would keep the invokers of uncached implementations.
_BODY = "_flowcraft_threaded_body"


def threaded_body(invoker: Invoker) -> Callable[[NodeContext], Any] | None:
    """The sync function behind ``invoker`` if it runs in a worker thread, else None.

    The engine calls such functions itself to run a chain of them in one thread hop.
    """
    body: Callable[[NodeContext], Any] | None = getattr(invoker, _BODY, None)
    return body


def _function_invoker(fn: Callable[..., Any]) -> Invoker:
    mode = _mode(fn)

    async def invoke(ctx: NodeContext, attempts: Attempts) -> NodeResult:
        if attempts.max_attempts == 1 and attempts.timeout is None:
            if mode == _ASYNC:
                return to_node_result(await fn(ctx))
            return to_node_result(await _call(fn, mode, ctx))
        return to_node_result(await _retrying(ctx, attempts, lambda: _call(fn, mode, ctx)))

    if mode == _THREAD:
        setattr(invoke, _BODY, fn)
    return invoke


def _class_invoker(cls: type[Node]) -> Invoker:
    inline = is_inline(cls)
    phases = {
        name: _mode(getattr(cls, name), inline)
        for name in ("prep", "exec", "post", "fallback", "recover")
    }

    async def invoke(ctx: NodeContext, attempts: Attempts) -> NodeResult:
        node = cls(ctx.params, ctx.node_id)
        error: BaseException | None = None
        try:
            prepared = await _call(node.prep, phases["prep"], ctx)
            try:
                result = await _retrying(
                    ctx, attempts, lambda: _call(node.exec, phases["exec"], prepared, ctx)
                )
            except Exception as exc:
                if _stop_retrying(exc):
                    raise
                result = await _call(node.fallback, phases["fallback"], exc, ctx)
            return to_node_result(await _call(node.post, phases["post"], result, ctx))
        except Exception as exc:
            error = exc
            raise
        finally:
            # recover() cleans up after a failure only; a successful class fallback is success.
            if error is not None:
                try:
                    await _call(node.recover, phases["recover"], error, ctx)
                except Exception:
                    _log.warning("recover() of node %s raised", ctx.node_id, exc_info=True)

    return invoke


_INVOKERS: dict[Any, Invoker] = {}


def invoker_for(implementation: Any) -> Invoker:
    """The cached invoker of a function or :class:`~flowcraft.node.Node` subclass."""
    try:
        return _INVOKERS[implementation]
    except (KeyError, TypeError):
        pass
    if isinstance(implementation, type) and callable(getattr(implementation, "exec", None)):
        invoker = _class_invoker(implementation)
    elif callable(implementation):
        invoker = _function_invoker(implementation)
    else:
        raise TypeError(f"{implementation!r} is neither a function nor a Node class")
    with contextlib.suppress(TypeError):
        _INVOKERS[implementation] = invoker
    return invoker


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


async def run_with_middleware(
    middleware: list[Middleware],
    ctx: NodeContext,
    core: Callable[[], Awaitable[NodeResult]],
) -> NodeResult:
    """Run ``core`` inside the middleware chain (see :mod:`flowcraft.middleware`)."""
    node_id = ctx.node_id
    for m in middleware:
        hook = getattr(m, "before_node", None)
        if hook is not None:
            await _maybe_await(hook(ctx, node_id))

    call: Callable[[], Awaitable[NodeResult]] = core
    for m in reversed(middleware):
        around = getattr(m, "around_node", None)
        if around is None:
            continue
        call = _wrap(around, ctx, node_id, call)

    result: NodeResult | None = None
    error: BaseException | None = None
    try:
        result = await call()
        return result
    except BaseException as exc:
        error = exc
        raise
    finally:
        for m in middleware:
            hook = getattr(m, "after_node", None)
            if hook is not None:
                await _maybe_await(hook(ctx, node_id, result, error))


def _wrap(
    around: Callable[..., Any],
    ctx: NodeContext,
    node_id: str,
    inner: Callable[[], Awaitable[NodeResult]],
) -> Callable[[], Awaitable[NodeResult]]:
    async def call() -> NodeResult:
        seen: list[NodeResult] = []

        async def next_() -> NodeResult:
            result = await inner()
            seen.append(result)
            return result

        value = await around(ctx, node_id, next_)
        if value is not None:
            return to_node_result(value)
        # A hook that awaited next() but forgot to return keeps the inner result.
        if seen:
            return seen[0]
        owner = type(getattr(around, "__self__", around)).__name__
        raise NodeExecutionError(
            f"middleware {owner}.around_node returned no result for node '{node_id}'",
            node_id=node_id,
            run_id=ctx.run_id,
        )

    return call
