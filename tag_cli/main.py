"""``tag``: run the TAPE pipeline in-process from a YAML config plus command-line overrides.

    tag --config configs/cora.yaml --gnn.hidden 256 --seeds '[0,1]'
    tag lake ...                        # the lake's own subcommands (tag_cli.lake)
    tag predict --nodes new.csv         # labels for new nodes from a trained run (tag_cli.predict)
    tag compare --methods '["tape","gallon"]' [options]   # one leaderboard (tag_cli.compare)

Every field of :class:`tag_pipeline.config.PipelineConfig` is an option (``tag --help``
lists them with their defaults). Precedence: command line > YAML file > ``TAG_*``
environment variables (nested with ``__``, e.g. ``TAG_GNN__HIDDEN=256``) > defaults. The
flow is the same one the ``tag/full`` deployment runs.

A bad command line, ``--config`` file or ``TAG_*`` variable prints one line per problem,
``tag: error: <field>: <what is wrong> (got <value>)``, and exits with status 2; an error
while the flow runs prints one line ``tag: error: <message>`` and exits with status 1.
``TAG_DEBUG=1`` prints the traceback instead (the exit status stays the same).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import re
import sys
import traceback
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import (
    BaseSettings,
    CliApp,
    CliSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

# EPHEMERAL_STARTUP_TIMEOUT_S stays importable from here: bench/pipeline.py reads it
from tag_cli.runtime import EPHEMERAL_STARTUP_TIMEOUT_S, debug, prefect_defaults  # noqa: F401
from tag_pipeline.config import PipelineConfig

PROG = "tag"
ENV_PREFIX = "TAG_"
USAGE_ERROR = 2  # exit status: bad command line, --config file or TAG_* variable
RUN_ERROR = 1  # exit status: the flow failed

USAGE = f"""\
{PROG} [--config FILE.yaml] [--print-config] [overrides...]
       {PROG} lake ...   (the data lake's subcommands: '{PROG} lake --help')
       {PROG} predict --nodes NEW.csv [--edges E.csv] [--run PATH]   (labels for new nodes)
       {PROG} compare --methods '["tape","gallon"]' [options]   (several methods, one leaderboard)"""
DESCRIPTION = """\
Run the TAPE pipeline (the Prefect flow 'tag') in this process.

  --config FILE.yaml   YAML with the same fields as the options below. Options override it;
                       it overrides TAG_* environment variables (TAG_GNN__HIDDEN=256).
  --print-config       print the merged config as JSON and exit.

TAG_DEBUG=1 prints a traceback instead of the one-line error."""


class UsageError(ValueError):
    """A bad command line, ``--config`` file or ``TAG_*`` variable (exit status 2).

    Args:
        problems (str or list[str]): one message per problem, each printed on its own line.
    """

    def __init__(self, problems: str | Sequence[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class _Parser(argparse.ArgumentParser):
    """``tag``'s argument parser: raises :class:`UsageError` instead of printing the usage and
    exiting, reports each unknown option on its own line with the nearest known one, and never
    expands abbreviations (``--gnn.hid`` is an error, not ``--gnn.hidden``)."""

    def __init__(self, **kwargs: Any):
        super().__init__(prog=PROG, allow_abbrev=False, **kwargs)
        self.option_names: list[str] = []

    def error(self, message: str) -> Any:
        raise UsageError(message)

    def add_option(self, context: Any, *args: Any, **kwargs: Any) -> Any:
        """``add_argument`` on ``context`` (this parser or one of its groups), remembering the names."""
        self.option_names.extend(a for a in args if isinstance(a, str) and a.startswith(self.prefix_chars))
        return context.add_argument(*args, **kwargs)

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        namespace, unknown = self.parse_known_args(args, namespace)
        if unknown:
            raise UsageError(_unknown_argument_problems(unknown, self.option_names))
        return namespace


_OPTION = re.compile(r"^--?[A-Za-z_]")


def _unknown_argument_problems(unknown: list[str], known: list[str]) -> list[str]:
    """One message per unknown option (with the values that followed it) or stray argument."""
    problems: list[str] = []
    i = 0
    while i < len(unknown):
        token = unknown[i]
        if not _OPTION.match(token):
            problems.append(f"unexpected argument {token!r} (options look like --gnn.hidden 256)")
            i += 1
            continue
        name, eq, value = token.partition("=")
        values = [value] if eq else []
        i += 1
        while i < len(unknown) and not _OPTION.match(unknown[i]):
            values.append(unknown[i])
            i += 1
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else f" ('{PROG} --help' lists them)"
        got = f" (got {' '.join(values)})" if values else ""
        problems.append(f"{name}: unknown option{got}{hint}")
    return problems


def read_yaml_config(path: Path) -> dict[str, Any]:
    """The ``--config`` file as a mapping of config fields (an empty file is ``{}``).

    Raises:
        UsageError: the file is missing or unreadable, is not valid YAML (naming its line and
            column) or does not hold a mapping at the top level.
    """
    if not path.is_file():
        raise UsageError(f"--config {path}: " + ("is a directory, not a file" if path.is_dir() else "file not found"))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path}: cannot read it: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f": line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "malformed YAML"
        if exc.problem and exc.context:
            what = f"{exc.problem} ({exc.context})"
        raise UsageError(f"{path}{where}: invalid YAML: {what}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(
            f"{path}: expected a mapping of config fields at the top level (like 'gnn: {{hidden: 256}}'), "
            f"got a {type(data).__name__}"
        )
    return data


def settings_class(yaml_data: Mapping[str, Any] | None = None) -> type[BaseSettings]:
    """A settings class over :class:`PipelineConfig` that reads ``yaml_data`` (a parsed ``--config``)
    below the command line and above the ``TAG_*`` environment variables."""
    file_data = dict(yaml_data or {})

    class TagSettings(BaseSettings, PipelineConfig):
        model_config = SettingsConfigDict(
            cli_prog_name=PROG,
            env_prefix=ENV_PREFIX,
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
            return (init_settings, InitSettingsSource(settings_cls, file_data), env_settings)

    TagSettings.__doc__ = DESCRIPTION
    return TagSettings


def _split_own_flags(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """``--config`` and ``--print-config`` (the command's own flags) and the config overrides."""
    pre = _Parser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    pre.add_argument("--print-config", action="store_true")
    return pre.parse_known_args(argv)


def parse_config(argv: list[str]) -> tuple[PipelineConfig, argparse.Namespace]:
    """Parse ``argv`` into a validated :class:`PipelineConfig` and the command's own flags.

    Raises:
        UsageError: with one message per problem in the command line, the ``--config`` file
            or the ``TAG_*`` environment variables.
        SystemExit: ``--help`` (status 0), after printing the help.
    """
    own, rest = _split_own_flags(argv)
    yaml_data = read_yaml_config(own.config) if own.config is not None else {}
    settings_cls = settings_class(yaml_data)
    parser = _Parser(usage=USAGE, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    origins = _Origins(cli_args=rest, yaml_path=own.config, yaml_data=yaml_data)
    try:
        source = CliSettingsSource(
            settings_cls,
            root_parser=parser,
            parse_args_method=_Parser.parse_args,
            add_argument_method=parser.add_option,
        )
        settings = CliApp.run(settings_cls, cli_args=rest, cli_settings_source=source)
        return PipelineConfig.model_validate(settings.model_dump()), own
    except ValidationError as exc:
        raise UsageError(_validation_problems(exc, origins)) from exc
    except SettingsError as exc:
        raise UsageError(_settings_problem(exc, origins)) from exc


# ---------------------------------------------------------------------------------------
# Turning pydantic and pydantic-settings errors into one line per problem


class _Origins:
    """Where a config value came from, to say so in an error: the command line, the
    ``--config`` file or a ``TAG_*`` variable (checked in that order, the order of precedence)."""

    def __init__(self, cli_args: list[str], yaml_path: Path | None, yaml_data: Mapping[str, Any]):
        self.cli_args = cli_args
        self.yaml_path = yaml_path
        self.yaml_data = yaml_data

    def cli_value(self, dotted: str) -> str | None:
        """The last value given on the command line to ``--<dotted>``, if any."""
        value = None
        for i, arg in enumerate(self.cli_args):
            if arg == f"--{dotted}" and i + 1 < len(self.cli_args):
                value = self.cli_args[i + 1]
            elif arg.startswith(f"--{dotted}="):
                value = arg.partition("=")[2]
        return value

    def env_var(self, names: Sequence[str]) -> str | None:
        """The ``TAG_*`` variable that sets the field at ``names`` or one of the models above it."""
        upper = {key.upper(): key for key in os.environ}
        for k in range(len(names), 0, -1):
            key = upper.get(ENV_PREFIX + "__".join(names[:k]).upper())
            if key is not None:
                return key
        return None

    def describe(self, names: Sequence[str]) -> str:
        """``''`` (command line or unknown), ``' in FILE'`` or ``' from TAG_X'``."""
        if not names:
            return ""
        if any(a == f"--{p}" or a.startswith(f"--{p}=") for a in self.cli_args for p in _prefixes(names)):
            return ""
        node: Any = self.yaml_data
        for name in names:
            if not isinstance(node, Mapping) or name not in node:
                break
            node = node[name]
        else:
            return f" in {self.yaml_path}"
        var = self.env_var(names)
        return f" from {var}" if var else ""


def _prefixes(names: Sequence[str]) -> list[str]:
    """``['gnn', 'hidden']`` -> ``['gnn', 'gnn.hidden']``."""
    return [".".join(names[: k + 1]) for k in range(len(names))]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (``Model`` or ``Model | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    members = [a for a in get_args(annotation) if a is not type(None)]
    if _is_union(annotation) and len(members) == 1:
        return _model_in(members[0])
    return None


def _discriminator(model: type[BaseModel]) -> Any:
    """The default of ``model``'s ``name`` field (a method's tag), or ``None``."""
    info = model.model_fields.get("name")
    return info.default if info is not None else None


def _is_union(annotation: Any) -> bool:
    """Whether an annotation is ``A | B`` (or ``Optional[A]``, ``Union[A, B]``)."""
    return get_origin(annotation) in (Union, types.UnionType)


def _read_loc(loc: tuple[str | int, ...]) -> tuple[str, str, list[str], type[BaseModel] | None]:
    """A pydantic error location as the user spells the field.

    Returns ``(field, within, names, parent)``. ``field`` is the dotted field (``"models[0]"``
    for ``('models', 0)``); for a field whose type is a union of several types, pydantic
    reports an error per member under a tag (``('gnn', 'num_layers', 'int')``): ``field`` stops
    at the union (``"gnn.num_layers"``) and ``within`` spells the rest of the location inside
    the member (``"gat (key)"`` for ``(..., 'dict[...]', 'gat', '[key]')``), else it is ``""``.
    ``names`` are the field names up to the first list index or union member; ``parent`` the
    model owning the last of them (``None`` when the location leaves the models).
    """
    field, within, names = "", None, []
    model: type[BaseModel] | None = PipelineConfig
    parent: type[BaseModel] | None = PipelineConfig
    in_fields, union_tag_next = True, False
    members: list = []
    for part in loc:
        if union_tag_next:  # the member's tag: the rest of the location is inside the member
            union_tag_next = False
            tagged = [m for m in members if _model_in(m) is not None and _discriminator(_model_in(m)) == part]
            if tagged:  # a discriminated union (``method``): go on inside the member named by its tag
                model = _model_in(tagged[0])
                continue
            model, in_fields, within = None, False, ""
            continue
        if within is not None:
            if part == "[key]":
                within += " (key)"
            elif isinstance(part, int):
                within += f"[{part}]"
            else:
                within += f".{part}" if within else part
            continue
        if isinstance(part, int):
            field += f"[{part}]"
            model, in_fields = None, False
            continue
        field += f".{part}" if field else part
        if in_fields:
            names.append(part)
            parent = model
        info = model.model_fields.get(part) if model is not None else None
        if info is None:
            model, in_fields = None, False
            continue
        members = [a for a in get_args(info.annotation) if a is not type(None)]
        union_tag_next = _is_union(info.annotation) and len(members) > 1
        model = _model_in(info.annotation)
    return field, within or "", names, parent


def _show(value: Any, limit: int = 120) -> str:
    """A config value as the user would type it: ``-5``, ``citeseer``, ``["TA", "TA"]``."""
    if isinstance(value, str):
        text = value if value and not any(c.isspace() for c in value) else json.dumps(value)
    else:
        try:
            text = json.dumps(value, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _validation_problems(exc: ValidationError, origins: _Origins) -> list[str]:
    """One line per problem of a ``ValidationError``: ``field: message (got value[ in FILE| from TAG_X])``.

    Errors pydantic reports once per member of a union (``gnn.num_layers`` is an int or a dict)
    share a line.
    """
    # field -> [(message, got)]: the errors of a union's members share their field's line
    entries: dict[str, list[tuple[str, str]]] = {}
    for n, err in enumerate(exc.errors(include_url=False)):
        loc = tuple(err["loc"])
        field, within, names, parent = _read_loc(loc)
        kind = err["type"]
        ctx = err.get("ctx") or {}
        message = str(ctx["error"]) if kind == "value_error" and "error" in ctx else err["msg"]
        hint = ""
        if kind == "extra_forbidden":
            message = "unknown field"
            if parent is not None and names:
                close = difflib.get_close_matches(names[-1], list(parent.model_fields), n=1, cutoff=0.6)
                hint = f"; did you mean {'.'.join([*names[:-1], close[0]])}?" if close else ""
        if within:
            message = f"{within}: {message}"
        value = err.get("input")
        origin = origins.describe(names) if loc else ""
        whole_model = isinstance(value, Mapping) and kind in ("value_error", "assertion_error")
        if not loc or kind == "missing" or whole_model or repr(value) in message:
            got = f" ({origin.strip()})" if origin else ""  # the value is too big or already shown
        else:
            got = f" (got {_show(value)}{origin})"
        entries.setdefault(field or f"#{n}", []).append((message, got + hint))
    problems = []
    for field, found in entries.items():
        gots = {got for _, got in found}
        if len(gots) == 1:  # one value: say it once, at the end
            text = "; or ".join(dict.fromkeys(message for message, _ in found)) + gots.pop()
        else:
            text = "; or ".join(message + got for message, got in found)
        problems.append(text if field.startswith("#") else f"{field}: {text}")
    return problems


_CLI_PARSE = re.compile(r"^Parsing error encountered for (?P<field>[\w.]+): (?P<why>.*)$", re.DOTALL)
_SOURCE_PARSE = re.compile(r'^error parsing value for field "(?P<field>[^"]+)" from source "(?P<source>\w+)"')


def _settings_problem(exc: SettingsError, origins: _Origins) -> str:
    """One line for a ``SettingsError``: a list or mapping (JSON) that pydantic-settings cannot
    parse, from the command line or a ``TAG_*`` variable, naming the field and the value."""
    text = " ".join(str(exc).split())
    cause = " ".join(str(exc.__cause__).split()) if exc.__cause__ is not None else ""
    if match := _CLI_PARSE.match(text):
        field = match["field"]
        raw = origins.cli_value(field)
        got = f" (got {raw})" if raw is not None else ""
        return f"{field}: cannot parse the value as a list or mapping: {match['why']}{got}"
    if match := _SOURCE_PARSE.match(text):
        field, source = match["field"], match["source"]
        why = f": {cause}" if cause else ""
        raw = origins.cli_value(field) if source == "CliSettingsSource" else None
        if raw is not None:
            return f"{field}: cannot parse the value{why} (got {raw})"
        var = origins.env_var(field.split(".")) if source == "EnvSettingsSource" else None
        if var is not None:
            return f"{field}: cannot parse the value{why} (got {_show(os.environ[var])} from {var})"
        return f"{field}: cannot parse the value from {source}{why}"
    text = text.removeprefix("error parsing CLI: ")
    return f"{text}: {cause}" if cause and cause not in text else text


# ---------------------------------------------------------------------------------------
# Running


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run the ``tag`` flow in this process on ``cfg`` and return its result.

    Results persist under ``.prefect/results`` and the ephemeral Prefect server gets
    ``EPHEMERAL_STARTUP_TIMEOUT_S`` to start, unless the environment says otherwise.
    """
    prefect_defaults()
    # Heartbeats as the deployments send them (prefect.yaml): a run pointed at the project's
    # server is watched by its zombie automation (deployments/automations.py), whose window
    # assumes 30 s heartbeats; Prefect's default, 180 s, would get a healthy run marked Crashed.
    if not os.environ.get("PREFECT_RUNNER_HEARTBEAT_FREQUENCY"):
        os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
    from flows.tag import tag

    params = {name: getattr(cfg, name) for name in PipelineConfig.model_fields}
    return tag(**(params | {"lake": str(cfg.lake)}))


def _fail(problems: Sequence[str], status: int, exc: BaseException) -> int:
    """Print ``tag: error: ...`` once per problem (or the traceback under ``TAG_DEBUG``); return ``status``."""
    if debug():
        traceback.print_exception(exc)
    else:
        for problem in problems:
            print(f"{PROG}: error: {problem}", file=sys.stderr)
    return status


def _run_error_message(exc: BaseException) -> str:
    """One line for an error of the flow run: its message, led by its type unless it is one of
    the errors the pipeline raises on purpose (bad data, a missing or corrupt lake artifact)."""
    from tag_pipeline.datasets.base import DatasetError
    from tag_pipeline.lake import CorruptArtifactError, MissingArtifactError

    message = " ".join(str(exc).split())
    if isinstance(exc, (DatasetError, MissingArtifactError, CorruptArtifactError)) and message:
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _run_lake(argv: list[str]) -> int:
    """``tag lake ...``: hand the rest of the command line to :func:`tag_cli.lake.main`."""
    try:
        lake = importlib.import_module("tag_cli.lake")  # lazily: plain `tag` runs need none of it
    except ModuleNotFoundError as exc:
        if exc.name != "tag_cli.lake":
            raise
        return _fail(["'tag lake' is not available in this installation"], USAGE_ERROR, exc)
    return lake.main(argv) or 0


def _run_compare(argv: list[str]) -> int:
    """``tag compare``: ``--methods`` (:func:`tag_cli.compare.split_methods`) plus ``tag``'s own
    options; the compare flow in this process, its leaderboard's markdown on stdout."""
    from pydantic import ValidationError

    from tag_cli.compare import PROG as COMPARE, split_methods
    from tag_pipeline.methods import method_config

    try:
        raw, rest = split_methods(argv)
    except ValueError as exc:
        print(f"{COMPARE}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    methods, problems = [], []
    for i, value in enumerate(raw):
        try:
            methods.append(method_config(value))
        except (ValidationError, ValueError) as exc:
            errors = exc.errors(include_url=False) if isinstance(exc, ValidationError) else [{"msg": str(exc)}]
            problems += [f"--methods[{i}]: {' '.join(str(e['msg']).split())} (got {value!r})" for e in errors]
    if problems:
        for problem in problems:
            print(f"{COMPARE}: error: {problem}", file=sys.stderr)
        return USAGE_ERROR
    try:
        cfg, own = parse_config(rest)
    except UsageError as exc:
        return _fail(exc.problems, USAGE_ERROR, exc)
    if own.print_config:
        print(cfg.model_dump_json(indent=2, exclude={"method"}))
        print("methods:", [m.model_dump(mode="json") for m in methods])
        return 0
    prefect_defaults()
    try:
        from flows.compare import compare

        board = compare(
            dataset=cfg.dataset, methods=methods, features=cfg.features, models=cfg.models, seeds=cfg.seeds,
            llm=cfg.llm, lm=cfg.lm, gnn=cfg.gnn, ensemble=cfg.ensemble, lake=str(cfg.lake),
        )
    except Exception as exc:  # noqa: BLE001 - any failure of the run is reported in one line
        return _fail([_run_error_message(exc)], RUN_ERROR, exc)
    print(board["markdown"])  # on stdout, for a pipe; the flow run logged it too
    print(f"leaderboard: {board['leaderboard']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``tag`` console script: returns the exit status (0, 1 = the run failed, 2 = bad usage)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lake"]:
        return _run_lake(argv[1:])
    if argv[:1] == ["predict"]:
        return importlib.import_module("tag_cli.predict").main(argv[1:])
    if argv[:1] == ["compare"]:
        return _run_compare(argv[1:])
    try:
        cfg, own = parse_config(argv)
    except UsageError as exc:
        return _fail(exc.problems, USAGE_ERROR, exc)
    if own.print_config:
        print(cfg.model_dump_json(indent=2))
        return 0
    try:
        run_pipeline(cfg)
    except Exception as exc:  # noqa: BLE001 - any failure of the run is reported in one line
        return _fail([_run_error_message(exc)], RUN_ERROR, exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
