"""The startup banner prints values as they are.

When it was printed with rich, `:cd:` was read as an emoji code and `[red]`
as markup: a TLS fingerprint `...CC:CD:08...` came out with a CD emoji in it,
and a data dir with brackets lost them. It is plain text now (the serving pass
imports no rich); these values must still come out as they are.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from callsctl.banner import print_banner
from callsctl_sfu.config import ServeConfig

FINGERPRINT = "AB:CC:CD:08:" + ":".join(["0F"] * 28)


def fake_server(data_dir: Path) -> SimpleNamespace:
    tls = SimpleNamespace(self_signed=True, cert_path=data_dir / "tls" / "self-signed.crt",
                          fingerprint_sha256=FINGERPRINT)
    control = SimpleNamespace(tls=tls, admin_key_path=data_dir / "admin_key")
    return SimpleNamespace(
        config=ServeConfig(bind="127.0.0.1", data_dir=str(data_dir)), api_port=8045,
        udp_port=8443, metrics_port=0, fleet=None, control=control, connectivity=None,
        fanout_threads=2,
        advertised=SimpleNamespace(host="127.0.0.1", port=8443, source="bind address"))


def test_banner_prints_the_fingerprint_and_paths_verbatim(tmp_path: Path, capsys) -> None:
    data_dir = tmp_path / "data[red]:cd:"
    print_banner(fake_server(data_dir))  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert FINGERPRINT in out, out
    assert "\U0001f4bf" not in out  # the CD emoji
    assert str(data_dir) in out, out
    assert "callsctl serve" in out and "/?token=" in out
