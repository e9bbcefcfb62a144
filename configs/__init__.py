"""Configuration: the YAML schema, the loader with located errors, and ready files.

`load_config(path)` returns a frozen ModeshiftConfig or raises ConfigError
whose lines each name file, line, field and value. The ready files
(default.yaml for the demo's two local lanes, openai-vllm.yaml,
kserve-triton.yaml, provider.yaml) ship as package data; `ready_config_path`
finds them.
"""

from configs.assembly import build_control_loop, mode_weights
from configs.loader import READY_CONFIGS, ConfigError, load_config, parse_config, ready_config_path
from configs.schema import LaneConfig, ModeshiftConfig, RouteConfig, ServerConfig

__all__ = [
    "READY_CONFIGS",
    "ConfigError",
    "LaneConfig",
    "ModeshiftConfig",
    "RouteConfig",
    "ServerConfig",
    "build_control_loop",
    "load_config",
    "mode_weights",
    "parse_config",
    "ready_config_path",
]
