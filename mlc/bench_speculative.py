"""`mlc bench --speculative`: decode speed with and without speculative decoding on an
input-grounded task (correcting a given text, whose answer repeats most of it), greedy, in the
same process with the runs alternating; the answers must be identical."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from mlc.runtime import ChatModule, GenerationConfig
from mlc.runtime.compiled_model import ContextWindowExceeded

# Our own text, with spelling mistakes to correct.
EDIT_TASK_TEXT = (
    "The old lighthouse stood at the edge of the harbour for more then a hundred years. "
    "Every evening the keeper climbed the narow stairs, cleaned the great lens and lit the "
    "lamp, so that the fishing boats coming home in the dark could find there way between "
    "the rocks. In winter the storms were so strong that the whole tower seemed to shake, "
    "but the light never went out. When the keeper grew old, his daugther took over the "
    "work. She kept a log of every ship that passed, the wheather of each night and the oil "
    "the lamp had burned. Today the lighthouse is a small museum, and her log books lie open "
    "in a glass case beside the stairs, where visitors can read how the harbour lived."
)
EDIT_TASK_INSTRUCTION = (
    "Correct the spelling mistakes in the text below. Reply with the corrected text only.\n\n"
)
EDIT_TASK_PROMPT = EDIT_TASK_INSTRUCTION + EDIT_TASK_TEXT


def _fitting_prompt(chat: ChatModule, gen_len: int) -> str:
    """The task with as many of the text's sentences as the context window holds with room for
    `gen_len` answer tokens."""
    sentences = EDIT_TASK_TEXT.split(". ")
    for count in range(len(sentences), 0, -1):
        prompt = EDIT_TASK_INSTRUCTION + ". ".join(sentences[:count])
        try:
            chat.engine.check_fits(chat.prompt_tokens(prompt) + gen_len, fresh=True)
        except ContextWindowExceeded:
            continue
        return prompt
    raise ValueError(
        f"the context window ({chat.engine.context_window_size} tokens) cannot hold the "
        f"speculative benchmark's task and {gen_len} answer tokens; lower --gen-len"
    )


def run_speculative_bench(
    model_dir: Path,
    method: str,
    gen_len: int,
    runs: int,
    device: str = "cpu",
    draft_model: Path | None = None,
) -> dict[str, Any]:
    """Median decode tokens/s of plain and speculative greedy answers to the edit task."""
    chat = ChatModule(model_dir, device=device, prefix_cache=False, draft_model=draft_model)
    prompt = _fitting_prompt(chat, gen_len)
    speeds: dict[str | None, list[float]] = {None: [], method: []}
    answers: dict[str | None, list[int]] = {}
    drafted = accepted = 0
    for run in range(runs + 1):  # run 0 warms up
        for name in (None, method):
            chat.reset_chat()
            config = GenerationConfig(temperature=0, max_tokens=gen_len, speculative=name)
            chat.generate(prompt, config)
            stats = chat.last_stats
            answer = answers.setdefault(name, chat.last_output_ids)
            if chat.last_output_ids != answer or answers.get(None, answer) != answer:
                raise RuntimeError(
                    f"speculative decoding ({method}) changed the greedy answer: a bug, "
                    "please report it"
                )
            if run:
                speeds[name].append(stats.decode_tokens_per_s)
                if name is not None:
                    drafted += stats.draft_tokens
                    accepted += stats.accepted_draft_tokens
    plain, fast = statistics.median(speeds[None]), statistics.median(speeds[method])
    return {
        "method": method if draft_model is None else f"{method} ({Path(draft_model).name})",
        "task": f"correct the spelling of a {len(prompt) - len(EDIT_TASK_INSTRUCTION)}-character "
        "text (greedy)",
        "answer_tokens": len(answers[None]),
        "plain_decode_tokens_per_s": plain,
        "speculative_decode_tokens_per_s": fast,
        "speedup": fast / plain if plain else 0.0,
        "draft_acceptance": accepted / drafted if drafted else 0.0,
        "identical_answers": True,
    }
