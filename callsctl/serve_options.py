"""`callsctl serve`'s setting flags, generated from the ServeConfig declaration.

Each ServeConfig field declares its section, help, default, check and how it is
taken on the command line (callsctl_sfu/config.py, `_setting`). This module turns
that into typer options, so a new field gets its flag, its help with the default,
and through tools/gen_docs.py its man page entry and README row, with no edit here.
The flag is always `--` + the TOML key with `-` for `_`; the environment variable
is CALLSCTL_ + the key in capitals.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import typer

from callsctl_sfu.config import PAIR, SWITCH, SettingSpec, setting_specs, specs_by_section

F = TypeVar("F", bound=Callable[..., Any])

# Field annotations are strings (config.py uses postponed annotations). A bool field
# taken as a VALUE flag (--ice-tcp on|off) is read as text and coerced by load_config,
# which accepts the same words as the environment does.
_VALUE_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": str}


def escape_markup(text: str) -> str:
    """typer renders help as rich markup, where `[default: 8045]` would vanish."""
    return text.replace("[", "\\[")


def flag_help(spec: SettingSpec) -> str:
    """The --help line of one setting: its meaning, a hint for secrets, its default."""
    text = spec.help[:1].upper() + spec.help[1:] + "."
    if spec.sensitive:
        text += f" Prefer {spec.env} (flags show in ps)."
    return escape_markup(f"{text} [default: {spec.default_text}]")


def _parameter(spec: SettingSpec) -> inspect.Parameter:
    assert spec.flag_decls is not None
    annotation: Any
    if spec.flag_kind == SWITCH:
        annotation, default = bool, False
    elif spec.flag_kind == PAIR:
        annotation, default = bool | None, None
    else:
        annotation, default = _VALUE_TYPES[str(spec.default.__class__.__name__)] | None, None
    option = typer.Option(default, spec.flag_decls, help=flag_help(spec), metavar=spec.metavar,
                          rich_help_panel=f"{spec.section} settings")
    return inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                             annotation=annotation)


def flagged_specs(by_section: bool = False) -> list[SettingSpec]:
    specs = specs_by_section() if by_section else setting_specs()
    return [spec for spec in specs if spec.flag_kind]


def with_setting_flags(before: str) -> Callable[[F], F]:
    """Give a command one option per flagged setting, inserted before parameter `before`.

    The command receives them in `**settings`; `overrides()` turns them into
    load_config's overrides. typer reads the signature, so it is rewritten here.
    """

    def decorate(func: F) -> F:
        signature = inspect.signature(func, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        at = [p.name for p in own].index(before)
        generated = [_parameter(spec) for spec in flagged_specs(by_section=True)]
        params = [p.replace(kind=p.KEYWORD_ONLY) for p in own]
        params[at:at] = generated
        func.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        func.__annotations__ = {p.name: p.annotation for p in params}
        return func

    return decorate


def overrides(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The flags given, by setting name; an unset switch is None (not False) so that
    it does not override the TOML file or the environment."""
    out: dict[str, Any] = {}
    for spec in flagged_specs():
        value = settings.get(spec.name)
        out[spec.name] = None if spec.flag_kind == SWITCH and not value else value
    return out
