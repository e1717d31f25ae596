"""Every bad-input error is a UserError, which `nanoseek` turns into one line and exit status 2."""

import importlib
import pkgutil

import nanoseek
from nanoseek.cli import main
from nanoseek.errors import UserError

# errors that are not about user input: the HTTP envelope the server answers with
NOT_USER_INPUT = {"APIError"}


def _error_classes():
    for info in pkgutil.walk_packages(nanoseek.__path__, "nanoseek."):
        if info.name.endswith("__main__"):  # importing it runs the command line
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == info.name
                    and name not in NOT_USER_INPUT):
                yield f"{info.name}.{name}", obj


def test_every_module_error_class_derives_from_user_error():
    found = dict(_error_classes())
    assert len(found) >= 6  # config, checkpoint, data, task, store, train config at least
    assert {k: v for k, v in found.items() if not issubclass(v, UserError)} == {}


def test_the_command_line_prints_a_user_error_as_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "no-such-config.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nanoseek: error: ") and err.count("\n") == 1 and "Traceback" not in err
