"""The console script: help, info, config, and errors that name what was wrong."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vpdd.cli import main


def test_info_reports_versions_devices_kernels_and_simulators(capsys):
    assert main(["info", "--json", "--no-render-check"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["versions"]["torch"].startswith("2.")
    assert info["kernels"]["active_on_cpu"] == "torch"
    assert info["simulators"]["metaworld"] is True and info["simulators"]["rlbench"] is False


@pytest.mark.sim
def test_info_renders_a_frame(capsys):
    assert main(["info", "--json"]) == 0
    render = json.loads(capsys.readouterr().out)["simulators"]["metaworld_render"]
    assert render["ok"], render
    assert render["frame"] == [32, 32, 3]


def test_kernel_switch_env_var_is_validated(monkeypatch, capsys):
    monkeypatch.setenv("VPDD_KERNEL_IMPL", "cuda-magic")
    assert main(["info", "--no-render-check"]) == 2
    assert "VPDD_KERNEL_IMPL='cuda-magic'" in capsys.readouterr().err


def test_config_compose_and_check(tmp_path, repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    out = tmp_path / "p.yaml"
    assert main(["config", "compose", "preset=paper", "-o", str(out)]) == 0
    assert main(["config", "check", str(out)]) == 0
    assert "preset=paper" in capsys.readouterr().out
    assert main(["config", "compose", "tokenizer.n_codes=0", "-o", str(out)]) == 2
    assert "tokenizer.n_codes=0: expected a value > 0" in capsys.readouterr().err


def test_bad_input_errors_name_the_path(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such data folder" in capsys.readouterr().err
    assert main(["data", "ingest-videos", str(tmp_path / "novideos"), "--out", str(tmp_path / "o")]) == 2
    assert "no such video folder" in capsys.readouterr().err


def test_console_script_is_installed(tool_env):
    proc = subprocess.run(["vpdd", "--help"], capture_output=True, text=True, env=tool_env, check=True)
    for command in ("info", "config", "data", "bench"):
        assert command in proc.stdout


def test_transformers_is_not_shadowed_by_the_kernels_folder(tool_env, repo_root):
    """kernels/ must not shadow the PyPI `kernels` package that transformers probes."""
    code = "import vpdd_kernels, transformers; from transformers import GPT2Model; import importlib.util as u; " \
           "s = u.find_spec('kernels'); print(s.origin if s else None)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, env=tool_env,
                          check=True)
    assert "kernels/__init__" not in proc.stdout


def test_bench_forwards_options_to_the_benchmark(capsys):
    from vpdd.cli.bench import dispatch

    with pytest.raises(SystemExit) as exit_info:
        dispatch(["bench", "collect", "--resolution", "not-a-number"])
    assert exit_info.value.code == 2
    assert "argument --resolution: invalid int value" in capsys.readouterr().err
    assert dispatch(["info"]) is None


@pytest.mark.sim
def test_info_prints_no_third_party_info_lines_at_default_verbosity(tool_env):
    """PyOpenGL logs `No OpenGL_accelerate module loaded` at INFO when the render check imports it."""
    proc = subprocess.run(["vpdd", "info"], capture_output=True, text=True, env=tool_env)
    assert proc.returncode == 0, proc.stderr
    assert "OpenGL" not in proc.stderr and " INFO " not in proc.stderr, proc.stderr


def test_every_option_of_data_fetch_has_help(capsys):
    with pytest.raises(SystemExit):
        main(["data", "fetch", "--help"])
    out = capsys.readouterr().out
    assert "the raw-data folder pinned by ROOT.dvc" in " ".join(out.split())
