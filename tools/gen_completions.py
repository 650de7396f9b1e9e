"""Static bash, zsh and fish completion scripts generated from the command tree.

Why static rather than typer's own `--install-completion` scripts: those call
back into `callsctl` on every Tab press, which imports the whole CLI (aiortc,
scapy, ...) and costs about half a second per keypress on a busy server; they
also cannot be shipped as files by a package or a config-management tool. These
scripts hold the command tree itself, answer instantly and need nothing but the
shell. Because they are generated (`make docs`) and checked by
tests/test_docs_fresh.py, they cannot drift from the CLI.
"""

from __future__ import annotations

from tools.clitree import PROG, Command, Option, load_tree

HEADER = (
    "Generated from the callsctl CLI by `make docs` (tools/gen_completions.py).\n"
    "Do not edit: change the CLI and run `make docs`. Install: see README, Shell completion."
)


def _comment(prefix: str = "# ") -> str:
    return "".join(f"{prefix}{line}\n" for line in HEADER.splitlines())


def _one_line(text: str, limit: int = 90) -> str:
    """First sentence-ish of a help text, short enough for a completion menu."""
    line = " ".join(text.split("\n\n", 1)[0].split())
    if len(line) > limit:
        line = line[: limit - 1].rstrip() + "…"
    return line


def _value_options(cmd: Command) -> list[Option]:
    return [o for o in cmd.options if o.takes_value]


def _option_words(cmd: Command) -> list[str]:
    return [name for o in cmd.options for name in o.all_names]


# --- bash -------------------------------------------------------------------------------


def _bash_words(words: list[str]) -> str:
    return " ".join(words)


def bash(tree: Command) -> str:
    """A `complete -F` function; case tables instead of associative arrays so bash 3.2 works."""
    commands = tree.walk()
    out = ["# bash completion for callsctl                              -*- shell-script -*-\n",
           _comment(), "\n"]

    out.append("# Does option $2 of command path $1 take a value (so the next word is not a"
               " command)?\n")
    out.append("_callsctl_takes_value() {\n    case \"$1\" in\n")
    for cmd in commands:
        names = [n for o in _value_options(cmd) for n in o.names]
        if names:
            out.append(f"        \"{cmd.name}\") case \"$2\" in {'|'.join(names)}) return 0 ;;"
                       " esac ;;\n")
    out.append("    esac\n    return 1\n}\n\n")

    out.append("_callsctl_files() {\n"
               "    local IFS=$'\\n'\n"
               "    compopt -o filenames 2>/dev/null\n"
               "    COMPREPLY=($(compgen -f -- \"$cur\"))\n"
               "}\n\n")

    out.append("_callsctl() {\n"
               "    local cur=${COMP_WORDS[COMP_CWORD]} prev='' cmd=callsctl word i skip=0\n"
               "    COMPREPLY=()\n"
               "    ((COMP_CWORD > 0)) && prev=${COMP_WORDS[COMP_CWORD-1]}\n"
               "    # bash splits --option=value at '=' (COMP_WORDBREAKS): look through it.\n"
               "    if [[ $cur == '=' ]]; then\n"
               "        cur=''\n"
               "    elif [[ $prev == '=' ]] && ((COMP_CWORD > 1)); then\n"
               "        prev=${COMP_WORDS[COMP_CWORD-2]}\n"
               "    fi\n"
               "    for ((i = 1; i < COMP_CWORD; i++)); do\n"
               "        word=${COMP_WORDS[i]}\n"
               "        if ((skip > 0)); then skip=$((skip - 1)); continue; fi\n"
               "        case $word in\n"
               "            -*)\n"
               "                if _callsctl_takes_value \"$cmd\" \"$word\"; then\n"
               "                    skip=1\n"
               "                    [[ ${COMP_WORDS[i+1]} == '=' ]] && skip=2\n"
               "                fi\n"
               "                continue ;;\n"
               "        esac\n"
               "        case \"$cmd $word\" in\n")
    transitions = [c.name for c in commands if c is not tree]
    for i in range(0, len(transitions), 3):
        chunk = "|".join(f'"{t}"' for t in transitions[i:i + 3])
        end = ")" if i + 3 >= len(transitions) else "|\\"
        out.append(f"            {chunk}{end}\n")
    if transitions:
        out.append("                cmd=\"$cmd $word\" ;;\n")
    out.append("        esac\n    done\n\n    case \"$cmd\" in\n")

    for cmd in commands:
        out.append(f"        \"{cmd.name}\")\n")
        value_opts = _value_options(cmd)
        if value_opts:
            out.append("            case $prev in\n")
            for opt in value_opts:
                pattern = "|".join(opt.names)
                if opt.choices:
                    action = (f"COMPREPLY=($(compgen -W \"{_bash_words(list(opt.choices))}\""
                              " -- \"$cur\")); return ;;")
                elif opt.is_path:
                    action = "_callsctl_files; return ;;"
                else:
                    action = "return ;;  # free-form value"
                out.append(f"                {pattern}) {action}\n")
            out.append("            esac\n")
        out.append("            if [[ $cur == -* ]]; then\n"
                   f"                COMPREPLY=($(compgen -W \"{_bash_words(_option_words(cmd))}\""
                   " -- \"$cur\"))\n")
        if cmd.is_group:
            subs = [c.path[-1] for c in cmd.subcommands]
            out.append("            else\n"
                       f"                COMPREPLY=($(compgen -W \"{_bash_words(subs)}\""
                       " -- \"$cur\"))\n")
        elif any(a.is_path for a in cmd.arguments):
            out.append("            else\n                _callsctl_files\n")
        elif any(a.choices for a in cmd.arguments):
            words = [c for a in cmd.arguments for c in a.choices]
            out.append("            else\n"
                       f"                COMPREPLY=($(compgen -W \"{_bash_words(words)}\""
                       " -- \"$cur\"))\n")
        out.append("            fi ;;\n")
    out.append("    esac\n}\n\n")
    out.append(f"complete -F _callsctl {PROG}\n")
    return "".join(out)


# --- zsh --------------------------------------------------------------------------------


def _zsh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _zsh_desc(text: str) -> str:
    return _one_line(text).replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def _zsh_func(cmd: Command) -> str:
    return "_" + "_".join(part.replace("-", "_") for part in cmd.path)


def _zsh_option_specs(cmd: Command) -> list[str]:
    specs = []
    for opt in cmd.options:
        names = opt.all_names
        if opt.long in ("--help", "--version"):  # these end the command line
            exclusion = "(- *)"
        elif len(names) > 1:
            exclusion = "(" + " ".join(names) + ")"
        else:
            exclusion = ""
        if opt.multiple:
            exclusion = "*"
        desc = _zsh_desc(opt.help)
        if opt.takes_value:
            metavar = opt.metavar.replace(":", "\\:")
            if opt.choices:
                action = "(" + " ".join(opt.choices) + ")"
            elif opt.is_path:
                action = "_files"
            else:
                action = " "
            tail = f":{metavar}:{action}"
        else:
            tail = ""
        for name in names:
            suffix = ""
            if opt.takes_value:
                suffix = "=" if name.startswith("--") else "+"
            specs.append(_zsh_quote(f"{exclusion}{name}{suffix}[{desc}]{tail}"))
    return specs


def _zsh_function(cmd: Command) -> str:
    func = _zsh_func(cmd)
    lines = [f"{func}() {{\n"]
    specs = _zsh_option_specs(cmd)
    if cmd.is_group:
        lines.append("  local curcontext=\"$curcontext\" state state_descr line ret=1\n"
                     "  typeset -A opt_args\n"
                     "  _arguments -C -s -S \\\n")
        for spec in specs:
            lines.append(f"    {spec} \\\n")
        lines.append(f"    {_zsh_quote('1: :' + func + '_commands')} \\\n"
                     f"    {_zsh_quote('*:: :->args')} && ret=0\n"
                     "  case $state in\n"
                     "    args)\n"
                     "      case $words[1] in\n")
        for sub in cmd.subcommands:
            lines.append(f"        {sub.path[-1]}) {_zsh_func(sub)} && ret=0 ;;\n")
        lines.append("      esac ;;\n  esac\n  return ret\n}\n\n")
        lines.append(f"{func}_commands() {{\n  local -a commands=(\n")
        for sub in cmd.subcommands:
            entry = sub.path[-1].replace(":", "\\:") + ":" + _one_line(sub.short_help)
            lines.append(f"    {_zsh_quote(entry)}\n")
        lines.append("  )\n"
                     f"  _describe -t commands {_zsh_quote(cmd.name + ' command')} commands\n"
                     "}\n\n")
    else:
        args = []
        for arg in cmd.arguments:
            action = ("_files" if arg.is_path else
                      "(" + " ".join(arg.choices) + ")" if arg.choices else " ")
            position = "*" if arg.variadic else ""
            optional = "" if arg.required else ":"
            args.append(_zsh_quote(f"{position}{optional}:{arg.metavar}:{action}"))
        lines.append("  _arguments -s -S")
        for spec in specs + args:
            lines.append(f" \\\n    {spec}")
        lines.append("\n}\n\n")
    return "".join(lines)


def zsh(tree: Command) -> str:
    """A `#compdef` function file built on `_arguments`, one function per command."""
    out = [f"#compdef {PROG}\n", _comment(), "\n"]
    for cmd in tree.walk():
        out.append(_zsh_function(cmd))
    # Autoloaded from $fpath, this file is the body of `_callsctl`: it defines the
    # functions, then completes. Sourced, it only defines them and registers the command.
    out.append('if [[ $funcstack[1] == _callsctl ]]; then\n'
               '  _callsctl "$@"\n'
               'else\n'
               f'  compdef _callsctl {PROG}\n'
               'fi\n')
    return "".join(out)


# --- fish -------------------------------------------------------------------------------


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fish(tree: Command) -> str:
    """`complete` lines guarded by a helper that works out which (sub)command is being typed."""
    commands = tree.walk()
    out = ["# fish completion for callsctl\n", _comment(), "\n"]
    out.append("function __callsctl_path --description 'The callsctl command being completed'\n"
               "    set -l path callsctl\n"
               "    set -l skip 0\n"
               "    for tok in (commandline -opc)[2..-1]\n"
               "        if test $skip -eq 1\n"
               "            set skip 0\n"
               "            continue\n"
               "        end\n"
               "        switch \"$path $tok\"\n")
    transitions = [c.name for c in commands if c is not tree]
    if transitions:
        out.append("            case " + " ".join(_fish_quote(t) for t in transitions) + "\n"
                   "                set path \"$path $tok\"\n"
                   "                continue\n")
    out.append("        end\n"
               "        switch \"$path/$tok\"\n")
    takes = [f"{c.name}/{n}" for c in commands for o in _value_options(c) for n in o.names]
    if takes:
        out.append("            case " + " ".join(_fish_quote(t) for t in takes) + "\n"
                   "                set skip 1\n")
    out.append("        end\n"
               "    end\n"
               "    echo $path\n"
               "end\n\n"
               "function __callsctl_at --description 'Is this callsctl command being completed?'\n"
               "    test (__callsctl_path) = \"$argv\"\n"
               "end\n\n"
               f"complete -c {PROG} -f\n")
    for cmd in commands:
        cond = _fish_quote("__callsctl_at " + cmd.name)
        out.append(f"\n# {cmd.name}\n")
        for sub in cmd.subcommands:
            out.append(f"complete -c {PROG} -n {cond} -a {sub.path[-1]}"
                       f" -d {_fish_quote(_one_line(sub.short_help))}\n")
        for opt in cmd.options:
            parts = [f"complete -c {PROG} -n {cond}"]
            for name in opt.all_names:
                if name.startswith("--"):
                    parts.append(f"-l {name[2:]}")
                else:
                    parts.append(f"-s {name[1:]}")
            if opt.takes_value:
                if opt.choices:
                    parts.append("-x -a " + _fish_quote(" ".join(opt.choices)))
                elif opt.is_path:
                    parts.append("-r -F")
                else:
                    parts.append("-x")
            parts.append("-d " + _fish_quote(_one_line(opt.help)))
            out.append(" ".join(parts) + "\n")
        for arg in cmd.arguments:
            if arg.is_path:
                out.append(f"complete -c {PROG} -n {cond} -F\n")
            elif arg.choices:
                out.append(f"complete -c {PROG} -n {cond} -a "
                           f"{_fish_quote(' '.join(arg.choices))}\n")
    return "".join(out)


# The committed files, by path relative to the repository root.
FILES = {
    "completions/callsctl.bash": bash,
    "completions/_callsctl": zsh,
    "completions/callsctl.fish": fish,
}


def render_all(tree: Command | None = None) -> dict[str, str]:
    tree = tree or load_tree()
    return {path: render(tree) for path, render in FILES.items()}
