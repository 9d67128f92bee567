"""The README's Python example (the planner in your own control loop) runs as printed."""
import re
from pathlib import Path

import envs

ROOT = Path(__file__).resolve().parents[1]


def readme_python_block(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    assert heading in text, f"README.md lost its {heading!r} section"
    return re.search(r"```python\n(.*?)```", text.split(heading, 1)[1], re.S).group(1)


def test_control_loop_example_plans_toward_the_goal(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the example loads checkpoints/reach-default relative to the repo
    namespace: dict = {}
    exec(compile(readme_python_block("### The planner in your own control loop"), "README.md", "exec"), namespace)

    start = envs.make("reach")
    start.reset(seed=3)
    initial_distance = start.unwrapped.distance_to_goal()
    info, agent = namespace["info"], namespace["agent"]
    # A time budget is in the example, so a loaded machine may cut planner iterations: assert
    # clear progress toward the goal rather than the exact 5 cm success radius.
    assert info["distance"] < 0.5 * initial_distance, (info["distance"], initial_distance)
    assert len(agent.stats.plan_ms) == 50
    printed = capsys.readouterr().out
    assert "50 planning calls" in printed and len(printed) < 400  # a summary, not 50-entry lists
