"""man/callsctl.1, generated from the command tree and tools.reference.

One page for the whole program (like git(1) before it split): operators look
things up with `man callsctl` and `/udp`, so every command, option, setting,
environment variable, file and exit code is on it. Plain man(7) macros only
(no .EX/.SY extensions) so that man-db, mandoc and busybox man all render it.
"""

from __future__ import annotations

import re

from tools import reference
from tools.clitree import PROG, Command, Option, load_tree

_CODE = re.compile(r"`([^`]+)`")


_BREAK = "\x00"  # marks an allowed line break inside a long word until escaping is done
_LONG_WORD = re.compile(r"\S{30,}")


def _break_points(text: str) -> str:
    """Let roff break URI lists and paths after , / ? & instead of overflowing the line."""
    return _LONG_WORD.sub(lambda m: re.sub(r"([,/?&])(?=.)", "\\1" + _BREAK, m.group(0)), text)


def esc(text: str) -> str:
    """Escape plain text for roff; `code` spans become bold."""
    out = _break_points(text).replace("\\", "\\e").replace("-", "\\-")
    out = "".join(ch if ord(ch) < 128 else f"\\[u{ord(ch):04X}]" for ch in out)
    out = _CODE.sub(lambda m: f"\\fB{m.group(1)}\\fR", out)
    return out.replace(_BREAK, "\\:")


def _line(text: str) -> str:
    """A text line that roff cannot mistake for a request."""
    return "\\&" + text if text[:1] in (".", "'") else text


def _quoted(text: str) -> str:
    return '"' + esc(text).replace('"', "\\(dq") + '"'


def _paragraphs(text: str) -> list[str]:
    """Help text as paragraphs; click's \\b no-rewrap markers are dropped."""
    paras = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [ln.strip() for ln in block.splitlines() if ln.strip() != "\b"]
        if lines:
            paras.append(" ".join(lines))
    return paras


def _body(text: str) -> list[str]:
    out = []
    for i, para in enumerate(_paragraphs(text)):
        if i:
            out.append(".PP")
        out.append(_line(esc(para)))
    return out


def _option_tag(opt: Option) -> str:
    names = ", ".join(f"\\fB{esc(n)}\\fR" for n in opt.all_names)
    if opt.takes_value:
        names += f" \\fI{esc(opt.metavar)}\\fR"
    return names


def _option_text(opt: Option) -> str:
    parts = [opt.help.rstrip()] if opt.help else []
    extra = []
    if opt.required:
        extra.append("Required.")
    if opt.value_range:
        extra.append(f"Range {opt.value_range}.")
    if opt.default is not None and "[default:" not in opt.help:
        extra.append(f"Default: {opt.default}.")
    if opt.envvars:
        extra.append("Environment: " + ", ".join(opt.envvars) + ".")
    if opt.multiple:
        extra.append("May be repeated.")
    return " ".join(parts + extra)


def _options(options: tuple[Option, ...]) -> list[str]:
    out = []
    for opt in options:
        out += [".TP", _option_tag(opt), _line(esc(_option_text(opt)))]
    return out


def _synopsis(cmd: Command) -> str:
    words = [f"\\fB{esc(cmd.name)}\\fR"]
    for opt in cmd.options:
        if opt.required:
            words.append(f"\\fB{esc(opt.long)}\\fR \\fI{esc(opt.metavar)}\\fR")
    if any(not o.required for o in cmd.options):
        words.append("[\\fIoptions\\fR]")
    if cmd.is_group:
        words.append("\\fIcommand\\fR")
    for arg in cmd.arguments:
        word = f"\\fI{esc(arg.metavar)}\\fR" + ("..." if arg.variadic else "")
        words.append(word if arg.required else f"[{word}]")
    return " ".join(words)


def _commands(tree: Command) -> list[str]:
    out = [".SH COMMANDS"]
    for cmd in tree.walk()[1:]:
        out += [f".SS {_quoted(cmd.name)}", _synopsis(cmd), ".PP"]
        out += _body(cmd.help)
        if cmd.is_group:
            out += [".PP", "Commands:"]
            for sub in cmd.subcommands:
                out += [".TP", f"\\fB{esc(sub.path[-1])}\\fR", _line(esc(sub.short_help))]
        if cmd.arguments:
            out += [".PP", "Arguments:"]
            for arg in cmd.arguments:
                out += [".TP", f"\\fI{esc(arg.metavar)}\\fR", _line(esc(arg.help or arg.name))]
        if cmd.options:
            out += [".PP", "Options:"]
            out += _options(cmd.options)
    return out


def _configuration(tree: Command) -> list[str]:
    rows = reference.settings(tree)
    out = [
        ".SH CONFIGURATION",
        _line(esc("`callsctl serve` (and `token`, `check config`) read one configuration. "
                  "Later sources win: built-in defaults, then the TOML file given with "
                  "--config (keys at the top level or under [serve]), then CALLSCTL_* "
                  "environment variables, then flags. An invalid value stops startup with one "
                  "line naming the key, the value and what is allowed; "
                  "`callsctl serve --print-config` prints the merged result.")),
    ]
    titles = reference.sections()
    section = ""
    for row in rows:
        if row.section != section:
            section = row.section
            out += [f".SS {esc(section)}", _line(esc(titles[section][:1].upper()
                                                     + titles[section][1:] + "."))]
        where = [f"\\fB{esc(row.env)}\\fR"]
        if row.flag:
            where.insert(0, f"\\fB{esc(row.flag)}\\fR")
        out += [".TP", f"\\fB{esc(row.name)}\\fR (" + ", ".join(where) + ")",
                _line(esc(f"{row.meaning[:1].upper()}{row.meaning[1:]}. "
                          f"Default: {row.default}."))]
    return out


def _environment(tree: Command) -> list[str]:
    out = [".SH ENVIRONMENT"]
    for row in reference.settings(tree):
        out += [".TP", f"\\fB{esc(row.env)}\\fR",
                _line(esc(f"Sets {row.name} (see CONFIGURATION)."))]
    seen = {row.env for row in reference.settings(tree)}
    for cmd in tree.walk():
        for opt in cmd.options:
            for var in opt.envvars:
                if var not in seen:
                    seen.add(var)
                    out += [".TP", f"\\fB{esc(var)}\\fR",
                            _line(esc(f"Default for {opt.long} of `{cmd.name}`."))]
    for var, meaning in reference.EXTRA_ENVIRONMENT.items():
        out += [".TP", f"\\fB{esc(var)}\\fR", _line(esc(meaning))]
    return out


def _files() -> list[str]:
    out = [".SH FILES"]
    for path, meaning in reference.files():
        out += [".TP", f"\\fI{esc(path)}\\fR", _line(esc(meaning))]
    return out


def _exit_status() -> list[str]:
    out = [".SH EXIT STATUS", _line(esc("The same for every command:"))]
    for code, meaning in reference.exit_codes():
        out += [".TP", f"\\fB{code}\\fR", _line(esc(meaning))]
    return out


def _json(tree: Command) -> list[str]:
    out = [".SH JSON OUTPUT"]
    for i, rule in enumerate(reference.JSON_RULES):
        if i:
            out.append(".PP")
        out.append(_line(esc(rule)))
    out += [".PP", _line(esc("Each entry of `results`:"))]
    for name, type_name, meaning in reference.check_result_fields():
        out += [".TP", f"\\fB{esc(name)}\\fR (\\fI{esc(type_name)}\\fR)", _line(esc(meaning))]
    out += [".PP", _line(esc("Commands with --json and what they print:"))]
    for name, shape in reference.json_commands(tree):
        out += [".TP", f"\\fB{esc(name)} \\-\\-json\\fR", _line(esc(shape))]
    return out


def _examples() -> list[str]:
    out = [".SH EXAMPLES",
           _line(esc("The troubleshooting tasks of the Calls self-hosted deployment guide, "
                     "the callsctl way."))]
    for ex in reference.EXAMPLES:
        out += [".PP", f"\\fB{esc(ex.task)}\\fR"]
        if ex.guide:
            out += [".br", _line(esc(f"Guide: {ex.guide}"))]
        out += [".PP", ".RS 4", ".nf"]
        out += [_line(esc(command)) for command in ex.commands]
        out += [".fi", ".RE"]
        if ex.note:
            out += [".PP", _line(esc(ex.note))]
    return out


def render(tree: Command | None = None) -> str:
    from callsctl_sfu import __version__

    tree = tree or load_tree()
    settings = {row.name: row for row in reference.settings(tree)}
    api = settings.get("api_port")
    udp = settings.get("udp_port")
    lines = [
        '.\\" Generated from the callsctl CLI by `make docs` (tools/gen_man.py); do not edit.',
        f'.TH CALLSCTL 1 "" "{PROG} {esc(__version__)}" "User Commands"',
        ".ad l",  # ragged right and no hyphenation: option names stay copy-pasteable
        ".nh",
        ".SH NAME",
        f"{PROG} \\- serve and diagnose self\\-hosted voice and video calls",
        ".SH SYNOPSIS",
        _synopsis(tree),
    ]
    for cmd in tree.walk()[1:]:
        if not cmd.is_group:
            lines += [".br", _synopsis(cmd)]
    lines += [".SH DESCRIPTION"] + _body(tree.help)
    if api and udp:
        lines += [".PP", _line(esc(
            f"Ports of `callsctl serve`: UDP {udp.default} carries all media of every session "
            f"(ICE, DTLS, SRTP), TCP {udp.default} is the ICE-TCP fallback, TCP {api.default} "
            "serves the HTTP API, the web client, /ws signaling and /metrics. Only UDP/TCP "
            f"{udp.default} must be reachable by clients; {api.default} only by whoever opens "
            "the web client or scrapes metrics."))]
    lines += [".SH OPTIONS"] + _options(tree.options)
    lines += _commands(tree)
    lines += _configuration(tree)
    lines += _environment(tree)
    lines += _files()
    lines += _exit_status()
    lines += _json(tree)
    lines += _examples()
    lines += [".SH SEE ALSO",
              "\\fBnc\\fR(1), \\fBtcpdump\\fR(8), \\fBsysctl.conf\\fR(5), "
              "\\fBsystemd.exec\\fR(5), \\fBturnserver\\fR(1)"]
    return "\n".join(lines) + "\n"


FILES = {"man/callsctl.1": render}
