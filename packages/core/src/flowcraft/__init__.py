"""Flowcraft: a DAG workflow engine that runs in memory or across distributed workers.

Build a flow with :func:`create_flow`, run it with :class:`FlowRuntime`::

    flow = create_flow("greet").node("hello", hello).node("shout", shout).edge("hello", "shout")
    result = await flow.run(FlowRuntime())
"""

from flowcraft.analysis import (
    BlueprintAnalysis,
    LintIssue,
    LintResult,
    analyze_blueprint,
    lint_blueprint,
    to_mermaid,
)
from flowcraft.blueprint import (
    Blueprint,
    BlueprintMetadata,
    EdgeDefinition,
    NodeConfig,
    NodeDefinition,
    load_blueprint,
)
from flowcraft.errors import (
    AdapterError,
    BlueprintError,
    ConnectionFailed,
    ExpressionError,
    FlowcraftError,
    ImplementationNotFound,
    NodeExecutionError,
    NodeTimeoutError,
    ResumeError,
    SerializationError,
    WorkflowCancelled,
)
from flowcraft.evaluator import Evaluator, SafeEvaluator
from flowcraft.events import EventBus, FlowEvent
from flowcraft.flow import Flow, create_flow
from flowcraft.hooks import RunHooks, RunInfo
from flowcraft.middleware import Middleware
from flowcraft.node import AsyncContext, Node, NodeContext, NodeResult
from flowcraft.result import WorkflowResult, WorkflowStatus
from flowcraft.runtime import FlowRuntime
from flowcraft.serializer import JsonSerializer, Serializer

__version__ = "0.1.0"

__all__ = [
    # Building and loading workflows
    "Blueprint",
    "BlueprintMetadata",
    "EdgeDefinition",
    "Flow",
    "NodeConfig",
    "NodeDefinition",
    "create_flow",
    "load_blueprint",
    # Running them
    "FlowRuntime",
    "WorkflowResult",
    "WorkflowStatus",
    # Writing nodes
    "AsyncContext",
    "Node",
    "NodeContext",
    "NodeResult",
    # Extending the runtime
    "EventBus",
    "Evaluator",
    "FlowEvent",
    "JsonSerializer",
    "Middleware",
    "RunHooks",
    "RunInfo",
    "SafeEvaluator",
    "Serializer",
    # Analysis
    "BlueprintAnalysis",
    "LintIssue",
    "LintResult",
    "analyze_blueprint",
    "lint_blueprint",
    "to_mermaid",
    # Errors
    "AdapterError",
    "BlueprintError",
    "ConnectionFailed",
    "ExpressionError",
    "FlowcraftError",
    "ImplementationNotFound",
    "NodeExecutionError",
    "NodeTimeoutError",
    "ResumeError",
    "SerializationError",
    "WorkflowCancelled",
]
