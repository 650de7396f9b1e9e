"""Generated docs match the CLI, render cleanly, and the completions really complete.

completions/, man/callsctl.1 and the generated README blocks are committed
and must equal what `make docs` (python -m tools.gen_docs) produces from the
CLI right now. Hand-written command lines (README, man page examples, deploy/)
must parse against the CLI. The completion scripts are exercised in real bash,
zsh and fish (zsh and fish skip when absent; .ci/run installs them).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tools import gen_docs, reference
from tools.clitree import Command, check_command_line, load_tree

REPO = Path(__file__).resolve().parent.parent
MAN = REPO / "man" / "callsctl.1"
COMPLETIONS = REPO / "completions"


@pytest.fixture(scope="module")
def tree() -> Command:
    return load_tree()


def _completion_cases(tree: Command) -> list[tuple[str, set[str]]]:
    """(command line ending where Tab is pressed, words that must be offered) for every
    command: its subcommands after "cmd ", its options after "cmd -"."""
    cases = []
    for cmd in tree.walk():
        if cmd.is_group:
            cases.append((cmd.name + " ", {c.path[-1] for c in cmd.subcommands}))
        cases.append((cmd.name + " -", {n for o in cmd.options for n in o.all_names}))
    return cases


# --- freshness -------------------------------------------------------------------------------


def test_generated_files_are_up_to_date() -> None:
    stale = gen_docs.stale_files(REPO)
    assert not stale, (
        f"generated files are out of date with the CLI: {', '.join(stale)}; "
        f"{gen_docs.STALE_HINT}"
    )


def test_readme_has_every_generated_block() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for name in gen_docs.README_BLOCKS:
        begin, end = gen_docs._markers(name)
        assert begin in text and end in text, f"README.md lost the generated:{name} markers"


def test_config_reference_lists_every_setting(tree: Command) -> None:
    from dataclasses import fields

    from callsctl_sfu.config import ServeConfig, env_name

    block = gen_docs.config_block(tree)
    for f in fields(ServeConfig):
        assert f"`{f.name}`" in block and f"`{env_name(f.name)}`" in block
        assert " ".join(str(f.metadata["help"]).split()) in block


# --- man page --------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("groff") is None, reason="needs groff (Debian groff-base)")
def test_man_page_renders_without_warnings() -> None:
    proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(MAN)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.skipif(shutil.which("man") is None, reason="needs man (Debian man-db)")
def test_man_page_reads_with_man_l(tree: Command) -> None:
    env = dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="0", PAGER="cat",
               MANPAGER="cat", LANG="C.UTF-8")
    proc = subprocess.run(["man", "-l", str(MAN)], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    text = re.sub(r".\x08", "", proc.stdout)  # drop overstrike bold/underline if any
    for section in ("NAME", "SYNOPSIS", "COMMANDS", "CONFIGURATION", "ENVIRONMENT", "FILES",
                    "EXIT STATUS", "JSON OUTPUT", "EXAMPLES"):
        assert f"\n{section}\n" in text, section
    for cmd in tree.walk()[1:]:
        assert cmd.name in text, cmd.name
        for opt in cmd.options:
            assert opt.long in text, f"{cmd.name} {opt.long}"
    for row in reference.settings(tree):
        assert row.env in text
    for code, _ in reference.exit_codes():
        assert re.search(rf"^\s+{code}\s", text, re.MULTILINE), code


def test_every_callsctl_environment_variable_in_the_source_is_documented() -> None:
    man = MAN.read_text(encoding="utf-8").replace("\\-", "-")
    found: dict[str, Path] = {}
    for package in ("callsctl", "callsctl_sfu"):
        for path in (REPO / package).rglob("*.py"):
            for name in re.findall(r"\bCALLSCTL_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()):
                found.setdefault(name, path)
    missing = {n: str(p.relative_to(REPO)) for n, p in found.items() if n not in man}
    assert not missing, (
        f"environment variables read in the code but not in the man page: {missing}; "
        "add them to tools/reference.py EXTRA_ENVIRONMENT (or the config schema) and "
        "run `make docs`"
    )


# --- hand-written command lines --------------------------------------------------------------

_CODE_SPAN = re.compile(r"`([^`\n]+)`")
# callsctl as the command: first word, or after sudo, VAR=value or `ssh HOST`
# (and not, say, a docker image called callsctl).
_INVOCATION = re.compile(r"^(?:sudo\s+|[A-Z_][A-Z0-9_]*=\S*\s+|ssh\s+\S+\s+)*(callsctl(?:\s.*)?)$")


def _invocations(text: str) -> list[str]:
    """`callsctl ...` command lines in code spans and fenced blocks of markdown/comments."""
    candidates = _CODE_SPAN.findall(text)
    in_block = False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            candidates.append(line.split(" #", 1)[0])
    found = []
    for candidate in candidates:
        match = _INVOCATION.search(candidate.strip())
        if match:
            found.append(match.group(1).strip())
    return found


def test_readme_command_lines_parse(tree: Command) -> None:
    lines = _invocations((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(lines) > 20
    problems = [p for line in lines if (p := check_command_line(tree, line))]
    assert not problems, "\n".join(problems)


def test_man_page_examples_parse(tree: Command) -> None:
    lines = [c for ex in reference.EXAMPLES for c in ex.commands]
    lines += [c for ex in reference.EXAMPLES for c in _invocations(ex.note)]
    problems = [p for line in lines if (p := check_command_line(tree, line))]
    assert not problems, "\n".join(problems)


def test_deploy_command_lines_parse(tree: Command) -> None:
    lines = []
    for path in (REPO / "deploy").rglob("*"):
        if path.is_file() and "grafana" not in path.relative_to(REPO / "deploy").parts[0]:
            lines += _invocations(path.read_text(encoding="utf-8"))
    unit = (REPO / "deploy" / "callsctl.service").read_text(encoding="utf-8")
    for value in re.findall(r"^ExecStart=(\S+)(.*)$", unit, re.MULTILINE):
        assert value[0].endswith("/callsctl")
        lines.append("callsctl" + value[1])
    assert len(lines) >= 4
    problems = [p for line in lines if (p := check_command_line(tree, line))]
    assert not problems, "\n".join(problems)


# --- completions in real shells --------------------------------------------------------------


def test_bash_completion_offers_every_command_and_option(tree: Command) -> None:
    cases = _completion_cases(tree)
    script = [f"source {COMPLETIONS / 'callsctl.bash'}",
              'comp() { read -r -a COMP_WORDS <<< "$1"; [[ $1 == *" " ]] && COMP_WORDS+=("");'
              ' COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _callsctl;'
              ' printf "%s\\n" "${COMPREPLY[*]}"; }']
    script += [f"comp '{line}'" for line, _ in cases]
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", "\n".join(script)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    replies = proc.stdout.splitlines()
    assert len(replies) == len(cases)
    for (line, wanted), reply in zip(cases, replies, strict=True):
        assert wanted <= set(reply.split()), f"{line!r}: offered {reply!r}"


def test_bash_completion_skips_option_values_and_completes_files() -> None:
    script = f"""source {COMPLETIONS / 'callsctl.bash'}
comp() {{ COMP_WORDS=("$@"); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); _callsctl;
         printf '%s\\n' "${{COMPREPLY[*]}}"; }}
comp callsctl check udp --port 8443 --js
comp callsctl check udp --port = 8443 --js
comp callsctl check config --config complet
comp callsctl ch
"""
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    assert proc.stdout.splitlines() == ["--json", "--json", "completions", "check"], proc.stderr


@pytest.mark.skipif(shutil.which("fish") is None, reason="needs fish (Debian fish)")
def test_fish_completion_offers_every_command_and_option(tree: Command) -> None:
    cases = _completion_cases(tree) + [("callsctl check udp --port 8443 --js", {"--json"})]
    script = [f"source {COMPLETIONS / 'callsctl.fish'}"]
    for line, _ in cases:
        script += [f"complete -C '{line}' | string replace -r '\\t.*' ''", "echo '@@'"]
    proc = subprocess.run(["fish", "--no-config", "-c", "\n".join(script)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    replies = proc.stdout.split("@@\n")[: len(cases)]
    for (line, wanted), reply in zip(cases, replies, strict=True):
        assert wanted <= set(reply.split()), f"{line!r}: offered {reply!r}"


# zsh completion only runs inside the line editor, so drive a real interactive zsh
# on a pseudo-terminal: wrap compadd to log every match it is given, press Tab, and
# wait for comppostfuncs to say that completion has finished.
_ZSH_DRIVER = r"""
zmodload zsh/zpty || exit 3
zpty z zsh -f -i
zpty -w z "fpath=(${(q)1} \$fpath); autoload -Uz compinit; compinit -u -D"
zpty -w z 'compadd() { local -a __m; if [[ ${(j: :)@} == *(-A|-O|-D)* ]]; then
  builtin compadd "$@"; return; fi; builtin compadd -A __m "$@";
  (( $#__m )) && print -rl -- $__m >> '${(q)2}'; builtin compadd "$@"; }'
zpty -w z '__cap_done() { print -r -- __DONE__ >> '${(q)2}'; }'
zpty -w z 'comppostfuncs=(__cap_done)'
zpty -w -n z "$3"$'\t'
for i in {1..200}; do
  [[ -f $2 ]] && grep -q __DONE__ $2 && break
  sleep 0.05
done
zpty -d z
"""


@pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh (Debian zsh)")
@pytest.mark.parametrize(("line", "wanted"), [
    ("callsctl ", {"serve", "token", "tune", "check"}),
    ("callsctl check ", {"udp", "tcp", "listen"}),
    ("callsctl check udp --p", {"--port"}),
    ("callsctl check udp --port 8443 --js", {"--json"}),
    ("callsctl serve --config complet", {"completions"}),
    ("callsctl token -", {"--call", "--user", "--json"}),
])
def test_zsh_completion(line: str, wanted: set[str], tmp_path: Path) -> None:
    driver = tmp_path / "driver.zsh"
    driver.write_text(_ZSH_DRIVER)
    out = tmp_path / "matches"
    subprocess.run(["zsh", "-f", str(driver), str(COMPLETIONS), str(out), line],
                   capture_output=True, text=True, timeout=60, cwd=REPO)
    matches = set(out.read_text().split()) if out.exists() else set()
    assert "__DONE__" in matches, f"zsh completion did not finish for {line!r}"
    assert wanted <= matches, f"{line!r}: offered {sorted(matches)}"


def test_completion_scripts_parse() -> None:
    checks = [("bash", ["bash", "-n"], "callsctl.bash"), ("zsh", ["zsh", "-n"], "_callsctl"),
              ("fish", ["fish", "--no-execute"], "callsctl.fish")]
    ran = 0
    for shell, argv, name in checks:
        if shutil.which(shell) is None:
            continue
        proc = subprocess.run([*argv, str(COMPLETIONS / name)], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
        ran += 1
    assert ran >= 1
