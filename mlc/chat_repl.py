"""`mlc chat`: an interactive terminal chat with streaming output."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from mlc.runtime import ChatModule, ContextWindowExceeded, GenerationConfig

HELP = """Commands:
  /help    show this help
  /reset   start a new conversation
  /stats   prefill and decode speed of the last answer
  /exit    quit
Ctrl-C stops the current answer; the conversation is kept."""


def _print_piece(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def run_chat(
    model: Path,
    model_lib: str | None,
    device: str,
    conv_template: str | None,
    prompt: str | None,
    temperature: float | None,
    max_tokens: int | None,
) -> None:
    cm = ChatModule(str(model), model_lib=model_lib, device=device, conv_template=conv_template)
    config = GenerationConfig(temperature=temperature, max_tokens=max_tokens)
    if prompt is not None:
        cm.generate(prompt, config, progress_callback=_print_piece)
        print()
        return
    print(f"Chatting with {model} ({cm.template.name} template). /help for commands.")
    while True:
        try:
            line = input(">>> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        command = line.strip()
        if not command:
            continue
        if command == "/exit":
            return
        if command == "/help":
            print(HELP)
        elif command == "/reset":
            cm.reset_chat()
            print("(conversation reset)")
        elif command == "/stats":
            print(cm.stats())
        elif command.startswith("/"):
            print(f"unknown command {command}; /help lists them")
        else:
            _answer(cm, line, config)


def _answer(cm: ChatModule, line: str, config: GenerationConfig) -> None:
    # Ctrl-C during an answer asks the generation loop to stop after the current token, so the
    # KV cache is never left in the middle of a forward pass.
    previous = signal.signal(signal.SIGINT, lambda *_: cm.interrupt())
    try:
        cm.generate(line, config, progress_callback=_print_piece)
        if cm.last_stats.finish_reason == "interrupted":
            print(" [stopped]", end="")
    except ContextWindowExceeded as err:
        print(f"error: {err}; /reset starts a new conversation", end="")
    finally:
        signal.signal(signal.SIGINT, previous)
    print()
