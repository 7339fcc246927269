"""Settings: defaults, the TOML file, environment overrides and clear errors."""

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from rlhf_loop.config import ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parent.parent


def test_shipped_config_file_documents_every_setting_with_its_default() -> None:
    shipped = load_settings(REPO / "rlhf_loop.toml", environ={})
    assert shipped == Settings()
    text = (REPO / "rlhf_loop.toml").read_text()
    assert all(f"\n{f.name} = " in text for f in fields(Settings))


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('k = 6\nmodel = "some/model"\n')
    settings = load_settings(path, environ={"RLHF_LOOP_K": "3", "RLHF_LOOP_OVERLAP": "2"})
    assert (settings.k, settings.model, settings.overlap) == (3, "some/model", 2)
    assert (
        load_settings(path, environ={"RLHF_LOOP_AUTO_START_WORKER": "no"}).auto_start_worker
        is False
    )


@pytest.mark.parametrize(
    ("content", "environ", "message"),
    [
        ("k = 12\n", {}, "k must be between 2 and 9"),
        ("k = 1.5\n", {}, "'k'"),
        ("colour = 'red'\n", {}, "unknown settings colour"),
        ("k = \n", {}, "c.toml"),
        ("", {"RLHF_LOOP_TEMPERATURE": "hot"}, "'temperature'"),
        ("", {"RLHF_LOOP_SEED_DEMO_PROMPTS": "maybe"}, "'seed_demo_prompts'"),
    ],
)
def test_bad_settings_name_the_setting(
    tmp_path: Path, content: str, environ: dict[str, str], message: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, environ=environ)


def test_a_named_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(environ={"RLHF_LOOP_CONFIG": str(tmp_path / "missing.toml")})


def test_streamlit_sends_no_usage_statistics_and_shows_no_developer_toolbar() -> None:
    """Read the way ``streamlit run app.py`` reads it (Streamlit's own config loader, from the
    repository), in a fresh process: Streamlit's options are process-wide."""
    read = (
        "from streamlit import config; config.get_config_options(force_reparse=True); "
        "print(config.get_option('browser.gatherUsageStats'), "
        "config.get_option('client.toolbarMode'))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    result = subprocess.run(
        [sys.executable, "-c", read], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.stdout.split() == ["False", "viewer"], result.stderr
