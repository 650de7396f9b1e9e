"""A plain, immutable model of the `callsctl` command tree, read from the typer app.

Every generator (completions, man page, README blocks) reads this model rather
than typer/click objects, for two reasons: typer's internals change between
releases (recent ones vendor click and describe types with a `type_descriptor`
instead of click `ParamType`s), so that knowledge sits in one function; and a
frozen model makes the generated files a pure function of the CLI, which is
what the freshness tests compare.
"""

from __future__ import annotations

import enum
import inspect
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

PROG = "callsctl"


@dataclass(frozen=True)
class Option:
    """One `--option` of a command, as an operator sees it in --help."""

    names: tuple[str, ...]  # long names first, then short ones: ("--port", "-p")
    secondary: tuple[str, ...]  # the "off" switch of a --x/--no-x pair
    help: str
    takes_value: bool
    metavar: str  # what the value is called in docs: PORT, SECONDS, FILE, TEXT ...
    choices: tuple[str, ...]
    is_path: bool  # the shell should complete file names for the value
    required: bool
    default: str | None  # rendered default, None when there is nothing worth showing
    value_range: str | None  # "1..65535" when typer enforces min/max
    envvars: tuple[str, ...]
    multiple: bool

    @property
    def long(self) -> str:
        return self.names[0]

    @property
    def all_names(self) -> tuple[str, ...]:
        return self.names + self.secondary


@dataclass(frozen=True)
class Argument:
    """A positional argument."""

    name: str
    metavar: str
    help: str
    choices: tuple[str, ...]
    is_path: bool
    required: bool
    variadic: bool


@dataclass(frozen=True)
class Command:
    """A command or command group, with everything below it."""

    path: tuple[str, ...]  # ("callsctl", "check", "udp")
    help: str
    short_help: str
    options: tuple[Option, ...]
    arguments: tuple[Argument, ...]
    subcommands: tuple[Command, ...]

    @property
    def name(self) -> str:
        return " ".join(self.path)

    @property
    def is_group(self) -> bool:
        return bool(self.subcommands)

    def walk(self) -> list[Command]:
        """This command and every command below it, depth first, in registration order."""
        found = [self]
        for sub in self.subcommands:
            found.extend(sub.walk())
        return found

    def find(self, words: list[str] | tuple[str, ...]) -> Command | None:
        """The command named by `words` below this one (["check", "udp"]), if any."""
        node: Command = self
        for word in words:
            match = next((c for c in node.subcommands if c.path[-1] == word), None)
            if match is None:
                return None
            node = match
        return node

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if name in o.all_names), None)


def _clean(text: str | None) -> str:
    # `\\[` keeps a bracket from being read as rich markup in --help; docs show `[`.
    return inspect.cleandoc(text or "").strip().replace("\\[", "[")


def short_help_of(text: str) -> str:
    """First paragraph on one line: what a completion menu or a command list shows."""
    first = text.split("\n\n", 1)[0]
    return " ".join(first.split())


def _type_facts(param: Any) -> tuple[str, tuple[str, ...], bool, str | None]:
    """(type word, choices, is_path, range) for a parameter, whichever typer it came from."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:  # typer >= 0.2x: vendored click, types described by annotation
        raw = descriptor.choices or ()
        choices = tuple(c.value if isinstance(c, enum.Enum) else str(c) for c in raw)
        is_path = bool(descriptor.is_path or descriptor.is_file)
        annotation = descriptor.annotation
        word = getattr(annotation, "__name__", str(annotation))
    else:  # classic typer on click: a click.ParamType
        ptype = param.type
        choices = tuple(str(c) for c in getattr(ptype, "choices", ()) or ())
        is_path = getattr(ptype, "name", "") in ("path", "file", "filename", "directory")
        word = getattr(ptype, "name", "text")
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is None and high is None and hasattr(param, "type"):
        low, high = getattr(param.type, "min", None), getattr(param.type, "max", None)
    value_range = None
    if low is not None or high is not None:
        value_range = f"{'' if low is None else low}..{'' if high is None else high}"
    return word, choices, is_path, value_range


_METAVAR_BY_TYPE = {
    "str": "TEXT", "text": "TEXT", "int": "INTEGER", "integer": "INTEGER",
    "float": "NUMBER", "Path": "PATH", "path": "PATH", "bool": "BOOLEAN",
}


def _metavar(param: Any, word: str, choices: tuple[str, ...], is_path: bool) -> str:
    if param.metavar:
        return str(param.metavar)
    if choices:
        return "|".join(choices)
    if is_path:
        return "PATH"
    return _METAVAR_BY_TYPE.get(word, word.upper())


def _default(param: Any, takes_value: bool) -> str | None:
    value = param.default
    if not takes_value or value is None or callable(value) or value == "" or value == ():
        return None
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _option(param: Any) -> Option:
    word, choices, is_path, value_range = _type_facts(param)
    takes_value = not (getattr(param, "is_flag", False) or getattr(param, "count", False))
    longs = [n for n in param.opts if n.startswith("--")]
    shorts = [n for n in param.opts if not n.startswith("--")]
    envvar = param.envvar
    envvars = (envvar,) if isinstance(envvar, str) else tuple(envvar or ())
    return Option(
        names=tuple(longs + shorts),
        secondary=tuple(param.secondary_opts),
        help=_clean(getattr(param, "help", "")),
        takes_value=takes_value,
        metavar=_metavar(param, word, choices, is_path) if takes_value else "",
        choices=choices,
        is_path=is_path,
        required=bool(param.required),
        default=_default(param, takes_value),
        value_range=value_range,
        envvars=envvars,
        multiple=bool(getattr(param, "multiple", False)),
    )


def _argument(param: Any) -> Argument:
    word, choices, is_path, _ = _type_facts(param)
    name = param.name or "ARG"
    return Argument(
        name=name,
        metavar=str(param.metavar or name.upper()),
        help=_clean(getattr(param, "help", "")),
        choices=choices,
        is_path=is_path,
        required=bool(param.required),
        variadic=param.nargs == -1,
    )


def _help_option(names: list[str]) -> Option:
    ordered = sorted(names, key=lambda n: not n.startswith("--"))
    return Option(names=tuple(ordered), secondary=(), help="Show this message and exit.",
                  takes_value=False, metavar="", choices=(), is_path=False, required=False,
                  default=None, value_range=None, envvars=(), multiple=False)


def _command(cmd: Any, path: tuple[str, ...], help_names: list[str]) -> Command:
    options: list[Option] = []
    arguments: list[Argument] = []
    for param in cmd.params:
        if getattr(param, "hidden", False):
            continue
        if getattr(param, "param_type_name", "") == "argument":
            arguments.append(_argument(param))
        else:
            options.append(_option(param))
    if help_names and cmd.add_help_option is not False:
        options.append(_help_option(help_names))
    subs = []
    for name, sub in (getattr(cmd, "commands", None) or {}).items():
        if getattr(sub, "hidden", False):
            continue
        subs.append(_command(sub, path + (name,), help_names))
    text = _clean(cmd.help)
    return Command(
        path=path,
        help=text,
        short_help=_clean(getattr(cmd, "short_help", None)) or short_help_of(text),
        options=tuple(options),
        arguments=tuple(arguments),
        subcommands=tuple(subs),
    )


def load_tree() -> Command:
    """Build the model from `callsctl.app.app`, exactly as the installed CLI sees it."""
    import typer.main

    from callsctl.app import app

    root = typer.main.get_command(app)
    settings = getattr(root, "context_settings", None) or {}
    help_names = list(settings.get("help_option_names") or ["--help"])
    return _command(root, (PROG,), help_names)


def check_command_line(tree: Command, line: str) -> str | None:
    """Why `line` (a documented `callsctl ...` invocation) would not parse, or None.

    Leading `sudo` and `NAME=value` environment assignments are skipped; option
    values and positional words may be placeholders (HOST_IP). Used by the tests
    to keep hand-written examples in README, the man page and deploy/ honest.
    """
    import shlex

    try:
        words = shlex.split(line)
    except ValueError as exc:
        return f"cannot split {line!r}: {exc}"
    while words and (words[0] == "sudo" or ("=" in words[0] and not words[0].startswith("-"))):
        words.pop(0)
    if not words or words[0] != PROG:
        return f"{line!r} does not start with {PROG}"
    node, i, positionals = tree, 1, 0
    while i < len(words):
        word = words[i]
        if word in ("…", "..."):
            return None  # "callsctl check …": deliberately partial
        if word.startswith("-") and word != "-":
            name = word.split("=", 1)[0]
            opt = node.option(name)
            if opt is None:
                return f"{line!r}: `{node.name}` has no option {name}"
            if opt.takes_value and "=" not in word:
                if i + 1 >= len(words):
                    return f"{line!r}: {name} needs a value"
                i += 1
        elif node.is_group:
            sub = node.find([word])
            if sub is None:
                return f"{line!r}: `{node.name}` has no command {word!r}"
            node = sub
        else:
            positionals += 1
            variadic = any(a.variadic for a in node.arguments)
            if positionals > len(node.arguments) and not variadic:
                return f"{line!r}: `{node.name}` takes no argument {word!r}"
        i += 1
    if len(words) == len(node.path):
        return None  # only names the command, as prose does: "see `callsctl token`"
    missing = [o.long for o in node.options if o.required
               and not any(w.split("=", 1)[0] in o.all_names for w in words)]
    if missing and not {"-h", "--help"} & set(words):
        return f"{line!r}: `{node.name}` needs {', '.join(missing)}"
    return None
