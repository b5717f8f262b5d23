"""Outputs people can share: files written with the user's umask, a second run
into the same folder that never silently overwrites or mixes with another
(file names carry the target; a clash is refused, naming the record and what
differs, unless --overwrite / overwrite=True), results that print in a few
lines, and CLI summaries that carry each method's numbers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
from PIL import Image

import cnnviz_core
from cnnviz_core import InputError, ModelEntry, hookimpl
from cnnviz_core.cli import main
from cnnviz_core.registry import get_registry

from conftest import small_torch_adapter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_MODEL = "outputs_small_convnet"  # SmallConvNet at 32 px, registered for the CLI by a fixture


def snapshot(folder) -> dict[str, bytes]:
    """Every file of a folder with its bytes: "nothing changed" is checked on content."""
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def records(folder) -> dict[str, dict]:
    return {n: json.loads(open(os.path.join(folder, n)).read()) for n in os.listdir(folder) if n.endswith(".json")}


def assert_whole_runs(folder) -> None:
    """Every file belongs to exactly one record, and every file a record lists exists."""
    owners: dict[str, str] = {}
    for name, record in records(folder).items():
        for file in record["files"]:
            assert os.path.exists(os.path.join(folder, file)), (name, file)
            assert file not in owners, f"{file} is listed by {owners[file]} and {name}"
            owners[file] = name
    assert set(os.listdir(folder)) == set(owners) | set(records(folder))


# -- the umask -----------------------------------------------------------------------------------------
UMASK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.umask(0o022)  # before cnnviz is imported, as a shell's umask would be
    import numpy as np
    import cnnviz_core
    from cnnviz_core import atomic
    sys.path.insert(0, os.path.join(sys.argv[2], "tests"))
    from conftest import small_torch_adapter

    model = small_torch_adapter()
    pixels = np.random.default_rng(0).random((1, 3, 32, 32)).astype(np.float32)
    modes = {}
    for umask in ("022", "077"):  # the second one set after import: the umask in force when writing counts
        os.umask(int(umask, 8))
        out = os.path.join(sys.argv[1], umask)
        written = cnnviz_core.run("saliency", model, pixels * 4 - 2).save(os.path.join(out, "attribution"))
        written += cnnviz_core.run("adversarial", model, pixels, attack="fgsm").save(os.path.join(out, "synthesis"))
        written += cnnviz_core.run("filters", model).save(os.path.join(out, "analysis"))
        atomic.publish_together([(os.path.join(out, "pair", "a.bin"), lambda p: open(p, "wb").write(b"a")),
                                 (os.path.join(out, "pair", "b.bin"), lambda p: open(p, "wb").write(b"b"))])
        written += [os.path.join(out, "pair", "a.bin"), os.path.join(out, "pair", "b.bin")]
        modes[umask] = {p: oct(os.stat(p).st_mode & 0o777) for p in written}
    print(json.dumps({"umask_after": oct(os.umask(0)), "modes": modes}))
""")


def test_written_files_take_the_users_umask(tmp_path):
    completed = subprocess.run([sys.executable, "-c", UMASK_SCRIPT, str(tmp_path), ROOT],
                               capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr
    facts = json.loads(completed.stdout.strip().splitlines()[-1])
    for umask, mode in (("022", 0o644), ("077", 0o600)):
        modes = facts["modes"][umask]
        assert {".png", ".npy", ".json", ".bin"} <= {os.path.splitext(p)[1] for p in modes}
        assert set(modes.values()) == {oct(mode)}, modes
    assert facts["umask_after"] == oct(0o077)  # reading the umask left it as it was


def test_the_umask_read_by_setting_it_agrees_with_proc_and_is_put_back():
    from cnnviz_core import atomic

    if atomic._umask_from_proc() is None:
        pytest.skip("no Umask line in /proc/self/status here")
    before = atomic._umask_from_proc()
    assert atomic._umask_by_setting() == before  # the fallback where /proc cannot tell
    assert atomic._umask_from_proc() == before and atomic.file_mode() == 0o666 & ~before


# -- names and clashes through the API ---------------------------------------------------------------------
@pytest.fixture
def model():
    return small_torch_adapter()


@pytest.fixture
def pixels():
    return np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)


def test_file_names_carry_the_target_so_runs_on_other_targets_coexist(model, pixels, tmp_path):
    top1 = cnnviz_core.run("gradcam", model, pixels)
    aimed = cnnviz_core.run("gradcam", model, pixels, target=3)
    top1.save(tmp_path)
    aimed.save(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"input0.gradcam.overlay.png", "input0.gradcam.class3.overlay.png", "gradcam.json", "gradcam.class3.json"} <= files
    np.testing.assert_array_equal(np.load(tmp_path / "gradcam.class3.maps.npy"), aimed.maps)
    np.testing.assert_array_equal(np.load(tmp_path / "input1.gradcam.map.npy"), top1.maps[1])
    assert records(tmp_path)["gradcam.class3.json"]["targets"] == ["3", "3"]
    assert_whole_runs(tmp_path)


def test_a_run_with_other_parameters_is_refused_then_replaced_with_overwrite(model, pixels, tmp_path):
    cnnviz_core.run("gradcam", model, pixels).save(tmp_path)
    before = snapshot(tmp_path)
    other = cnnviz_core.run("gradcam", model, pixels, score="prob")
    with pytest.raises(InputError) as refused:
        other.save(tmp_path)
    message = str(refused.value)
    assert "gradcam.json" in message and "score 'logit' -> 'prob'" in message and "--overwrite" in message
    assert snapshot(tmp_path) == before  # nothing written, not even a temporary
    other.save(tmp_path, overwrite=True)
    assert records(tmp_path)["gradcam.json"]["params"]["score"] == "prob"
    np.testing.assert_array_equal(np.load(tmp_path / "input0.gradcam.map.npy"), other.maps[0])
    assert_whole_runs(tmp_path)


def test_the_same_run_again_rewrites_its_files(model, pixels, tmp_path):
    cnnviz_core.run("gradcam", model, pixels).save(tmp_path)
    again = cnnviz_core.run("gradcam", model, pixels, batch_size=1)  # the batch size splits the work, it is the same run
    again.save(tmp_path)
    assert sorted(records(tmp_path)) == ["gradcam.json"]
    assert_whole_runs(tmp_path)


def test_overwriting_a_run_on_other_inputs_leaves_no_file_of_it(model, pixels, tmp_path):
    cnnviz_core.run("gradcam", model, pixels).save(tmp_path)
    one = cnnviz_core.run("gradcam", model, pixels[1:])
    with pytest.raises(InputError, match=r"inputs 'input0', 'input1' -> 'input0'"):
        one.save(tmp_path)
    one.save(tmp_path, overwrite=True)
    assert not [f for f in os.listdir(tmp_path) if f.startswith("input1.")]
    assert records(tmp_path)["gradcam.json"]["inputs"] == ["input0"]
    assert_whole_runs(tmp_path)


def test_synthesis_and_analysis_clashes_are_refused_too(model, pixels, tmp_path):
    start = (pixels[:1] - pixels.min()) / np.ptp(pixels)
    cnnviz_core.run("adversarial", model, start, attack="fgsm").save(tmp_path / "s")
    before = snapshot(tmp_path / "s")
    with pytest.raises(InputError, match=r"adversarial\.json.*epsilon"):
        cnnviz_core.run("adversarial", model, start, attack="fgsm", epsilon=0.1).save(tmp_path / "s")
    assert snapshot(tmp_path / "s") == before
    cnnviz_core.run("adversarial", model, start, attack="fgsm", target=2).save(tmp_path / "s")  # another target: its own files
    assert {"adversarial.json", "adversarial.class2.json", "input0.adversarial.class2.png"} <= set(os.listdir(tmp_path / "s"))

    cnnviz_core.run("filters", model).save(tmp_path / "a")
    before = snapshot(tmp_path / "a")
    with pytest.raises(InputError, match=r"filters\.json.*normalize 'minmax' -> 'symmetric'"):
        cnnviz_core.run("filters", model, normalize="symmetric").save(tmp_path / "a")
    assert snapshot(tmp_path / "a") == before


# -- the CLI ---------------------------------------------------------------------------------------
@pytest.fixture
def cli_model():
    """SmallConvNet under a name the CLI can load."""

    @hookimpl
    def cnnviz_models():
        return [ModelEntry(SMALL_MODEL, lambda **options: small_torch_adapter(), "SmallConvNet, 32 px (tests)")]

    registry = get_registry()
    registry.register(types.SimpleNamespace(cnnviz_models=cnnviz_models), name="outputs-test-model")
    yield SMALL_MODEL
    registry.unregister("outputs-test-model")


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_refuses_a_clash_before_any_work_and_overwrites_when_asked(capsys, small_onnx_path, photos, tmp_path):
    out = tmp_path / "out"
    base = ["run", "occlusion", "--model", small_onnx_path, "--image", photos["chelsea"], "--out", out, "--quiet"]
    assert run_cli(capsys, *base, "--window", "8", "--stride", "8")[0] == 0
    before = snapshot(out)
    code, _, stderr = run_cli(capsys, *base, "--window", "16", "--stride", "8")
    assert code == 2 and stderr.count("\n") == 1 and "occlusion.json" in stderr and "window 8 -> 16" in stderr
    assert snapshot(out) == before
    code, stdout, _ = run_cli(capsys, *base, "--window", "16", "--stride", "8", "--overwrite")
    assert code == 0 and "chelsea: explained" in stdout
    assert records(out)["occlusion.json"]["params"]["window"] == 16
    code, _, _ = run_cli(capsys, *base, "--window", "16", "--stride", "8", "--target", "1")
    assert code == 0 and "chelsea.occlusion.class1.overlay.png" in os.listdir(out)
    assert_whole_runs(out)


def _line(stdout: str, name: str) -> str:
    return next(line for line in stdout.splitlines() if line.strip().startswith((f"{name}:", f"{name}, ")))


def test_cli_summary_of_an_attack_has_classes_confidences_and_norms(capsys, cli_model, photos, tmp_path):
    code, stdout, stderr = run_cli(capsys, "run", "adversarial", "--model", cli_model, "--image", photos["chelsea"],
                                   "--target", "1", "--attack", "fgsm", "--out", tmp_path, "--quiet")
    assert code == 0, stderr
    item = records(tmp_path)["adversarial.class1.json"]["items"][0]
    line = _line(stdout, "chelsea")
    assert f"{item['class_before']} (p={item['confidence_before']:.3f}) -> {item['class_after']} (p={item['confidence_after']:.3f})" in line
    assert f"L2 {item['l2']:.4g}" in line and f"Linf {item['linf']:.4g}" in line


def test_cli_summary_of_fooling_images_has_the_confidence_reached(capsys, small_onnx_path, tmp_path):
    code, stdout, stderr = run_cli(capsys, "run", "fooling_images", "--model", small_onnx_path, "--target", "1",
                                   "--generations", "3", "--population", "8", "--out", tmp_path, "--quiet")
    assert code == 0, stderr
    item = records(tmp_path)["fooling_images.json"]["items"][0]
    line = _line(stdout, "class1")
    assert f"top-1 {item['class']} (p={item['probability']:.3f})" in line and f"target confidence {item['confidence']:.3f}" in line
    # another setting is refused before the evolution starts: not even the best-so-far image is rewritten
    before = snapshot(tmp_path)
    code, _, stderr = run_cli(capsys, "run", "fooling_images", "--model", small_onnx_path, "--target", "1",
                              "--generations", "4", "--population", "8", "--out", tmp_path, "--quiet")
    assert code == 2 and "fooling_images.json" in stderr and "generations 3 -> 4" in stderr
    assert snapshot(tmp_path) == before and "class1.fooling_images.best.png" in before


@pytest.mark.parametrize("method, flags", [
    ("class_model", ["--target", "2", "--steps", "3"]),
    ("deepdream", ["--steps", "2", "--octaves", "1"]),
    ("inversion", ["--steps", "3"]),
    ("style_transfer", ["--style", "skimage:immunohistochemistry", "--steps", "2", "--optimizer", "adam"]),
])
def test_cli_summary_of_optimizations_has_the_objective_start_to_end(capsys, cli_model, photos, tmp_path, method, flags):
    image = [] if method == "class_model" else ["--image", photos["coffee"]]
    code, stdout, stderr = run_cli(capsys, "run", method, "--model", cli_model, *image, *flags, "--out", tmp_path, "--quiet")
    assert code == 0, stderr
    item = records(tmp_path)[f"{method}.json"]["items"][0]
    end = item.get("end", np.load(tmp_path / f"{method}.history.objective.npy")[0][-1])  # the method's own end value where it keeps one
    match = re.search(r"objective (\S+) -> (\S+) \((higher|lower) is better\)", _line(stdout, item["name"]))
    assert match, stdout
    assert float(match[2]) == pytest.approx(float(f"{end:.4g}"))
    assert match[3] == ("lower" if method in ("inversion", "style_transfer") else "higher")


@pytest.fixture
def labelled_folder(tmp_path, photos):
    """Two classes of 8 crops each, from two photographs; the folders are
    named by the model's class numbers, so pruning measures accuracy."""
    rng = np.random.default_rng(0)
    for label, photo in enumerate(("chelsea", "coffee")):
        picture = np.asarray(Image.open(photos[photo]).convert("RGB"))
        os.makedirs(tmp_path / "data" / str(label))
        for i in range(8):
            y, x = rng.integers(0, picture.shape[0] - 128), rng.integers(0, picture.shape[1] - 128)
            Image.fromarray(picture[y:y + 128, x:x + 128]).save(tmp_path / "data" / str(label) / f"{photo}{i}.png")
    return tmp_path / "data"


def test_cli_summary_of_analyses_has_their_numbers(capsys, small_onnx_path, labelled_folder, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(capsys, "run", "tsne", "pruning", "top_patches", "filters", "--model", small_onnx_path,
                                   "--dataset", labelled_folder, "--perplexity", "4", "--max-iter", "250",
                                   "--sparsities", "0,50,90", "--top-k", "3", "--out", out, "--quiet")
    assert code == 0, stderr
    saved = records(out)
    tsne = saved["tsne.json"]["facts"]
    assert f"trustworthiness {tsne['trustworthiness']:.4g}, kNN accuracy {tsne['knn_accuracy']:.4g}" in stdout
    levels = {int(level["sparsity"]): level["accuracy"] for level in saved["pruning.json"]["facts"]["sparsities"]}
    assert f"accuracy {levels[50]:.4g} at 50 %, {levels[90]:.4g} at 90 % sparsity" in stdout
    patches = saved["top_patches.json"]["facts"]
    assert f"layer {patches['layer']}, {len(patches['channels'])} channels, top 3 patches each" in stdout
    filters = saved["filters.json"]["facts"]
    assert f"layer {filters['layer']}, {filters['filters_shown']} filters shown" in stdout
    assert "over 16 images" in stdout
    before = snapshot(out)
    code, _, stderr = run_cli(capsys, "run", "filters", "--model", small_onnx_path, "--normalize", "symmetric", "--out", out)
    assert code == 2 and "filters.json" in stderr and "normalize 'minmax' -> 'symmetric'" in stderr
    assert snapshot(out) == before


# -- results in a few lines ----------------------------------------------------------------------------
def test_results_print_in_a_few_lines(model, tmp_path):
    many = np.random.default_rng(1).normal(size=(12, 3, 32, 32)).astype(np.float32)
    attribution = cnnviz_core.run("gradcam", model, many)
    synthesis = cnnviz_core.run("adversarial", model, np.clip(many * 0.2 + 0.5, 0, 1), attack="fgsm")
    dataset = [(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8), i % 2) for i in range(12)]
    analysis = cnnviz_core.run("tsne", model, dataset, perplexity=3.0, max_iter=250)
    for result in (attribution, synthesis, analysis):
        text = repr(result)
        assert len(text) < 600, text
        assert result.method in text and "not saved" in text
        assert len(text.splitlines()) <= 8
    assert "input0: explained" in repr(attribution) and "and 9 more" in repr(attribution)
    assert "trustworthiness" in repr(analysis)
    attribution.save(tmp_path)
    assert f"saved: {tmp_path / 'gradcam.json'}" in repr(attribution)
