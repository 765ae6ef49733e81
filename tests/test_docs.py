"""The docs run as tests: every shell block in README.md and docs/*.md is run by a named test (with tiny presets,
against real local services) or marked as needing real cloud resources (`tests/doc_blocks.py`), and the
README's command synopsis matches the parsers."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shlex

import pytest

from tests.doc_blocks import REPO, all_shell_blocks, doc_block, run_block, venv_env


def test_every_shell_block_is_run_by_a_test_or_marked_cloud():
    blocks = all_shell_blocks()
    assert len(blocks) >= 20  # README, cluster.md and magvit.md at least: the parser found them
    unmarked = [f"{b.path}:{b.line}" for b in blocks if not (b.test or b.is_cloud)]
    assert not unmarked, (
        f"shell blocks with no `<!-- doc-test: tests/x.py::test_y -->` or `cloud (why)` marker: {unmarked}"
    )
    for block in blocks:
        if block.is_cloud:
            assert re.match(r"cloud \(.+\)", block.marker), f"{block.path}:{block.line}: say why: cloud (...)"
            continue
        file, _, name = block.test.partition("::")
        source = (REPO / file).read_text()
        assert re.search(rf"^def {name}\(", source, re.M), f"{block.path}:{block.line}: no test {block.test}"
        # the test reads the block from the doc (so the doc cannot drift from what is tested)
        assert f'doc_block("{block.path}", "{block.test}")' in source, (
            f"{block.test} does not run {block.path}"
        )


def option_strings(module_name: str) -> set[str]:
    parser = argparse.ArgumentParser()
    importlib.import_module(module_name).add_arguments(parser)
    return {s for action in parser._actions for s in action.option_strings}


def test_readme_synopsis_names_only_real_commands_and_options():
    """The README's command list (a synopsis, not a script: `[--x N]` marks options) against the parsers."""
    from jobs.cli import SUBCOMMANDS

    readme = (REPO / "README.md").read_text()
    synopsis = readme.split("```\nphenaki synth")[1].split("```")[0]
    lines = ["phenaki synth" + synopsis.splitlines()[0], *synopsis.splitlines()[1:]]
    seen = set()
    for line in filter(None, (line.split("#")[0].strip() for line in lines)):
        words = line.split()
        assert words[0] == "phenaki" and words[1] in SUBCOMMANDS, line
        seen.add(words[1])
        options = option_strings(SUBCOMMANDS[words[1]][0])
        for option in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", line):
            assert option in options, (
                f"README: `{line}` names {option}, which `phenaki {words[1]}` does not take"
            )
    assert seen == set(SUBCOMMANDS), f"README synopsis leaves out {set(SUBCOMMANDS) - seen}"


@pytest.fixture(scope="module")
def magvit_recipe(tmp_path_factory):
    """docs/magvit.md "From sources to video", as written, with a tiny preset (`magvit-commit-debug`, a few steps
    per stage) in place of `magvit-demo` and 12 videos in place of 400; (working dir, the block's output)."""
    cwd = tmp_path_factory.mktemp("magvit-recipe")
    block = doc_block("docs/magvit.md", "tests/test_docs.py::test_magvit_recipe")
    config = cwd / "tiny.yaml"
    # fidelity_repeats 0: the 72-clip reading is the block's own `phenaki eval --tokenizer`, not a second one
    # inside train-tokenizer (tests/test_train_jobs.py covers that one)
    config.write_text("inherit: magvit-commit-debug\ntokenizer_train: {steps: 6, eval_clips: 2, fidelity_repeats: 0}\n"
                      "transformer_train: {steps: 6}\n")  # fmt: skip
    proc = run_block(block, {"--config magvit-demo": f"--config {config}", "--videos 400": "--videos 12"},
                     cwd=cwd, env=venv_env(OMP_WAIT_POLICY="PASSIVE"), timeout=900)  # fmt: skip
    return cwd, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.ray
def test_magvit_recipe(magvit_recipe):
    """Sources -> 16-frame clip shards -> 3D-VQ (its reconstructions read by the detector) -> a token cache with
    COMMIT's condition tokens -> COMMIT -> the ten tasks as files, and each task's detector figures and PSNR /
    SSIM against the clips it was given."""
    from pipelines.media import decode_video

    cwd, log = magvit_recipe
    out = cwd / "out" / "magvit"
    manifest = json.loads((out / "clips" / "manifest.json").read_text())
    assert manifest["counts"]["video"] == 12 and manifest["config"]["num_frames"] == 16
    tokens = json.loads((out / "tokens" / "manifest.json").read_text())
    assert tokens["tokenizer"]["kind"] == "magvit_vq" and len(tokens["commit"]["tasks"]) == 9
    assert json.loads((out / "tokenizer" / "eval.json").read_text())["clips"] == 2  # eval_clips held out
    # `phenaki eval --tokenizer` read 72 fresh clips' reconstructions with the detector
    assert re.search(r"object fidelity of out/magvit/tokenizer: one clean object \d+/72", log)
    assert '"clips": 72' in log
    assert re.search(r"^reconstructions: PSNR \d+\.\d+ dB · SSIM", log, re.M)  # and the paired metrics
    for task in ("fp", "fi", "opc", "opv", "oph", "opd", "ipc", "ipd", "cg", "cfp"):
        assert decode_video(str(out / "tasks" / f"{task}.mp4")).frames.shape == (16, 32, 32, 3), task
        line = re.search(rf"^ *{task}: one clean object \d+/72, colour.*$", log, re.M)
        assert line, task  # `phenaki eval --checkpoint`: the detector per task, then its paired metrics
        if task != "cg":  # cg is given no pixels, so no clip is owed PSNR / SSIM
            assert re.search(r"PSNR \d+\.\d+ dB · SSIM -?\d\.\d{4}", line.group(0)), line.group(0)


@pytest.mark.slow
@pytest.mark.ray
def test_magvit_recipe_serve(magvit_recipe):
    """docs/magvit.md's serving block on the recipe's checkpoint: the server starts, the health check passes,
    fp from a base64 video and cg from a class name come back as videos, and `kill %1` stops it."""
    from pipelines.media import decode_video
    from tests.serve_helpers import free_port

    cwd, _ = magvit_recipe
    port = free_port()
    block = doc_block("docs/magvit.md", "tests/test_docs.py::test_magvit_recipe_serve")
    proc = run_block(
        block, {"8000": str(port)}, cwd=cwd, env=venv_env(OMP_WAIT_POLICY="PASSIVE"), timeout=300
    )
    assert "x-phenaki-task: fp" in proc.stdout.lower()  # the headers of the fp answer (-D -)
    for name in ("fp.mp4", "cg.mp4"):
        assert decode_video(str(cwd / name)).frames.shape == (16, 32, 32, 3), name


def test_shell_blocks_parse_as_bash():
    """Every block, cloud ones too, is valid bash (`bash -n`): a typo in a command a user copies fails here."""
    import subprocess

    for block in all_shell_blocks():
        proc = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True)
        assert proc.returncode == 0, f"{block.path}:{block.line}: {proc.stderr}"
        for line in block.text.splitlines():
            if line.strip().startswith(("phenaki ", "ray job submit")) and not line.rstrip().endswith("\\"):
                shlex.split(line.split(" #")[0])  # balanced quotes on one-line commands
