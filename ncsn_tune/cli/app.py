"""The ``ncsn-tune`` command group and its error handling.

Bad input ends with one line on stderr and exit status 2, never a traceback:
library errors (:class:`~ncsn_tune.errors.NcsnTuneError`) say what is wrong,
and the command adds which of its options set it (from the error's
``fields``). An operating-system error (a folder that cannot be written, a full
disk) is reported the same way, and so is a command that needs an optional package
(torch, for train, sample and evaluate) that is not installed: it says what to install.
"""

from __future__ import annotations

import errno
import sys

import click

from ..version import __version__
from ..errors import Interrupted, NcsnTuneError

#: Library names whose command-line option is not named after them.
OPTION_NAMES = {"schedule_file": "schedule", "rescale": "no_rescale", "ema": "no_ema", "config": "config_file"}


def option_flags(command: click.Command, fields: tuple[str, ...]) -> list[str]:
    """The command's options that set the library settings ``fields`` (e.g. sigma_min -> --sigma-min)."""
    flags = []
    for name in fields:
        for param in command.params:
            if isinstance(param, click.Option) and param.name in (name, OPTION_NAMES.get(name, name)):
                flag = max((o for o in param.opts if o.startswith("--")), key=len, default=param.opts[0])
                if flag not in flags:
                    flags.append(flag)
    return flags


class Command(click.Command):
    """A command whose library errors name the options to change."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NcsnTuneError as err:
            flags = option_flags(self, err.fields)
            if flags and not any(flag in str(err) for flag in flags):
                err.args = (f"{err} (option{'s' if len(flags) > 1 else ''} {', '.join(flags)})",)
            raise


class Group(click.Group):
    """The command group: every subcommand a :class:`Command`; errors end as one line and exit status 2."""

    command_class = Command

    def main(self, args=None, prog_name=None, **kwargs):  # noqa: D401
        as_json = "--json" in (sys.argv[1:] if args is None else list(args))

        def fail(prefix: str, message: str, status: int, exc: BaseException | None = None):
            """One line on stderr; with --json also one JSON document on stdout, so a script reading it finds why."""
            click.echo(f"{prefix}: {message}" if message else f"{prefix}.", err=True)
            if as_json:
                import json

                fields = list(getattr(exc, "fields", ()) or ())
                click.echo(json.dumps({"error": message or prefix.lower(), "exit_status": status, "kind": prefix.lower(), "fields": fields}))
            sys.exit(status)

        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            fail("Aborted", "", 130)
        except click.exceptions.NoArgsIsHelpError as exc:  # a group typed alone (plot, simulate): its help, as written
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message(), err=True)
            sys.exit(2)
        except click.ClickException as exc:
            fail("Error", one_line(exc.format_message()), 2, exc)
        except NcsnTuneError as exc:
            fail("Error", one_line(str(exc)), 2, exc)
        except OSError as exc:
            fail("Error", describe_os_error(exc), 2, exc)
        except Interrupted as exc:
            fail("Stopped", str(exc), 128 + exc.signum, exc)
        except KeyboardInterrupt:
            fail("Interrupted", "", 130)
        except ModuleNotFoundError as exc:
            extra = OPTIONAL_PACKAGES.get((exc.name or "").split(".")[0])
            if extra is None:
                raise
            fail("Error", missing_package(exc.name.split(".")[0], extra), 2, exc)
        except RecursionError:  # a file nested beyond any configuration (e.g. a YAML bomb of nested lists)
            fail("Error", "a file given is nested too deeply to be a configuration or data file", 2)
        sys.exit(rv if isinstance(rv, int) else 0)


Group.group_class = Group


#: Packages that only some commands need, and the extra of ncsn-tune that installs each.
OPTIONAL_PACKAGES = {"torch": "train", "diffusers": "interop", "ml_collections": "interop"}


def missing_package(package: str, extra: str) -> str:
    """What to install when a command needs ``package`` (from the optional dependencies ``extra``)."""
    cpu = " (on a machine without a GPU, pip install torch==2.13.0 first: the CPU build)" if package == "torch" else ""
    return (f"this command needs {package}, which is not installed: pip install 'ncsn-tune[{extra}]', or pip install -e '.[{extra}]' "
            f"from a checkout{cpu}")


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def describe_os_error(exc: OSError) -> str:
    """An operating-system error as what failed, where, and what to do."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return (f"the disk is full{where}; free some space and run the command again (files written before are intact: "
                "every write is atomic)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied{where}; choose a folder you can write to"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"{exc.strerror.lower() if exc.strerror else 'cannot create'}{where}: a file stands where a folder is needed"
    return f"{exc.strerror or exc}{where}"


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="ncsn-tune")
def main() -> None:
    """Noise scales, Langevin step sizes and NCSNv2 training for score-based models, from theory (Song & Ermon 2020).

    \b
    ncsn-tune sigmas --data cifar10     Techniques 1-2: sigma_max, gamma, L, the schedule
    ncsn-tune step-size --M 5           Technique 4: the Langevin step size eps for M steps
    ncsn-tune train                     NCSNv2 with the saved schedule and step size
    ncsn-tune sample --checkpoint RUN   Annealed Langevin samples from a trained run
    """
