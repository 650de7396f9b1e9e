"""The facts the man page and the README share, read from the code wherever the code has them.

Derived, never restated: the config reference (callsctl_sfu.config: every
field's section, help, default, flag and `CALLSCTL_*` name, all declared
once on the field), the exit codes (callsctl.errors), the check
result fields (callsctl.check.result.CheckResult), the file names
(callsctl_sfu.datadir, callsctl_sfu.tuning) and which commands take `--json`
(the command tree).

Written here, because no code says it: what each non-check command's JSON
holds, what a few environment variables outside the config schema do, and the
examples taken from the deployment guide's tasks. tests/test_docs_fresh.py
checks that every command line quoted in the examples still parses against
the CLI and that every `CALLSCTL_*` name in the source is documented, so this
prose cannot silently go stale either.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from tools.clitree import Command

# --- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    name: str
    section: str
    flag: str | None
    env: str
    default: str
    meaning: str


def settings(tree: Command) -> list[Setting]:
    """One row per ServeConfig field, grouped by section, from the fields' declarations.

    The flag comes from the declaration too (callsctl/serve_options.py builds the
    options from it); the command tree is asked only to confirm `serve` has it.
    """
    from callsctl_sfu.config import specs_by_section

    serve = tree.find(["serve"])
    have = {opt.long for opt in serve.options} if serve is not None else set()
    rows = []
    for spec in specs_by_section():
        if spec.flag and serve is not None and spec.flag not in have:
            raise RuntimeError(f"{spec.name} declares {spec.flag} but `serve` lacks it")
        rows.append(Setting(
            name=spec.name,
            section=spec.section,
            flag=spec.flag,
            env=spec.env,
            default=spec.default_text,
            meaning=spec.help,
        ))
    return rows


def sections() -> dict[str, str]:
    from callsctl_sfu.config import SECTIONS

    return dict(SECTIONS)


# --- environment outside the config schema ---------------------------------------------------

EXTRA_ENVIRONMENT: dict[str, str] = {
    "CALLSCTL_DEBUG": "When set, an unexpected internal error prints its Python traceback "
                      "instead of the one-line message.",
    "XDG_DATA_HOME": "Base of the default data directory ($XDG_DATA_HOME/callsctl, else "
                     "~/.local/share/callsctl).",
    "NO_COLOR": "When set, human output has no colours (rich honours it).",
    "CALLSCTL_FAST_PATH": "Set to 0 to make `callsctl serve` forward in Python instead of its "
                          "C fan-out (for comparisons; GET /version names the engine).",
    "CALLSCTL_INGRESS_THREAD": "Set to 0 to make `callsctl serve` read its media socket with "
                               "the C ingress from the event loop (one wake-up per packet) "
                               "instead of on the ingress's own thread (GET /stats `ingress`).",
    "CALLSCTL_SRTP_THREAD": "Set to 0 to make `callsctl serve` create each session's SRTP "
                            "contexts on the thread that keys it instead of on one thread of "
                            "their own, which keeps receivers' contexts together in memory "
                            "(for comparisons).",
    "CALLSCTL_SRTP_SEALER": "Set to 0 to make libsrtp protect the outgoing RTP of every "
                            "session instead of `callsctl serve`'s own "
                            "sender (the same packets, byte for byte, for less CPU per "
                            "forwarded copy; for comparisons).",
    "CALLSCTL_PKTINFO": "Set to 0 to let the kernel choose the source address of what "
                        "`callsctl serve` sends on a media socket bound to every address, "
                        "instead of the address each peer wrote to (IP_PKTINFO; a host "
                        "with several addresses then answers from the wrong one, which "
                        "`callsctl check rtc` reports; for comparisons).",
    "CALLSCTL_GC_FREEZE": "Set to 0 to stop `callsctl serve` freezing its established "
                          "sessions' objects out of Python's garbage collector while a call "
                          "of 100 or more fills (full collections then stall media for "
                          "hundreds of ms at 1000 sessions); a number N freezes from N "
                          "sessions on. GET /stats `gc` shows the collections' pauses.",
    "CALLSCTL_DTLS_RECORDS": "Set to 0 to make `callsctl serve` keep each session's OpenSSL "
                             "DTLS connection after the handshake instead of carrying the data "
                             "channel's records itself (about 70 KB less per session; GET "
                             "/stats `dtls_records` counts the sessions carried).",
    "CALLSCTL_LOADGEN_GC_FREEZE": "The same for `callsctl loadtest` over its own participants "
                                  "(0: off; N: from N participants per process, default "
                                  "100); its report shows its own full collections.",
    "CALLSCTL_LOADGEN_PUMP": "Set to 0 to make `callsctl loadtest` read its participants' "
                             "sockets through asyncio instead of one C thread per process "
                             "(its report's `loadgen.receive_thread` is then null).",
    "SHIV_ROOT": "For the single-file build (dist/callsctl): where it unpacks itself on first "
                 "run (default ~/.shiv).",
}


# --- exit codes ------------------------------------------------------------------------------


def exit_codes() -> list[tuple[int, str]]:
    from callsctl.errors import EXIT_FAIL, EXIT_OK, EXIT_USAGE

    return [
        (EXIT_OK, "Success. For `callsctl check …`: every check passed or only warned."),
        (EXIT_FAIL, "The operation failed: a check failed, a port is in use, a privilege or "
                    "file is missing, the server refused. One line on stderr says why."),
        (EXIT_USAGE, "Usage error: unknown option, missing or invalid value. Nothing was done."),
        (130, "Interrupted (Ctrl-C)."),
    ]


# --- JSON output -----------------------------------------------------------------------------

CHECK_RESULT_MEANING: dict[str, str] = {
    "name": "which check (`udp`, `stun`, `rtc.udp`, …)",
    "status": "`pass`, `warn` or `fail`; only `fail` makes `ok` false and the exit code 1",
    "summary": "one line for a human",
    "figure": "the measured number, e.g. an RTT, or null",
    "fix": "what to do when it is not a pass, or null",
    "details": "check-specific object (addresses, counts, timings)",
}

# Top-level keys of the JSON that commands outside `check` print. Commands under
# `check` all print the check envelope described by check_result_fields().
JSON_SHAPES: dict[str, str] = {
    "callsctl token": "`{token, link, call, user, expires_at}` (expires_at: Unix seconds)",
    "callsctl tune": "without --apply/--persist/--revert: `{ok, settings[], evidence, "
                     "persist_file, saved_values}` (`ok` is false while a setting is LOW or "
                     "MISSING; the exit code stays 0, showing succeeded); with them: "
                     "`{action, dry_run, changes[], …, notes[], done}`",
    "callsctl top": "with --once: `{host, time, server{…}, calls[], nodes[]}` (nodes: null "
    "on a single node; server rates measured "
                    "over --refresh seconds; each call is its /api/v1/calls entry plus "
                    "sessions[])",
    "callsctl loadtest": "`{ok, target, settings, participants, join_s, first_media_s, window, "
                         "media, delay_ms, server, loadgen, samples, notes}`",
}

JSON_RULES: tuple[str, ...] = (
    "With `--json`, stdout carries exactly one JSON object and nothing else; progress and "
    "prompts go to stderr.",
    "Every `callsctl check …` command prints `{\"ok\": bool, \"results\": [result, …]}`; "
    "`ok` is false exactly when a result has status `fail`, and then the exit code is 1.",
    "Errors that stop a command before it has a result print nothing on stdout, one line "
    "`callsctl: error: …` on stderr, and exit 1 (2 for usage errors).",
)


def check_result_fields() -> list[tuple[str, str, str]]:
    """(field, type, meaning) of one entry of `results`, read from the dataclass."""
    from callsctl.check.result import CheckResult

    rows = []
    for f in fields(CheckResult):
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        rows.append((f.name, _json_type(str(annotation)), CHECK_RESULT_MEANING.get(f.name, "")))
    return rows


_JSON_TYPES = {"str": "string", "Status": "string", "int": "number", "float": "number",
               "bool": "boolean", "None": "null", "dict": "object", "list": "array"}


def _json_type(annotation: str) -> str:
    """`str | None` -> `string or null`: the reader of --json output thinks in JSON types."""
    parts = []
    for part in annotation.split("|"):
        base = part.strip().split("[", 1)[0]
        parts.append(_JSON_TYPES.get(base, base))
    return " or ".join(parts)


def json_commands(tree: Command) -> list[tuple[str, str]]:
    """(command, what its --json prints) for every command that has --json."""
    rows = []
    for cmd in tree.walk():
        opt = cmd.option("--json")
        if opt is None:
            continue
        if cmd.path[:2] == ("callsctl", "check"):
            shape = "the check envelope `{ok, results[]}`"
        else:
            shape = JSON_SHAPES.get(cmd.name, opt.help or "a JSON object")
        rows.append((cmd.name, shape))
    return rows


# --- files -----------------------------------------------------------------------------------


def files() -> list[tuple[str, str]]:
    from callsctl_sfu import tuning
    from callsctl_sfu.datadir import JWT_SECRET_FILE

    return [
        ("$XDG_DATA_HOME/callsctl/ (--data-dir)",
         "The data directory (0700): state that must survive restarts."),
        (f"<data dir>/{JWT_SECRET_FILE}",
         "Secret that signs join tokens (0600), generated on first start."),
        (f"<data dir>/{tuning.STATE_FILE_NAME}",
         "Kernel values that `callsctl tune --apply` replaced, for `--revert`."),
        (str(tuning.persist_path()),
         "Written by `callsctl tune --persist` so the UDP buffer settings survive reboot."),
        ("serve.toml (--config)",
         "Optional TOML settings file, keys at top level or under [serve]; "
         "`callsctl serve --print-config` writes one."),
        ("/etc/systemd/system/callsctl.service",
         "Where deploy/callsctl.service goes for a systemd install."),
    ]


# --- examples: the deployment guide's tasks, the callsctl way ---------------------------------


@dataclass(frozen=True)
class Example:
    task: str
    guide: str  # what the deployment guide has you run, or "" when it has no recipe
    commands: tuple[str, ...]
    note: str


EXAMPLES: tuple[Example, ...] = (
    Example(
        "Run a server and join the default call",
        "",
        ("callsctl serve",),
        "Prints the listening addresses and a join link; open it in two browsers.",
    ),
    Example(
        "Advertise the public address of a NATed server",
        "ICE Host Override",
        ("callsctl serve --ice-host-override 203.0.113.10",
         "CALLSCTL_ICE_HOST_OVERRIDE=203.0.113.10 callsctl serve"),
        "Clients get 203.0.113.10 in the ICE candidates; no STUN lookup is needed.",
    ),
    Example(
        "Can a client reach the UDP media port?",
        "nc -l -u -p 8443 (server), nc -v -u HOST_IP 8443 (client)",
        ("callsctl check listen --udp --echo --port 8443",
         "callsctl check udp --host HOST_IP --port 8443"),
        "Run the first on the server (with the SFU stopped), the second on the client. "
        "Against a running SFU use `callsctl check udp --host HOST_IP --stun`: it answers "
        "STUN on the media port.",
    ),
    Example(
        "Can a client reach the TCP fallback port?",
        "nc -l -p 8443 (server), nc -v HOST_IP 8443 (client)",
        ("callsctl check listen --tcp --echo --port 8443",
         "callsctl check tcp --host HOST_IP --port 8443"),
        "The TCP port is the ICE-TCP fallback for clients whose UDP is blocked.",
    ),
    Example(
        "Watch media packets arrive",
        "sudo tcpdump -n port 8443",
        ("sudo callsctl check capture --port 8443 --duration 30",),
        "Names each packet (STUN, DTLS, SRTP, ICE-TCP) and tells how far a session got.",
    ),
    Example(
        "Find the public address and NAT behaviour (what STUN tells the server)",
        "STUN server on UDP 3478",
        ("callsctl check stun --server stun.global.calls.mattermost.com:3478",),
        "",
    ),
    Example(
        "Test a TURN server for clients behind strict firewalls",
        "coturn with static-auth-secret",
        ("callsctl check turn --server turn:turn.example.com:3478 --secret SECRET",),
        "Allocates a relay and sends data through it over UDP and TCP.",
    ),
    Example(
        "Check a running server from outside",
        "",
        ("callsctl check all --host calls.example.com",
         "callsctl check rtc --host calls.example.com --json"),
        "Probes the media ports with STUN and compares the advertised ICE address.",
    ),
    Example(
        "Validate a config before restarting",
        "",
        ("callsctl check config --config /etc/callsctl/serve.toml",),
        "",
    ),
    Example(
        "Apply the kernel UDP buffer tunings",
        "net.core.rmem_max = 16777216, net.core.wmem_max, net.core.optmem_max",
        ("callsctl tune", "sudo callsctl tune --apply --persist"),
        "The first shows current vs recommended values; the second raises them now and "
        "at every boot. `sudo callsctl tune --revert` undoes both.",
    ),
    Example(
        "Give someone a join link",
        "",
        ("callsctl token --call standup --user alice --ttl 2h",),
        "Prints the token on stdout and the link on stderr; --json prints both.",
    ),
)
