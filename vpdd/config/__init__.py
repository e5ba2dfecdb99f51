"""Typed configuration: Hydra groups under ``conf/`` composed into ``params.yaml``, read by one loader.

Every stage reads the composed ``params.yaml`` through :func:`load_config`. Unknown keys and wrong types
are rejected by OmegaConf's structured merge; bad values by each group's ``checks()`` (and every float
must be finite). Either way the error names the file, the dotted key, the value and what was expected.

A params *file* must hold every top-level key and group (what ``vpdd config compose`` writes; single keys
newer than the file take their schema defaults). An empty or partial one is refused, since its missing
values would silently take the schema defaults, which are no preset, unless it names its preset explicitly
(``preset: tiny``): then the missing values come from that preset composed from ``conf/`` (next to the
file, else in the working directory), or from the schema defaults for ``preset: custom``.
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


def missing_keys(data: Any, obj: Any = None, prefix: str = "") -> list[str]:
    """The schema's dotted keys that the nested dict ``data`` leaves out (dict-valued fields count as one)."""
    import dataclasses

    obj = VPDDConfig() if obj is None else obj
    data = data if isinstance(data, dict) else {}
    out: list[str] = []
    for f in dataclasses.fields(obj):
        child = getattr(obj, f.name)
        if dataclasses.is_dataclass(child) and f.name in data:
            out.extend(missing_keys(data[f.name], child, f"{prefix}{f.name}."))
        elif dataclasses.is_dataclass(child):
            out.extend(missing_keys({}, child, f"{prefix}{f.name}."))
        elif f.name not in data:
            out.append(f"{prefix}{f.name}")
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _complete(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """``data`` if complete; else filled from its explicitly named preset (module docstring)."""
    import dataclasses

    if all(f.name in data for f in dataclasses.fields(VPDDConfig)):
        return data
    missing = missing_keys(data)
    preset = data.get("preset")
    if preset is None:
        what = "empty" if not data else "partial"
        raise ConfigError(
            f"{path}: {what} params file: {len(missing)} keys missing (e.g. {', '.join(missing[:4])}); they "
            "would silently take the schema defaults, which are no preset. Write a complete file with "
            "`vpdd config compose`, or name the preset the missing keys come from (`preset: tiny`)"
        )
    if preset == "custom":
        return data
    for conf in (path.parent / "conf", Path.cwd() / "conf"):
        if (conf / "preset" / f"{preset}.yaml").is_file():
            return _merge(compose([f"preset={preset}"], conf), data)
    raise ConfigError(
        f"{path}: partial params file naming preset={preset!r}, but no conf/preset/{preset}.yaml next to it or "
        "in the working directory to fill the missing keys from; write a complete file with `vpdd config compose`"
    )


def load_config(path: str | Path = "params.yaml") -> VPDDConfig:
    """Load and validate a composed ``params.yaml`` (a partial one only if it names its preset)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file (compose one with `vpdd config compose`)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config groups, got {type(data).__name__}")
    return config_from_dict(_complete(data, path), source=str(path))


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
