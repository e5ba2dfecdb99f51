"""Typed configuration: Hydra groups under ``conf/`` composed into ``params.yaml``, read by one loader.

Every stage reads the composed ``params.yaml`` through :func:`load_config`. Unknown keys and wrong types
are rejected by OmegaConf's structured merge; bad values by each group's ``checks()``. Either way the
error names the file, the dotted key, the value and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vpdd.config.base import ConfigError, validate_tree
from vpdd.config.schema import VPDDConfig

__all__ = ["ConfigError", "VPDDConfig", "compose", "config_from_dict", "load_config", "write_params"]


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> VPDDConfig:
    """Validate a plain nested dict against the schema and return the typed config."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of config groups, got {type(data).__name__}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(VPDDConfig), data)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        reason = str(err).splitlines()[0]
        raise ConfigError(f"{source}: key '{key}': {reason}") from None
    problems = validate_tree(cfg)
    if problems:
        raise ConfigError(f"{source}: invalid values:\n  " + "\n  ".join(problems))
    return cfg


def load_config(path: str | Path = "params.yaml") -> VPDDConfig:
    """Load and validate a composed ``params.yaml``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file (compose one with `vpdd config compose`)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return config_from_dict(data, source=str(path))


def compose(overrides: list[str] | None = None, conf_dir: str | Path = "conf") -> dict[str, Any]:
    """Compose the Hydra config groups in ``conf_dir`` with ``overrides`` into a validated plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    conf_dir = Path(conf_dir).resolve()
    if not (conf_dir / "config.yaml").is_file():
        raise ConfigError(f"{conf_dir}: expected a Hydra config directory with config.yaml")
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
    except HydraException as err:
        raise ConfigError(f"{conf_dir}: overrides {list(overrides or [])}: {err}") from None
    data = OmegaConf.to_container(cfg, resolve=True)
    config_from_dict(data, source=f"{conf_dir} with overrides {list(overrides or [])}")
    return data


def write_params(data: dict[str, Any], path: str | Path = "params.yaml") -> Path:
    """Write a composed config as ``params.yaml`` (atomically), with a header saying how it was made."""
    import yaml

    from vpdd.utils.io import atomic_write_text

    header = "# Composed from conf/ by `vpdd config compose`; edit conf/ (or use `dvc exp run -S`), not this file.\n"
    return atomic_write_text(path, header + yaml.safe_dump(data, sort_keys=False))
