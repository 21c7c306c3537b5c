"""The command line's shape: thin commands, help on every option, every command listed, errors naming options."""

import inspect
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from ncsn_tune.cli import main

MAX_COMMAND_LINES = 60


def commands(group: click.Group, prefix: str = ""):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def test_every_command_function_is_short():
    for name, command in commands(main):
        lines, _ = inspect.getsourcelines(command.callback)
        body = [line for line in lines if not line.lstrip().startswith("@")]
        assert len(body) <= MAX_COMMAND_LINES, f"{name}: {len(body)} lines"


def test_every_option_has_help():
    for name, command in commands(main):
        for param in command.params:
            if isinstance(param, click.Option):
                assert (param.help or "").strip(), f"{name} {param.opts[0]} has no help"


def test_every_command_is_listed_both_ways():
    names = {name.split()[0] for name, _ in commands(main)}
    assert names == {"sigmas", "step-size", "plot", "simulate", "train", "sample", "evaluate", "audit", "export"}
    for module in ("ncsn_tune", "ncsn_tune.cli"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert all(name in out.stdout for name in names), out.stdout


def test_train_help_describes_every_setting():
    out = CliRunner().invoke(main, ["train", "-h"]).output
    for phrase in ("Adam learning rate", "EMA rate", "[default: 128]", "torch.compile mode", "Langevin steps per scale"):
        assert phrase in out


def test_plot_step_size_takes_what_step_size_takes():
    step_size, plot = main.commands["step-size"], main.commands["plot"].commands["step-size"]
    own = {"output", "as_json"}
    assert {p.name for p in step_size.params} - own == {p.name for p in plot.params} - own
    r = CliRunner().invoke(main, ["plot", "step-size", "--sigma-max", "50", "--num-scales", "232", "--output", "/tmp/never.txt"])
    assert r.exit_code == 2 and ".png or .pdf" in r.stderr  # no --dim demanded: the step size does not depend on D


def test_library_errors_name_the_option_to_change():
    r = CliRunner().invoke(main, ["sigmas", "--sigma-max", "50", "--dim", "10", "--sigma-min", "60"])
    assert r.exit_code == 2
    assert "sigma_min (60) must be smaller than sigma_max (50)" in r.stderr and "(options --sigma-min, --sigma-max)" in r.stderr
    r = CliRunner().invoke(main, ["step-size", "--M", "5", "--sigma-max", "50", "--num-scales", "232", "--step-size", "1"])
    assert r.exit_code == 2 and "below sigma_min^2" in r.stderr and "(option --step-size)" in r.stderr
    r = CliRunner().invoke(main, ["sigmas", "--sigma-max", "50", "--dim", "10", "--device", "tpu"])
    assert r.exit_code == 0  # no data: T1 does not run, so the device is never asked for
    r = CliRunner().invoke(main, ["simulate", "step-size", "--sigma-max", "2", "--num-scales", "5", "--dim", "10", "--device", "tpu"])
    assert r.exit_code == 2 and "unknown device 'tpu'" in r.stderr and "(option --device)" in r.stderr


@pytest.mark.parametrize("old, new", [
    (["--toy", "gmm", "--toy-dim", "3"], "ncsn-tune simulate mixture --dim 3"),
    (["--sampler", "pc", "--chains", "3"], "ncsn-tune simulate sampler --sampler pc --chains 3"),
    (["--M", "5", "--sweep"], "ncsn-tune simulate step-size --M 5 --sweep"),
])
def test_simulate_is_three_commands_and_the_old_single_line_is_told_its_new_spelling(old, new):
    from cli_run import one_line_error, run

    one_line_error(run("simulate", *old), new)
    for experiment in ("step-size", "sampler", "mixture"):
        assert run("simulate", experiment, "--help").exit_code == 0


@pytest.mark.parametrize("group", ["plot", "simulate"])
def test_a_group_typed_alone_shows_its_commands(group):
    from cli_run import run

    r = run(group)
    assert r.exit_code == 2 and "Commands:" in r.stderr and "\n" in r.stderr.strip() and "Error" not in r.stderr
