"""Configuration: defaults, precise errors, check-config, the shipped example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from marrownode.config import ConfigError, Settings, load_settings, settings_from_mapping

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "marrownode", *args],
                          capture_output=True, text=True, timeout=60)


def test_embedded_defaults_hold_the_literature_thresholds() -> None:
    settings = load_settings(None)
    assert settings.node.ae_title == "MARROWNODE"
    assert [(t.field_strength_t, t.signal_loss_percent) for t in settings.analysis.thresholds] == [
        (1.5, 20.0), (3.0, 25.0)]
    assert settings.destinations == []


def test_shipped_example_is_valid_and_check_config_prints_it() -> None:
    example = ROOT / "config" / "marrownode.toml"
    settings = load_settings(example)
    assert settings.node.allowed_calling_aets == ["SCANNER1", "PACS"]
    result = run_cli("check-config", str(example))
    assert result.returncode == 0, result.stderr
    assert 'allowed_calling_aets = ["SCANNER1", "PACS"]' in result.stdout
    # What check-config prints is itself a valid configuration with the same meaning.
    printed = "\n".join(line for line in result.stdout.splitlines() if not line.startswith("#"))
    reparsed = Path(ROOT / "build-check.toml")
    try:
        reparsed.write_text(printed)
        assert load_settings(reparsed) == settings
    finally:
        reparsed.unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[node]\nprot = 104\n", ["node.prot", "unknown key", "port"]),
        ("[node]\nport = 70000\n", ["node.port", "less than or equal to 65535", "70000"]),
        ("[node]\nport = \"eleven\"\n", ["node.port", "integer"]),
        ("[node]\nae_title = \"WAY_TOO_LONG_AE_TITLE\"\n", ["node.ae_title", "1-16"]),
        ("[logging]\nformat = \"xml\"\n", ["logging.format", "'kv' or 'json'"]),
        ("[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"h\"\n",
         ["[[destinations]] \"pacs\" port", "required", "line 1"]),
        ("[analysis]\nthresholds = [{field_strength_t = 1.5, signal_loss_percent = 120}]\n",
         ["analysis.thresholds[0].signal_loss_percent", "less than 100"]),
        ("[bogus]\n", ["bogus", "unknown key", "allowed keys", "storage"]),
        # TOML has types: a string is not a port, nor "yes" or 1 a boolean, nor 9000.0 a count.
        ("[node]\nport = \"11112\"\n", ["node.port", "valid integer", "'11112'"]),
        ("[outputs]\noverlay = \"yes\"\n", ["outputs.overlay", "valid boolean"]),
        ("[outputs]\nsr = 1\n", ["outputs.sr", "valid boolean"]),
        ("[outputs]\nseries_number_base = 9000.0\n",
         ["outputs.series_number_base", "valid integer"]),
        ("[node]\nae_title = \"    \"\n", ["node.ae_title", "blank"]),
        ("[node]\nhost = \"10.0.0.5:4242\"\n", ["node.host", "without a port"]),
        ("[[destinations]]\nname = \"p\"\nae_title = \"P\"\nhost = \"pacs:104\"\nport = 104\n",
         ["[[destinations]] \"p\" host", "without a port"]),
        ("[http]\nport = 11112\n", ["http.port and node.port are both 11112"]),
        ("[destinations]\nname = \"pacs\"\n", ["destinations", "[[destinations]]"]),
        ("[outbox]\nmax_attempts = 10\n", ["outbox", "give_up_after_hours"]),
        ("[node\n", ["invalid TOML"]),
    ],
)
def test_errors_name_file_key_and_what_is_allowed(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


def test_bad_config_exits_2_with_the_message(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[storage]\nmin_free_mb = -5\n")
    for command in (["check-config", str(path)], ["serve", "--config", str(path)],
                    ["status", "--config", str(path)]):
        result = run_cli(*command)
        assert result.returncode == 2
        assert "storage.min_free_mb" in result.stderr and str(path) in result.stderr


def test_missing_tls_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "tls.toml"
    path.write_text(f'[node.tls]\ncert = "{tmp_path}/none.crt"\nkey = "{tmp_path}/none.key"\n')
    with pytest.raises(ConfigError, match=r"node\.tls\.cert: file not found"):
        load_settings(path)


def test_settings_are_immutable() -> None:
    settings = Settings()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type
        settings.node.port = 1  # type: ignore[misc]


def test_log_level_in_any_case_and_warnings_for_valid_but_doubtful(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text('[logging]\nlevel = "info"\n')
    assert load_settings(path).logging.level == "INFO"
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert "# warning: no [[destinations]]: results are made but sent nowhere" in result.stdout
    assert "any calling AE title is accepted" in result.stdout


def test_tls_paths_may_name_systemd_credentials(tmp_path: Path, monkeypatch) -> None:
    """LoadCredential= hands the unit's dynamic user a copy of a root-only key; the config
    names it through ${CREDENTIALS_DIRECTORY}, which only exists inside the unit."""
    (tmp_path / "tls-cert").write_text("cert")
    (tmp_path / "tls-key").write_text("key")
    path = tmp_path / "tls.toml"
    path.write_text('[node.tls]\ncert = "${CREDENTIALS_DIRECTORY}/tls-cert"\n'
                    'key = "${CREDENTIALS_DIRECTORY}/tls-key"\n')
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match="LoadCredential"):
        load_settings(path)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    tls = load_settings(path).node.tls
    assert tls is not None and tls.key == tmp_path / "tls-key"


def test_the_embedded_analysis_defaults_are_quants_own() -> None:
    """One place for each analysis default (marrownode/defaults.py): the node on embedded
    defaults analyses exactly as quant/ does when called with no parameters."""
    from marrownode.pipeline import quant_parameters
    from marrownode.quant.analysis import QuantParameters

    assert quant_parameters(Settings()) == QuantParameters()
    changed = settings_from_mapping({"analysis": {"min_focus_volume_mm3": 80.0}})
    assert quant_parameters(changed) != QuantParameters()


def test_errors_give_the_line_name_the_table_entry_and_never_echo_a_secret(tmp_path) -> None:
    """What an administrator editing over SSH needs: the line, the destination or user by
    its name (not its position), no validator prefixes, and a password pasted into
    password_hash is not repeated in the message."""
    path = tmp_path / "bad.toml"
    path.write_text('[node]\nport = "11112"\n\n[[destinations]]\nname = "pacs"\nae_title = "P"\n'
                    'host = "127.0.0.1"\nport = 99999\n\n[http]\nport = 8080\n'
                    '[[http.users]]\nname = "admin"\nrole = "admin"\n'
                    'password_hash = "correct horse battery"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert "line 2: node.port:" in message
    assert 'line 8: [[destinations]] "pacs" port:' in message
    assert 'line 15: [[http.users]] "admin" password_hash:' in message
    assert "correct horse" not in message and "(the value is not shown)" in message
    assert "Value error" not in message
    same = tmp_path / "same.toml"
    same.write_text("[node]\nport = 11112\n[http]\nport = 11112\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(same)
    assert "(the whole file): " in str(caught.value) and "Value error" not in str(caught.value)
