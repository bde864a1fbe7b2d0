"""The ``--app`` of the distributed CLI tests: the CLI sample flow, its registry and blueprint."""

from __future__ import annotations

from cli_sample import REGISTRY, flow

app = {"registry": REGISTRY, "blueprints": {"cli-sample": flow.to_blueprint()}}
no_blueprints = {"registry": REGISTRY}
