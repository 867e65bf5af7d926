"""click 8.1 command groups loaded in pyhotd, edited while loaded: a command's body, a new
command, a new option; each run through click's own CliRunner in the daemon, state kept."""

APP = {
    "helpers.py": """\
def shout(text):
    return text.upper()
""",
    "cli.py": """\
import click

from helpers import shout

RUNS = {"count": 0}


@click.group()
def cli():
    RUNS["count"] += 1


@cli.command()
@click.argument("name")
def hello(name):
    click.echo(shout("hello " + name))
""",
}


def invoke(d, *args):
    """The output of `cli ARGS` run by click's CliRunner in the daemon (exit code 0)."""
    result = d.eval("(lambda r: (r.exit_code, r.output))(__import__('click.testing').testing"
                    ".CliRunner().invoke(__import__('cli').cli, %r))" % (list(args),))
    assert result[0] == 0, result
    return result[1]


def start(pyhotd):
    d = pyhotd(APP)
    d.exec("import cli")
    return d, d.subscriber()


def edit_ok(d, sub, rel, text):
    batch, reloads = sub.wait_batch(d.write(rel, text))
    assert batch["result"] == "ok", (batch, reloads)


def test_command_body_edit_and_state(pyhotd):
    d, sub = start(pyhotd)
    assert invoke(d, "hello", "ann") == "HELLO ANN\n"
    edit_ok(d, sub, "cli.py", APP["cli.py"].replace('"hello " + name', '"hi " + name'))
    assert invoke(d, "hello", "ann") == "HI ANN\n"
    assert d.eval("__import__('cli').RUNS['count']") == 2


def test_new_command_and_new_option(pyhotd):
    d, sub = start(pyhotd)
    edit_ok(d, sub, "cli.py", APP["cli.py"].replace(
        '@cli.command()\n@click.argument("name")\ndef hello(name):\n    click.echo(shout("hello " + name))',
        '@cli.command()\n@click.argument("name")\n@click.option("--times", default=1)\n'
        'def hello(name, times):\n    click.echo(shout("hello " + name) * times)') + """

@cli.command()
def bye():
    click.echo("bye")
""")
    assert invoke(d, "bye") == "bye\n"
    assert invoke(d, "hello", "--times", "2", "bo") == "HELLO BOHELLO BO\n"
    assert d.eval("sorted(__import__('cli').cli.commands)") == ["bye", "hello"]
