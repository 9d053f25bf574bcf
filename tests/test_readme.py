"""The README's first-screen commands are the ones CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_setup_and_test_commands():
    block = ROOT.joinpath("README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    setup, main_job, tests, fast_tier = commands
    ci = [line.strip() for line in ROOT.joinpath(".ci/run").read_text().splitlines()]
    assert setup in ci and tests in ci and ci.index(setup) < ci.index(tests)
    assert any(line.startswith(".venv/bin/ruff check") for line in ci[ci.index(setup) : ci.index(tests)])
    assert main_job.split()[1:3] == ["pipeline", "configs/smollm2.yaml"]
    assert ROOT.joinpath(main_job.split()[2]).is_file()
    assert fast_tier == tests + ' -m "not slow"'
