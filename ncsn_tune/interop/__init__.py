"""Speaking the ecosystem: reading other tools' sampler configurations, auditing them against the paper's
techniques, and exporting derived schedules to them (score_sde, diffusers, the official NCSNv2 YAML, EDM/k-diffusion).
Torch-free."""

from .audit import Audit, Finding, audit_config
from .export import FORMATS, export_tuning
from .tool_configs import ToolConfig, read_tool_config

__all__ = ["Audit", "FORMATS", "Finding", "ToolConfig", "audit_config", "export_tuning", "read_tool_config"]
