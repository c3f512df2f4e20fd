"""``tag``: run the TAPE pipeline in-process from a YAML config plus command-line overrides.

    tag --config configs/cora.yaml --gnn.hidden 256 --seeds '[0,1]'

Every field of :class:`tag_pipeline.config.PipelineConfig` is an option (``tag --help``
lists them with their defaults). Precedence: command line > YAML file > ``TAG_*``
environment variables (nested with ``__``, e.g. ``TAG_GNN__HIDDEN=256``) > defaults. The
flow is the same one the ``tag/full`` deployment runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pydantic_settings import (
    BaseSettings,
    CliApp,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from tag_pipeline.config import PipelineConfig


def settings_class(yaml_file: Path | None) -> type[BaseSettings]:
    """A settings class over :class:`PipelineConfig` that reads ``yaml_file`` (if any)."""
    if yaml_file is not None and not yaml_file.is_file():
        raise SystemExit(f"tag: config file not found: {yaml_file}")

    class TagSettings(BaseSettings, PipelineConfig):
        model_config = SettingsConfigDict(
            cli_prog_name="tag",
            yaml_file=yaml_file,
            env_prefix="TAG_",
            env_nested_delimiter="__",
            extra="forbid",
            frozen=True,
            nested_model_default_partial_update=True,
        )

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, YamlConfigSettingsSource(settings_cls), env_settings)

    TagSettings.__doc__ = (
        "Run the TAPE pipeline (the Prefect flow 'tag') in this process. Options override "
        "--config FILE (YAML with the same fields), which overrides TAG_* environment variables."
    )
    return TagSettings


def parse_config(argv: list[str]) -> tuple[PipelineConfig, argparse.Namespace]:
    """Parse ``argv`` into a validated :class:`PipelineConfig` and the command's own flags."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    pre.add_argument("--print-config", action="store_true")
    own, rest = pre.parse_known_args(argv)
    settings = CliApp.run(settings_class(own.config), cli_args=rest)
    return PipelineConfig.model_validate(settings.model_dump()), own


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print("tag [--config FILE.yaml] [--print-config] [overrides...]\n")
    cfg, own = parse_config(argv)
    if own.print_config:
        print(cfg.model_dump_json(indent=2))
        return 0
    # Results persist under the project unless the user points Prefect elsewhere.
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(Path(".prefect/results").resolve()))
    from flows.tag import tag

    params = {name: getattr(cfg, name) for name in PipelineConfig.model_fields}
    tag(**(params | {"lake": str(cfg.lake)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
