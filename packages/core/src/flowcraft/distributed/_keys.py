"""Every coordination key and internal context key, built in one place."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["INTERNAL", "Keys"]

INTERNAL = "_flowcraft."
"""Prefix of the context keys the adapter keeps for itself; stripped from published contexts."""
PROGRESS = INTERNAL + "progress"
DYNAMIC = INTERNAL + "dynamic."
AWAITING = INTERNAL + "awaiting."
TRACE = INTERNAL + "trace"
"""The W3C trace context of the run's span, so jobs made after the start can carry it."""
NODE_TRACE = TRACE + "."
"""Prefix of the trace context of a node's last attempt span (joins link it)."""


@dataclass(frozen=True, slots=True)
class Keys:
    """Coordination key builder; ``namespace`` separates deployments sharing one store."""

    namespace: str = "flowcraft"

    def _k(self, *parts: object) -> str:
        # On every hop's path: parts are nearly always strings already.
        return self.namespace + ":" + ":".join([p if type(p) is str else str(p) for p in parts])

    @property
    def runs(self) -> str:
        """Set of unfinished run ids (the reconciler scans it)."""
        return self._k("runs")

    @property
    def timers(self) -> str:
        """Set of pending sleep timers ``<wakeAt>|<runId>|<nodeId>|<iteration>``."""
        return self._k("timers")

    def final(self, run: str) -> str:
        """The run's final result, written once."""
        return self._k("final", run)

    def meta(self, run: str) -> str:
        """``<blueprintId>\\n<version>`` recorded when the run started."""
        return self._k("meta", run)

    def parent(self, run: str) -> str:
        """``[run, node, iteration]`` of the subflow node that started the child run ``run``."""
        return self._k("parent", run)

    def enqueued(self, run: str) -> str:
        """Set of job ids enqueued for the run."""
        return self._k("enq", run)

    def done(self, run: str) -> str:
        """Set of job ids whose effects are stored."""
        return self._k("done", run)

    def parked(self, run: str) -> str:
        """Set of awaiting nodes (``node@iteration``)."""
        return self._k("parked", run)

    def pending(self, run: str) -> str:
        """Set of join targets that got a taken edge but may not have fired."""
        return self._k("pending", run)

    def dynamic(self, run: str) -> str:
        """Set of nodes whose results spliced dynamic nodes into the run's graph."""
        return self._k("dyn", run)

    def resolved(self, run: str, target: str, iteration: int) -> str:
        """Set of predecessors that resolved their edges into ``target`` (join marks)."""
        return self._k("resolved", run, iteration, target)

    def taken(self, run: str, target: str, iteration: int) -> str:
        """Set of ``source|position`` edges taken into ``target``."""
        return self._k("taken", run, iteration, target)

    def fire(self, run: str, target: str, iteration: int) -> str:
        """Fence: ``fired`` or ``skipped``, written once per target and iteration."""
        return self._k("fire", run, iteration, target)

    def result(self, run: str, node: str, iteration: int) -> str:
        """A node's full result (output, action, dynamic nodes), first writer wins."""
        return self._k("result", run, iteration, node)

    def rescue(self, run: str, primary: str, iteration: int) -> str:
        """The result of the fallback run for ``primary`` (one per rescued primary)."""
        return self._k("rescue", run, iteration, primary)

    def resumed(self, run: str, node: str, iteration: int) -> str:
        """Fence: an awaiting node is resumed once."""
        return self._k("resumed", run, iteration, node)

    def fallback(self, run: str, node: str, iteration: int) -> str:
        """Fence: a failed node's fallback is started once."""
        return self._k("fallback", run, iteration, node)

    def timer_fired(self, timer: str) -> str:
        """Fence: a timer wakes its node once."""
        return self._k("timerfired", timer)
