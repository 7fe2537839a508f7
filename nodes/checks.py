"""Input checks shared by the nodes' VALIDATE_INPUTS and the run-time checks of the same inputs.

ComfyUI skips its own min / max and list checks for every input a VALIDATE_INPUTS takes by name, and shows the one
string VALIDATE_INPUTS returns under each of those inputs. So a node checks its INPUT_TYPES declarations itself (one
source of truth for the bounds) and reports every problem at once, each sentence starting with the input it is about.
"""

from __future__ import annotations


def declared_problems(node_class, values: dict) -> dict[str, str]:
    """input name -> what is wrong, for each value outside its INPUT_TYPES min / max or choice list; None (a linked
    input, known only at run time) and values that are no number (ComfyUI reports those itself) are left out."""
    declared = node_class.INPUT_TYPES()
    inputs = {**declared.get("required", {}), **declared.get("optional", {})}
    problems = {}
    for name, value in values.items():
        kind, options = inputs[name][0], (inputs[name][1] if len(inputs[name]) > 1 else {})
        if value is None:
            continue
        if isinstance(kind, list):
            if value not in kind:
                problems[name] = f"{name} must be one of {kind}, got {value!r}."
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        elif "min" in options and value < options["min"]:
            problems[name] = f"{name} {value} is below the minimum {options['min']}."
        elif "max" in options and value > options["max"]:
            problems[name] = f"{name} {value} is above the maximum {options['max']}."
    return problems


def verdict(problems) -> bool | str:
    """What VALIDATE_INPUTS returns: True, or every problem in one string."""
    problems = list(problems)
    return " ".join(problems) if problems else True


def refuse(problems) -> None:
    """The run-time twin of `verdict`: a ValueError with every problem."""
    problems = list(problems)
    if problems:
        raise ValueError(" ".join(problems))
