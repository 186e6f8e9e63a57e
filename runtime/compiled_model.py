"""One compiled model on one device: its library, weights and paged KV cache.

This layer speaks token ids and logits only; text, templates and sampling live above it.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine
from tvm_ffi.libinfo import load_lib_ctypes

from .artifact import METADATA_FUNC, check_library_metadata
from .chat_config import ArtifactError, ChatConfig
from .host import ToolMissingError
from .prefix_cache import common_prefix, reusable_length
from .tensor_cache import TensorCacheIndex, iter_arrays

# TVM sizes its thread pool once, at the first parallel kernel, from TVM_NUM_THREADS or its own
# guess, which on some virtual machines is one thread (half the speed on 2 cores). Default to
# every core this process may run on.
os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))

PAGE_SIZE = 16
SEQUENCE_ID = 0
# A sequence's keys and values, once it has a page of them, are held as two blocks of the paged
# cache: its first page and the rest. The cache attends to each block and merges the two, and
# so to a sequence forked from a cached prefix (whose first page is shared, `prefix_cache.py`)
# exactly as to one that prefilled the same tokens itself.
FIRST_BLOCK_TOKENS = PAGE_SIZE
_SCRATCH_SEQUENCE_ID = 1 << 62  # forked and removed at once, to split a sequence's block
# Our CPU attention kernels (targets/cpu_attention_*.py) serve heads of a multiple of this size.
_CPU_KERNEL_HEADS = 8

_kv_add_sequence = tvm.get_global_func("vm.builtin.kv_state_add_sequence")
_kv_remove_sequence = tvm.get_global_func("vm.builtin.kv_state_remove_sequence")
_kv_fork_sequence = tvm.get_global_func("vm.builtin.kv_state_fork_sequence")
_kv_begin_forward = tvm.get_global_func("vm.builtin.kv_state_begin_forward")
_kv_end_forward = tvm.get_global_func("vm.builtin.kv_state_end_forward")
_kv_popn = tvm.get_global_func("vm.builtin.kv_state_popn")
_kv_available_pages = tvm.get_global_func("vm.builtin.attention_kv_cache_get_num_available_pages")
_kv_commit_chain = tvm.get_global_func(
    "vm.builtin.attention_kv_cache_commit_accepted_token_tree_nodes"
)


class ContextWindowExceeded(ValueError):
    """The conversation would not fit in the model's context window."""


def load_device_runtime(name: str) -> None:
    """TVM without its compiler library (`mlc bundle`) loads no device runtime by itself: load
    the wheel's CUDA runtime library (it needs the CUDA runtime, `libcudart.so.13`)."""
    loaded = tvm.base._LOADED_LIBS
    if name != "cuda" or not tvm.base._RUNTIME_ONLY or "tvm_runtime_cuda" in loaded:
        return
    lib_dir = Path(loaded["tvm_runtime"]._name).resolve().parent
    try:
        loaded["tvm_runtime_cuda"] = load_lib_ctypes(
            "tvm", "tvm_runtime_cuda", "RTLD_LOCAL", extra_lib_paths=[lib_dir]
        )
    except (OSError, RuntimeError) as err:
        raise ToolMissingError(
            f"cannot load TVM's CUDA runtime ({err}): it needs the NVIDIA driver (libcuda.so.1) "
            "and the CUDA 13 runtime (libcudart.so.13) where the dynamic loader finds them"
        ) from err


def to_device(device: str) -> tvm.runtime.Device:
    name, _, index = device.partition(":")
    if name in ("cpu", "llvm"):
        name = "cpu"
    load_device_runtime(name)
    if name == "vulkan":  # our own runtime plugin: the wheel's TVM has no Vulkan
        from .vulkan import vulkan_device

        return vulkan_device(int(index or 0))
    try:
        dev = tvm.device(name, int(index or 0))
    except (ValueError, tvm.error.TVMError) as err:
        raise ValueError(f"unknown device {device!r} (try 'cpu')") from err
    if not dev.exist:
        raise ValueError(f"device {device!r} is not available on this machine")
    return dev


def find_library(model_dir: Path, chat_config: ChatConfig, model_lib: str | None) -> Path:
    path = Path(model_lib) if model_lib is not None else model_dir / chat_config.model_lib
    if not path.is_file():
        raise ArtifactError(
            f"model library not found: {path}; {chat_config.rebuild_hint(model_dir)}"
        )
    return path


def check_library_device(
    chat_config: ChatConfig, device: tvm.runtime.Device, library_path: Path
) -> None:
    """A `vulkan` library runs on a Vulkan device only, and only it does: its host code
    launches SPIR-V kernels there (CPU libraries run their kernels on the host)."""
    if chat_config.target == "arm64" and platform.machine().lower() not in ("aarch64", "arm64"):
        raise ArtifactError(
            f"{library_path.name} was built for target 'arm64' and cannot run on this "
            f"{platform.machine()} CPU: it runs on 64-bit ARM (or here under qemu-aarch64 with "
            "the native runtime: mlc native build --arch arm64); build it without --target to run "
            "it here"
        )
    built_for_vulkan = chat_config.target == "vulkan"
    if built_for_vulkan != (device.type == "vulkan"):
        fix = (
            "open it with device='vulkan' (--device vulkan)"
            if built_for_vulkan
            else "build the model with `mlc build --target vulkan` to run it on Vulkan"
        )
        raise ArtifactError(
            f"{library_path.name} was built for target {chat_config.target!r} and "
            f"cannot run on {device}: {fix}"
        )


def _no_prefix_sharing(model_config: dict) -> str | None:
    """Why a model's sequences cannot be split into blocks (`FIRST_BLOCK_TOKENS`), or None."""
    if model_config.get("sliding_window"):
        return "its sliding-window layers see a block's pages through their own window arithmetic"
    if model_config.get("kv_cache_dtype", "float32") != "float32":
        # Each block's part of the attention is rounded to the cache's dtype before the two
        # are merged: measured 2.6 % of the logit range off on a tiny float16-cache model.
        return "its KV cache is float16, which rounds each block's part of the attention"
    return None


def model_head_dim(model_config: dict) -> int:
    """A chat config's attention head size (`head_dim`, else hidden size over heads)."""
    heads = max(model_config.get("num_attention_heads", 1), 1)
    return model_config.get("head_dim") or model_config.get("hidden_size", 0) // heads


def _no_chains(chat_config: ChatConfig) -> str | None:
    """Why `CompiledModel.feed_chain` cannot run on a build, or None."""
    model_config = chat_config.model_config
    if model_config.get("sliding_window"):
        return "its sliding-window layers cannot attend to a chain appended before attention"
    if chat_config.target != "llvm":
        return (
            f"it is built for {chat_config.target!r}; a chain's decode-exact attention needs "
            "our CPU kernels (--target llvm)"
        )
    head_dim = model_head_dim(model_config)
    if head_dim % _CPU_KERNEL_HEADS:
        return (
            f"its heads of {head_dim} run the cache's stock CPU kernels, not ours (a multiple "
            f"of {_CPU_KERNEL_HEADS})"
        )
    return None


class CompiledModel:
    """Prefill and decode for a single sequence whose history lives in the paged KV cache.

    With `max_batch_size` > 1 the cache also holds other sequences, driven by `forward_prefill`
    and `forward_decode` (the batching engine); sequence 0 stays the single-sequence API's.
    """

    def __init__(
        self,
        model_dir: str | Path,
        model_lib: str | None = None,
        device: str = "cpu",
        verify_weights: bool = True,
        max_batch_size: int = 1,
        kv_cache_tokens: int | None = None,
        prefill_chunk_size: int | None = None,
    ):
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise ArtifactError(
                f"model directory not found: {self.model_dir} (build one with `mlc build`)"
            )
        self.chat_config = ChatConfig.load(self.model_dir)
        rebuild = self.chat_config.rebuild_hint(self.model_dir)
        self.device = to_device(device)
        library_path = find_library(self.model_dir, self.chat_config, model_lib)
        check_library_device(self.chat_config, self.device, library_path)
        index = TensorCacheIndex.load(self.model_dir, rebuild)
        try:
            self.vm = VirtualMachine(tvm.runtime.load_module(str(library_path)), self.device)
            metadata = json.loads(self.vm[METADATA_FUNC]())
        except Exception as err:
            raise ArtifactError(
                f"{library_path} is not a model library this runtime can load ({err}); {rebuild}"
            ) from err
        check_library_metadata(
            metadata, self.chat_config, index.records, self.model_dir, library_path
        )
        self.metadata = metadata
        self.params = [
            tvm.runtime.tensor(array, self.device)
            for array in iter_arrays(self.model_dir, index, rebuild, verify=verify_weights)
        ]
        self.context_window_size = self.chat_config.context_window_size
        built_chunk = self.chat_config.prefill_chunk_size
        if prefill_chunk_size is not None and not 1 <= prefill_chunk_size <= built_chunk:
            raise ValueError(
                f"prefill_chunk_size {prefill_chunk_size} is outside 1..{built_chunk}, the "
                f"chunk {library_path.name} was built for (mlc build --prefill-chunk-size)"
            )
        # Tokens per prefill call. A token's logits depend (in the last bits) on where the
        # chunks start, so runs that should agree bit for bit use the same chunk size.
        self.prefill_chunk_size = prefill_chunk_size or built_chunk
        self.vocab_size = self.chat_config.vocab_size
        built_batch = self.chat_config.max_batch_size
        if not 1 <= max_batch_size <= built_batch:
            raise ValueError(
                f"max_batch_size {max_batch_size} is outside 1..{built_batch}, the batch size "
                f"{library_path.name} was built for (mlc build --max-batch-size)"
            )
        self.max_batch_size = max_batch_size
        self.kv_cache_tokens = max(kv_cache_tokens or 0, self.context_window_size)
        self.kv_cache = self.vm["create_paged_kv_cache"](
            tvm.runtime.ShapeTuple([max_batch_size]),
            tvm.runtime.ShapeTuple([self.kv_cache_tokens]),
            tvm.runtime.ShapeTuple([self.prefill_chunk_size]),
            tvm.runtime.ShapeTuple([PAGE_SIZE]),
            tvm.runtime.ShapeTuple([0]),
        )
        # Tokens each sequence holds in the cache (from FIRST_BLOCK_TOKENS on, its first page
        # is a block of its own: split when it grew past it, inherited when forked past it).
        self._kv_lengths: dict[int, int] = {}
        self._fork_lengths: dict[int, int] = {}  # forked sequences: the length they forked at
        # Why this model keeps each sequence in one block and shares no KV prefix, if it does.
        self.no_prefix_sharing = _no_prefix_sharing(self.chat_config.model_config)
        self.shares_prefixes = self.no_prefix_sharing is None
        # Why this build cannot feed decode-exact chains (speculative decoding), if it cannot.
        self.no_chains = _no_chains(self.chat_config)
        self._chain: tuple[int, int, bool] | None = None  # a chain's (kept, fed, pending pass)
        self.add_sequence(SEQUENCE_ID)
        self.num_cached_tokens = 0
        # The single sequence's tokens that its prefill calls fed in whole chunks from its
        # start: exactly as a prompt starting with them would hold them (`prefix_cache.py`).
        self._exact_ids: list[int] = []
        self.reused_tokens = 0  # of the last `prefill`, kept from before a `reset`

    def reset(self, keep_prefix: bool = False) -> None:
        """Forget the sequence. Its KV pages are freed, or with `keep_prefix` those of its
        whole prefill chunks are kept until the next `prefill`, which reuses the chunks its
        tokens start with."""
        if self._chain is not None:
            self.keep_chain(0)
        self.num_cached_tokens = 0
        if keep_prefix and self.shares_prefixes and self._exact_ids:
            self._pop_held(len(self._exact_ids))
        else:
            self._pop_held(0)

    def _pop_held(self, keep: int) -> None:
        """Keep the first `keep` tokens of the sequence's KV cache (`_exact_ids` at most)."""
        held = self._kv_lengths[SEQUENCE_ID]
        if keep == 0 and held:
            self.remove_sequence(SEQUENCE_ID)
            self.add_sequence(SEQUENCE_ID)
        elif keep < held:
            _kv_popn(self.kv_cache, SEQUENCE_ID, held - keep)
            self._kv_lengths[SEQUENCE_ID] = keep  # below a page, the second block went too
        del self._exact_ids[keep:]

    def pop(self, num_tokens: int) -> None:
        """Drop the last `num_tokens` tokens from the KV cache."""
        if num_tokens:
            self._pop_held(self.num_cached_tokens - num_tokens)
            self.num_cached_tokens -= num_tokens

    def check_fits(self, num_new_tokens: int, fresh: bool = False) -> None:
        """Raise unless `num_new_tokens` more (or, `fresh`, in an empty cache) fit."""
        cached = 0 if fresh else self.num_cached_tokens
        total = cached + num_new_tokens
        if total > self.context_window_size:
            raise ContextWindowExceeded(
                f"the conversation needs {total} tokens ({cached} already in "
                f"context + {num_new_tokens} new) but the context window is "
                f"{self.context_window_size}; shorten the prompt or reset the chat"
            )

    def _embed(self, token_ids: np.ndarray) -> tvm.runtime.Tensor:
        # The compiled lookup does no bounds check: an id outside the vocabulary would crash.
        if token_ids.min() < 0 or token_ids.max() >= self.vocab_size:
            raise ValueError(
                f"token id {int(token_ids.max())} is outside the vocabulary of "
                f"{self.vocab_size}; does the tokenizer belong to this model?"
            )
        ids = tvm.runtime.tensor(token_ids.astype(np.int32), self.device)
        return self.vm["embed"](ids, self.params)

    def _begin(self, length: int) -> None:
        if self._chain is not None:
            raise RuntimeError("a chain's tokens are pending: call keep_chain first")
        _kv_begin_forward(
            self.kv_cache, tvm.runtime.ShapeTuple([SEQUENCE_ID]), tvm.runtime.ShapeTuple([length])
        )

    def prefill(self, token_ids: list[int] | np.ndarray, all_logits: bool = False) -> np.ndarray:
        """Feed tokens in chunks of `prefill_chunk_size`; returns the last token's logits
        `[vocab]`, or with `all_logits` those of every token `[len(token_ids), vocab]`."""
        token_ids = np.asarray(token_ids, dtype=np.int32)
        if token_ids.size == 0:
            raise ValueError("prefill needs at least one token")
        self.check_fits(token_ids.size)
        self.reused_tokens = 0
        if self.num_cached_tokens == 0 and not all_logits:  # after a reset: a kept prefix?
            common = common_prefix(np.asarray(self._exact_ids, np.int32), token_ids)
            self.reused_tokens = reusable_length(common, token_ids.size, self.prefill_chunk_size)
        self._pop_held(self.num_cached_tokens + self.reused_tokens)
        self.num_cached_tokens += self.reused_tokens
        token_ids = token_ids[self.reused_tokens :]
        outputs = []
        # Chunks from a whole number of chunks into the sequence extend its exact prefix.
        exact = len(self._exact_ids) == self.num_cached_tokens
        exact = exact and self.num_cached_tokens % self.prefill_chunk_size == 0
        for start in range(0, token_ids.size, self.prefill_chunk_size):
            chunk = token_ids[start : start + self.prefill_chunk_size]
            exact = exact and chunk.size == self.prefill_chunk_size
            embed = self._embed(chunk)
            embed = embed._create_view((1, chunk.size, embed.shape[-1]))
            wanted = np.arange(chunk.size) if all_logits else np.array([chunk.size - 1])
            positions = tvm.runtime.tensor(wanted.astype(np.int32), self.device)
            self._begin(chunk.size)
            logits, self.kv_cache = self.vm["prefill"](embed, positions, self.kv_cache, self.params)
            _kv_end_forward(self.kv_cache)
            self._appended([SEQUENCE_ID], [chunk.size])
            self.num_cached_tokens += chunk.size
            if exact:
                self._exact_ids += chunk.tolist()
            if all_logits or start + chunk.size == token_ids.size:
                outputs.append(logits.numpy().reshape(chunk.size if all_logits else 1, -1))
        return np.concatenate(outputs) if all_logits else outputs[-1].reshape(-1)

    def decode(self, token_id: int) -> np.ndarray:
        """Feed one token; returns its logits."""
        self.check_fits(1)
        self._pop_held(self.num_cached_tokens)  # a prefix kept by `reset` is not reused
        embed = self._embed(np.array([token_id], dtype=np.int32))
        embed = embed._create_view((1, 1, embed.shape[-1]))
        self._begin(1)
        logits, self.kv_cache = self.vm["decode"](embed, self.kv_cache, self.params)
        _kv_end_forward(self.kv_cache)
        self._appended([SEQUENCE_ID], [1])
        self.num_cached_tokens += 1
        return logits.numpy().reshape(-1)

    # --- chains: several tokens fed as decode steps (speculative decoding) -----------------------

    def max_chain_length(self) -> int:
        """The most tokens `feed_chain` takes now (0 where the build cannot feed chains)."""
        if self.no_chains is not None:
            return 0
        room = self.context_window_size - self.num_cached_tokens
        return max(min(self.prefill_chunk_size, room), 0)

    def feed_chain(self, token_ids: list[int] | np.ndarray) -> np.ndarray:
        """Feed tokens in one forward pass, each as `decode` would feed it after the ones
        before it: returns `[n, vocab]` logits, row i bit for bit those `decode` would return
        for token i. The tokens stay in the KV cache until `keep_chain` says how many of
        them to keep; nothing else may run on the cache before it."""
        if self.no_chains is not None:
            raise ValueError(
                f"{self.model_dir.name} cannot feed chains of tokens: {self.no_chains}"
            )
        tokens = np.asarray(token_ids, dtype=np.int32)
        if not 1 <= tokens.size <= self.prefill_chunk_size:
            raise ValueError(
                f"a chain has 1 to {self.prefill_chunk_size} tokens (the prefill chunk), "
                f"not {tokens.size}"
            )
        self.check_fits(tokens.size)
        self._pop_held(self.num_cached_tokens)  # a prefix kept by `reset` is not reused
        kept = 0  # tokens fed and kept before the pending pass
        rows = []
        # Decode attends to a sequence's first page as a block of its own once it is full
        # (`_appended`): a chain that fills it is fed, and kept, up to there first.
        cached = self.num_cached_tokens
        if self.shares_prefixes and cached < FIRST_BLOCK_TOKENS < cached + tokens.size:
            kept = FIRST_BLOCK_TOKENS - cached
            rows.append(self._chain_pass(tokens[:kept]))
            self._keep_pass(kept)
        # A pending tree needs a token in the sequence's last block: with none, one decode step.
        if self._last_block_empty(SEQUENCE_ID):
            rows.append(self.decode(int(tokens[kept]))[None])
            kept += 1
        pending = kept < tokens.size
        if pending:
            rows.append(self._chain_pass(tokens[kept:]))
        self._chain = (kept, tokens.size, pending)
        return np.concatenate(rows) if len(rows) > 1 else rows[0]

    def keep_chain(self, num_tokens: int) -> None:
        """Keep the first `num_tokens` tokens of the chain `feed_chain` fed; drop the rest."""
        if self._chain is None:
            raise RuntimeError("no chain is pending: feed_chain first")
        kept, fed, pending = self._chain
        if not 0 <= num_tokens <= fed:
            raise ValueError(f"cannot keep {num_tokens} of a chain of {fed} tokens")
        self._chain = None
        if pending:
            self._keep_pass(max(num_tokens - kept, 0))
        if num_tokens < kept:
            self.pop(kept - num_tokens)

    def _chain_pass(self, tokens: np.ndarray) -> np.ndarray:
        return self._chains_pass([SEQUENCE_ID], [tokens])[0]

    def _keep_pass(self, num_tokens: int) -> None:
        self._keep_passes([SEQUENCE_ID], [num_tokens])

    def _chains_pass(self, seq_ids: list[int], chains: list[np.ndarray]) -> list[np.ndarray]:
        """One forward pass over each sequence's chain, left pending (`_keep_passes`).

        TVM's paged cache attends to a multi-token append after writing it to the pages
        (rather than to the append and the cached pages apart, merged) when a sequence in the
        pass has a token tree pending. A one-token tree, reserved and popped without a forward
        pass, leaves one pending (it needs a token in the sequence's last block); each chain
        then goes on as a chain of tree nodes (after that token, or from a root), and each
        query attends to the pages up to its own position, summed as `decode_attention` sums
        (`targets/cpu_attention_prefill.py`), while every linear layer computes each token's
        row as decode does."""
        pilots = [s for s in seq_ids if not self._last_block_empty(s)]
        if not pilots:
            raise ValueError("no sequence in the pass has a token in its last KV block")
        _kv_begin_forward(
            self.kv_cache,
            tvm.runtime.ShapeTuple(pilots),
            tvm.runtime.ShapeTuple([1] * len(pilots)),
            tvm.runtime.ShapeTuple([-1] * len(pilots)),
        )
        _kv_end_forward(self.kv_cache)
        for seq_id in pilots:
            _kv_popn(self.kv_cache, seq_id, 1)
        parents: list[int] = []
        for seq_id, chain in zip(seq_ids, chains, strict=True):
            first = 0 if seq_id in pilots else -1  # the pending token's node, or a root
            parents += range(first, first + chain.size)
        lengths = [int(c.size) for c in chains]
        _kv_begin_forward(
            self.kv_cache,
            tvm.runtime.ShapeTuple(seq_ids),
            tvm.runtime.ShapeTuple(lengths),
            tvm.runtime.ShapeTuple(parents),
        )
        tokens = np.concatenate(chains).astype(np.int32)
        embed = self._embed(tokens)
        embed = embed._create_view((1, tokens.size, embed.shape[-1]))
        positions = tvm.runtime.tensor(np.arange(tokens.size, dtype=np.int32), self.device)
        logits, self.kv_cache = self.vm["prefill"](embed, positions, self.kv_cache, self.params)
        _kv_end_forward(self.kv_cache)
        rows = logits.numpy().reshape(tokens.size, -1)
        return np.split(rows, np.cumsum(lengths)[:-1])

    def _keep_passes(self, seq_ids: list[int], num_tokens: list[int]) -> None:
        """Keep the first `num_tokens[i]` tokens of sequence i's chain in the last
        `_chains_pass`: committing the tree node at depth `num_tokens[i] - 1` (a pending
        token's node, if any, is depth 0) pops the rest."""
        leaves = tvm.runtime.ShapeTuple([n - 1 for n in num_tokens])
        _kv_commit_chain(self.kv_cache, tvm.runtime.ShapeTuple(seq_ids), leaves)
        self._appended(seq_ids, num_tokens)
        if SEQUENCE_ID in seq_ids:
            self.num_cached_tokens += num_tokens[seq_ids.index(SEQUENCE_ID)]

    def _last_block_empty(self, seq_id: int) -> bool:
        """Whether the sequence's last KV block holds no token: it is empty, forked and not
        grown since, or its first page has just split off."""
        length = self._kv_lengths[seq_id]
        split = self.shares_prefixes and length == FIRST_BLOCK_TOKENS
        return length in (0, self._fork_lengths.get(seq_id, 0)) or split

    def forward_chains(self, seq_ids: list[int], chains: list[np.ndarray]) -> list[np.ndarray]:
        """`feed_chain` for several sequences in one pass: each sequence's chain rows. The
        chains stay until `keep_chains`. A chain must not fill a sequence's first page past its
        end (`chain_room`), and at least one sequence must have a token in its last block
        (`can_lead_chains`)."""
        for seq_id, chain in zip(seq_ids, chains, strict=True):
            if chain.size > self.chain_room(seq_id):
                raise ValueError(
                    f"sequence {seq_id}'s chain of {chain.size} would cross its first page"
                )
        return self._chains_pass(seq_ids, chains)

    def keep_chains(self, seq_ids: list[int], num_tokens: list[int]) -> None:
        """Keep each sequence's first `num_tokens[i]` chain tokens (at least one)."""
        if min(num_tokens) < 1:
            raise ValueError("a chain keeps at least its first token")
        self._keep_passes(seq_ids, num_tokens)

    def chain_room(self, seq_id: int) -> int:
        """The longest chain `forward_chains` may feed the sequence: up to its first page's
        end while that page is not full, else the prefill chunk."""
        length = self._kv_lengths[seq_id]
        if self.shares_prefixes and length < FIRST_BLOCK_TOKENS:
            return FIRST_BLOCK_TOKENS - length
        return self.prefill_chunk_size

    def can_lead_chains(self, seq_id: int) -> bool:
        return self.no_chains is None and not self._last_block_empty(seq_id)

    # --- several sequences (the batching engine) ------------------------------------------------

    def add_sequence(self, seq_id: int) -> None:
        _kv_add_sequence(self.kv_cache, seq_id)
        self._kv_lengths[seq_id] = 0

    def remove_sequence(self, seq_id: int) -> None:
        """Forget a sequence; its KV pages are free at once (those it shares stay its
        sharers')."""
        _kv_remove_sequence(self.kv_cache, seq_id)
        del self._kv_lengths[seq_id]
        self._fork_lengths.pop(seq_id, None)

    def fork_sequence(self, parent_id: int, child_id: int, length: int) -> None:
        """Start sequence `child_id` with the first `length` tokens of `parent_id`: their
        whole pages are shared by reference, a partly used last page is copied."""
        if not self.shares_prefixes:
            raise ValueError(
                f"{self.model_dir.name} cannot share KV prefixes: {self.no_prefix_sharing}"
            )
        if not 0 <= length <= self._kv_lengths[parent_id]:
            raise ValueError(f"cannot fork at {length}: sequence {parent_id} is shorter")
        _kv_fork_sequence(self.kv_cache, parent_id, child_id, length)
        self._kv_lengths[child_id] = length  # past a page, the parent's first block is shared
        self._fork_lengths[child_id] = length

    def _appended(self, seq_ids: list[int], lengths: list[int]) -> None:
        """Count a forward pass's new tokens; a sequence that now has a page of them gets its
        first page as a block of its own (`FIRST_BLOCK_TOKENS`)."""
        for seq_id, length in zip(seq_ids, lengths, strict=True):
            before = self._kv_lengths[seq_id]
            self._kv_lengths[seq_id] += length
            crossed = before < FIRST_BLOCK_TOKENS <= before + length
            if crossed and self.shares_prefixes:
                _kv_fork_sequence(self.kv_cache, seq_id, _SCRATCH_SEQUENCE_ID, FIRST_BLOCK_TOKENS)
                _kv_remove_sequence(self.kv_cache, _SCRATCH_SEQUENCE_ID)

    def num_available_pages(self) -> int:
        return int(_kv_available_pages(self.kv_cache))

    def forward_prefill(self, seq_ids: list[int], chunks: list[np.ndarray]) -> np.ndarray:
        """One prefill call over the flattened tokens of several sequences; returns the logits
        of each sequence's last token `[len(seq_ids), vocab]`."""
        lengths = [int(c.size) for c in chunks]
        tokens = np.concatenate(chunks).astype(np.int32)
        embed = self._embed(tokens)
        embed = embed._create_view((1, tokens.size, embed.shape[-1]))
        positions = tvm.runtime.tensor(np.cumsum(lengths).astype(np.int32) - 1, self.device)
        _kv_begin_forward(
            self.kv_cache, tvm.runtime.ShapeTuple(seq_ids), tvm.runtime.ShapeTuple(lengths)
        )
        logits, self.kv_cache = self.vm["prefill"](embed, positions, self.kv_cache, self.params)
        _kv_end_forward(self.kv_cache)
        self._appended(seq_ids, lengths)
        return logits.numpy().reshape(len(seq_ids), -1)

    def forward_decode(self, seq_ids: list[int], tokens: list[int]) -> np.ndarray:
        """One decode call feeding one token to each sequence; returns `[len(seq_ids), vocab]`."""
        embed = self._embed(np.asarray(tokens, dtype=np.int32))
        embed = embed._create_view((len(tokens), 1, embed.shape[-1]))
        _kv_begin_forward(
            self.kv_cache,
            tvm.runtime.ShapeTuple(seq_ids),
            tvm.runtime.ShapeTuple([1] * len(tokens)),
        )
        logits, self.kv_cache = self.vm["decode"](embed, self.kv_cache, self.params)
        _kv_end_forward(self.kv_cache)
        self._appended(seq_ids, [1] * len(seq_ids))
        return logits.numpy().reshape(len(seq_ids), -1)
