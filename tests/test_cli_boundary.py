"""The CLI's boundary: where it writes is checked before any work, OS errors
become one line, warnings are one line each, progress never floods a log
with carriage returns, and broken or clashing plugins break only themselves.
The last three run the installed `cnnviz` script in a subprocess."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from cnnviz_core import cli
from cnnviz_core.registry import DISABLE_AUTOLOAD_ENV

from conftest import output_files
from plugin_dists import method_module, write_distribution, write_plugin_site

SCRIPT = os.path.join(os.path.dirname(sys.executable), "cnnviz")


def unwritable_folder(tmp_path):
    """A folder the run cannot write in. Root ignores permission bits, so as
    root it is a path under /sys (sysfs refuses new files from anyone)."""
    if os.geteuid() == 0:
        return "/sys/cnnviz-out"
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    return str(folder / "out")


@pytest.fixture
def no_model_load(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(cli, "_load", never)


@pytest.mark.parametrize("case", ["existing file", "under a file", "unwritable folder"])
def test_bad_out_exits_2_before_any_work(capsys, tmp_path, photos, no_model_load, case):
    a_file = tmp_path / "taken.txt"
    a_file.write_text("not a folder")
    out, expected = {
        "existing file": (str(a_file), "is a file, not a folder"),
        "under a file": (str(a_file / "sub" / "out"), f"lies under {a_file}, which is a file"),
        "unwritable folder": (unwritable_folder(tmp_path), "cannot write in"),
    }[case]
    before = sorted(os.listdir(tmp_path))
    code = cli.main(["run", "gradcam", "--model", "efficientnet_lite0", "--image", photos["chelsea"], "--out", out])
    stderr = capsys.readouterr().err
    assert code == 2
    assert stderr.startswith("cnnviz: error: --out ") and expected in stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert sorted(os.listdir(tmp_path)) == before  # nothing created, not even the probe
    assert a_file.read_text() == "not a folder"
    if case == "unwritable folder" and not out.startswith("/sys"):
        assert os.listdir(os.path.dirname(out)) == []


def test_export_onnx_checks_its_output_first(capsys, tmp_path, no_model_load):
    a_file = tmp_path / "taken.txt"
    a_file.write_text("x")
    code = cli.main(["export-onnx", "efficientnet_lite0", str(a_file / "model.onnx")])
    assert code == 2 and "which is a file" in capsys.readouterr().err
    code = cli.main(["demo", "--out", str(a_file)])
    assert code == 2 and "is a file" in capsys.readouterr().err


def test_os_error_while_writing_is_one_line(capsys, tmp_path, photos, monkeypatch):
    """A full disk surfaces when the data reaches it (fsync): one line, exit 2,
    and no half-written file left behind."""

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    out = tmp_path / "out"
    code = cli.main(["run", "gradcam", "--model", "efficientnet_lite0", "--image", photos["chelsea"], "--out", str(out), "--quiet"])
    stderr = capsys.readouterr().err
    assert code == 2
    assert stderr == f"cnnviz: error: {os.strerror(errno.ENOSPC)}\n"
    assert [f for f in output_files(out) if f.startswith(".tmp-")] == []


# -- subprocesses of the installed script --------------------------------------------
def run_script(site, *args, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in (DISABLE_AUTOLOAD_ENV, "CNNVIZ_PROGRESS", "CNNVIZ_DISABLE_PLUGINS")}
    environment["PYTHONPATH"] = str(site)
    environment.update(env)
    return subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=300, env=environment)


NOISY_METHOD = textwrap.dedent(
    '''
    import threading
    import time
    import warnings

    import numpy as np
    from cnnviz_core import AttributionMethod, MethodWarning, hookimpl
    from cnnviz_core.method import Attribution


    class Noisy(AttributionMethod):
        """Warns from the main thread and from a worker thread; slow enough to show progress."""

        name = "noisy"
        batch_hint = 1

        def attribute(self, inputs, targets):
            warnings.warn("noisy: from the main thread,\\n  on two lines", MethodWarning)
            worker = threading.Thread(target=lambda: warnings.warn("noisy: from a worker thread", MethodWarning))
            worker.start()
            worker.join()
            warnings.warn("a plain UserWarning")
            time.sleep(0.8)
            b, _, h, w = inputs.shape
            return Attribution(np.ones((b, h, w), np.float32), np.zeros(b, np.int64), np.zeros(b, np.float32))


    @hookimpl
    def cnnviz_methods():
        return [Noisy]
    '''
)


@pytest.fixture(scope="module")
def noisy_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("noisy_site")
    write_distribution(site, "cnnviz-noisy", {"cnnviz_test_noisy": NOISY_METHOD}, {"cnnviz_test_noisy": "cnnviz_test_noisy"})
    return site


def test_warnings_and_progress_in_a_log(noisy_site, photos, tmp_path):
    """stderr is a pipe here, as in CI: each warning is one `cnnviz: warning:`
    line (worker threads too), and progress is plain lines, no carriage returns."""
    images = [photos["chelsea"], photos["coffee"], photos["astronaut"], photos["cat_on_grey"]]
    completed = run_script(noisy_site, "run", "noisy", "--model", "efficientnet_lite0", "--image", *images, "--out", tmp_path / "out")
    assert completed.returncode == 0, completed.stderr
    lines = completed.stderr.splitlines()
    warnings_shown = [line for line in lines if line.startswith("cnnviz: warning: ")]
    assert warnings_shown == ["cnnviz: warning: noisy: from the main thread, on two lines",
                              "cnnviz: warning: noisy: from a worker thread",
                              "cnnviz: warning: a plain UserWarning"]  # each once: Python's default filter
    assert "warnings.warn" not in completed.stderr and "MethodWarning" not in completed.stderr
    assert "\r" not in completed.stderr
    progress = [line for line in lines if line.startswith("noisy: ") and "%" in line]
    assert progress and progress[-1].startswith("noisy: 100% (4/4)") and progress[-1].endswith("; done")
    assert set(lines) == set(warnings_shown) | set(progress)


@pytest.fixture
def registry_from(monkeypatch):
    """Make the process-wide registry read the entry points of a plugin site
    (real dist-info folders on sys.path), as the installed script would."""
    from cnnviz_core.registry import Registry, reset_registry

    added = []

    def load(site):
        monkeypatch.syspath_prepend(str(site))
        monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
        monkeypatch.delenv("CNNVIZ_DISABLE_PLUGINS", raising=False)
        before = set(sys.modules)
        registry = Registry()
        added.extend(m for m in set(sys.modules) - before if m.startswith("cnnviz_test_"))
        reset_registry(registry)
        return registry

    yield load
    reset_registry(None)
    for module in added:
        sys.modules.pop(module, None)


def test_quiet_silences_progress(noisy_site, registry_from, photos, tmp_path, capfd, monkeypatch):
    registry_from(noisy_site)
    monkeypatch.setenv("CNNVIZ_PROGRESS", "1")  # --quiet wins over the environment
    code = cli.main(["run", "noisy", "--model", "efficientnet_lite0", "--image", *[photos["chelsea"]] * 4,
                     "--out", str(tmp_path / "out"), "--quiet"])
    stderr = capfd.readouterr().err
    assert code == 0, stderr
    assert stderr and all(line.startswith("cnnviz: warning: ") for line in stderr.splitlines())


@pytest.fixture(scope="module")
def clash_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("clash_site")
    write_plugin_site(site)
    return site


BROKEN = ("wrong_signature", "misspelled_hook", "raising_hook", "invalid_class", "import_error")


def assert_failures_listed(stdout: str) -> None:
    lines = stdout.splitlines()
    for module in BROKEN:
        entry = f"cnnviz_test_{module}"
        distribution = "cnnviz-broken-" + module.replace("_", "-")
        assert any(line.startswith(f"FAILED {entry} [{distribution}] {entry}: ") for line in lines), (entry, lines)
    assert any(line.startswith("CLASH method name 'twin_method'") and "cnnviz-clash-a" in line and "cnnviz-clash-b" in line
               for line in lines)
    assert any(line.startswith("gradcam ") and "[cnnviz]" in line for line in lines)


def test_plugins_command_reports_broken_plugins_in_a_subprocess(clash_site):
    listed = run_script(clash_site, "plugins")
    assert listed.returncode == 0 and listed.stderr == ""
    assert_failures_listed(listed.stdout)
    assert "Traceback" not in listed.stdout


def test_broken_and_clashing_plugins_break_only_themselves(clash_site, registry_from, capsys, photos, tmp_path):
    registry_from(clash_site)
    assert cli.main(["plugins"]) == 0
    assert_failures_listed(capsys.readouterr().out)

    assert cli.main(["methods"]) == 0
    captured = capsys.readouterr()
    names = [line.split()[0] for line in captured.out.splitlines()]
    assert {"gradcam", "occlusion", "own_method_a", "own_method_b"} <= set(names)
    assert any(line.startswith("twin_method") and "CLASH" in line for line in captured.out.splitlines())
    assert "failed to load" in captured.err

    code = cli.main(["run", "twin_method", "--model", "efficientnet_lite0", "--image", photos["chelsea"],
                     "--out", str(tmp_path / "never")])
    stderr = capsys.readouterr().err
    assert code == 2
    assert stderr.count("\n") == 1 and "cnnviz_test_clash_a" in stderr and "cnnviz_test_clash_b" in stderr
    assert not (tmp_path / "never").exists()

    code = cli.main(["run", "own_method_a", "--model", "efficientnet_lite0", "--image", photos["chelsea"],
                     "--out", str(tmp_path / "fine"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "fine" / "own_method_a.json").exists()


def test_python_api_is_silent_by_default(capfd, photos, monkeypatch):
    """No progress on stderr from a library call unless asked for."""
    import types

    import cnnviz_core
    from cnnviz_core.registry import Registry, reset_registry

    namespace: dict = {}
    exec(compile(NOISY_METHOD.replace("time.sleep(0.8)", "time.sleep(0.7)"), "noisy_inline", "exec"), namespace)
    registry = Registry()
    registry.register(types.SimpleNamespace(cnnviz_methods=namespace["cnnviz_methods"]), name="noisy-inline")
    monkeypatch.delenv("CNNVIZ_PROGRESS", raising=False)
    reset_registry(registry)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cnnviz_core.load_model("efficientnet_lite0")
            capfd.readouterr()
            cnnviz_core.run("noisy", model, [photos["chelsea"]] * 4, device="cpu")
            assert capfd.readouterr().err == ""  # 2.8 s of work, past the bar's 2 s delay
            cnnviz_core.run("noisy", model, [photos["chelsea"]] * 4, device="cpu", progress=True)
            assert "noisy: 100% (4/4)" in capfd.readouterr().err
            monkeypatch.setenv("CNNVIZ_PROGRESS", "1")
            cnnviz_core.run("noisy", model, [photos["chelsea"]] * 4, device="cpu")
            assert "noisy: 100% (4/4)" in capfd.readouterr().err
    finally:
        reset_registry(None)
