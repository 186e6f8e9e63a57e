"""Tool calls from a built model: how many `required` answers end with a call whose arguments
validate against the function's schema (judged by `jsonschema`; answers cut by `max_tokens`
inside a call are counted apart), how often the model picks the
function the question is about, and decode speed under the tool grammar against plain decoding
in the same run.

    python benchmarks/tool_calling.py [MODEL_DIR] [--seeds 5]

Without MODEL_DIR: the embedded default, built into dist/ on first use.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import jsonschema

from mlc import ChatModule, GenerationConfig


def function(name: str, description: str, properties: dict) -> dict:
    parameters = {"type": "object", "properties": properties, "required": list(properties)}
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


TOOLS = [
    function(
        "get_weather",
        "The current weather in a city",
        {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    ),
    function("add", "Adds two numbers", {"a": {"type": "number"}, "b": {"type": "number"}}),
    function("search_web", "Searches the web", {"query": {"type": "string"}}),
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
# Questions, and the function a person would call for each.
QUESTIONS = [
    ("What's the weather like in Paris?", "get_weather"),
    ("Is it raining in Tokyo right now?", "get_weather"),
    ("How warm is it in Cairo, in fahrenheit?", "get_weather"),
    ("What is 1234 plus 5678?", "add"),
    ("Add 3.5 and 4.25 for me.", "add"),
    ("Find recent news about the Mars rover.", "search_web"),
    ("Search for the best pancake recipe.", "search_web"),
    ("Who won the 2022 football world cup? Look it up.", "search_web"),
]


def valid(call) -> bool:
    try:
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
    except (ValueError, KeyError, jsonschema.ValidationError):
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    if args.model is None:
        from mlc.default_model import default_model_dir

        args.model = default_model_dir()
    cm = ChatModule(str(args.model))
    answers = finished = calls_valid = right = 0
    tool_rates, plain_rates = [], []
    for question, expected in QUESTIONS:
        for seed in range(args.seeds):
            cm.reset_chat()
            config = GenerationConfig(
                seed=seed,
                max_tokens=96,
                tools=TOOLS,
                tool_choice="required",
                parallel_tool_calls=False,
            )
            cm.generate(question, config)
            answers += 1
            calls = cm.last_tool_calls
            if cm.last_stats.finish_reason == "tool_calls":
                finished += 1
                calls_valid += len(calls) == 1 and valid(calls[0])
            right += bool(calls) and calls[0].name == expected
            tool_rates.append(cm.last_stats.decode_tokens_per_s)
            cm.reset_chat()
            cm.generate(
                question, GenerationConfig(seed=seed, max_tokens=cm.last_stats.decode_tokens or 1)
            )
            plain_rates.append(cm.last_stats.decode_tokens_per_s)
    print(f"model: {args.model} ({cm.tools.format.name} tool calls)")
    print(
        f"answers that ended with one valid call: {calls_valid}/{finished} "
        f"({answers - finished} of {answers} cut by max_tokens inside a call)"
    )
    print(f"the function the question is about: {right}/{answers}")
    tool, plain = statistics.median(tool_rates), statistics.median(plain_rates)
    print(f"decode tok/s, median: tools {tool:.1f}, plain {plain:.1f} (ratio {tool / plain:.3f})")


if __name__ == "__main__":
    main()
