"""Settings: flag, else environment variable, else default, from one table (chatbot/config.py) that
the desk's and the CLI's parsers and the README all come from."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatbot import cli, config, readme
from chatbot.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import app  # noqa: E402 - the desk's entry point, beside the package


@pytest.fixture(autouse=True)
def no_flags():
    yield
    config.use(argparse.Namespace())  # flags are process-wide: leave none for the next test


def test_a_flag_beats_its_variable_which_beats_the_default(monkeypatch):
    monkeypatch.delenv("MADOGUCHI_QUEUE", raising=False)
    assert config.get("queue") == 16
    monkeypatch.setenv("MADOGUCHI_QUEUE", "3")
    assert config.get("queue") == 3
    assert app.parse_args(["--queue", "5"]).queue == 5
    assert app.parse_args([]).queue == 3


def test_shared_flags_work_before_and_after_the_command(tmp_path, monkeypatch):
    monkeypatch.delenv("MADOGUCHI_BANK", raising=False)
    parser = cli.build_parser()
    config.use(parser.parse_args(["--corpus", str(tmp_path), "list"]))
    assert config.corpus_dir() == tmp_path and config.bank_file() == tmp_path / "bank.jsonl"  # derived from it
    config.use(parser.parse_args(["list", "--index", str(tmp_path / "i")]))
    assert config.index_dir() == tmp_path / "i" and config.corpus_dir() != tmp_path  # the last call's flags only
    with pytest.raises(SystemExit):
        parser.parse_args(["list", "--workers", "2"])  # a desk setting is not a flag of the CLI


@pytest.mark.parametrize("flag, value, words", [
    ("--workers", "0", "--workers must be a whole number from 1 to 64, got '0'"),
    ("--queue", "²", "--queue must be a whole number"),
    ("--rate-limit", "nan", "--rate-limit must be a number of requests a second"),
    ("--port", "70000", "--port must be a whole number from 1 to 65535"),
])
def test_a_bad_value_is_one_line_naming_where_it_came_from(flag, value, words, monkeypatch):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        app.parse_args([flag, value])
    variable = config.BY_NAME[flag[2:].replace("-", "_")].env
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"{variable} must be"):
        config.get(flag[2:].replace("-", "_"))


def test_the_desk_says_so_and_exits_before_loading_anything(tmp_path):
    env = {**os.environ, "MADOGUCHI_WORKERS": "many"}
    done = subprocess.run([sys.executable, "app.py", "--port", "1"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "error: MADOGUCHI_WORKERS must be a whole number from 1 to 64, " \
                                                  "got 'many'"


def test_every_setting_is_in_both_help_texts():
    desk_help = argparse.ArgumentParser(parents=[config.parser(desk=True)]).format_help()
    ask_help = [a for a in cli.build_parser()._subparsers._group_actions][0].choices["ask"].format_help()
    for s in config.SETTINGS:
        assert s.flag in desk_help and f"${s.env}" in desk_help.replace("\n", " ").replace("  ", "")
        assert (s.flag in ask_help) == (not s.desk)


def test_the_readme_tables_are_what_the_code_says():
    text = readme.README.read_text(encoding="utf-8")
    assert readme.render(text) == text, "README.md is stale: run `python -m chatbot.readme`"
    for s in config.SETTINGS:
        assert f"`{s.env}`" in text
