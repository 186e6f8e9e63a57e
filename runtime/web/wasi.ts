/**
 * The few WASI calls a standalone TVM `.wasm` imports, for running it outside a browser
 * page without emcc's JavaScript glue: clocks, exit, and stdout/stderr writes (the runtime's
 * log messages). Files do not exist: reads, seeks and closes fail with EBADF.
 */

const ESUCCESS = 0;
const EBADF = 8;

export class ProcExit extends Error {
  constructor(public code: number) {
    super(`wasm called proc_exit(${code})`);
  }
}

/** A LibraryProvider for tvmjs `instantiate`: `imports` plus `start(instance)`. */
export function createWASI(log: (text: string) => void = (t) => console.error(t)) {
  let memory: WebAssembly.Memory | undefined;
  const view = () => new DataView(memory!.buffer);
  const decoder = new TextDecoder();
  const pending: Record<number, string> = { 1: "", 2: "" };

  const wasi = {
    clock_time_get: (_id: number, _precision: bigint, out: number): number => {
      const nanos = BigInt(Math.round(performance.now() * 1e6)) +
        BigInt(Math.round(performance.timeOrigin * 1e6));
      view().setBigUint64(out, nanos, true);
      return ESUCCESS;
    },
    proc_exit: (code: number): never => {
      throw new ProcExit(code);
    },
    fd_write: (fd: number, iovs: number, count: number, written: number): number => {
      if (fd !== 1 && fd !== 2) return EBADF;
      const mem = view();
      let total = 0;
      for (let i = 0; i < count; ++i) {
        const ptr = mem.getUint32(iovs + 8 * i, true);
        const len = mem.getUint32(iovs + 8 * i + 4, true);
        pending[fd] += decoder.decode(new Uint8Array(memory!.buffer, ptr, len));
        total += len;
      }
      const lines = pending[fd].split("\n");
      pending[fd] = lines.pop()!;
      for (const line of lines) log(line);
      mem.setUint32(written, total, true);
      return ESUCCESS;
    },
    fd_read: (): number => EBADF,
    fd_close: (): number => EBADF,
    fd_seek: (): number => EBADF,
    environ_sizes_get: (count: number, size: number): number => {
      view().setUint32(count, 0, true);
      view().setUint32(size, 0, true);
      return ESUCCESS;
    },
    environ_get: (): number => ESUCCESS,
  };

  return {
    imports: { wasi_snapshot_preview1: wasi, env: {} },
    start: (instance: WebAssembly.Instance): void => {
      memory = instance.exports.memory as WebAssembly.Memory;
      // A reactor (`--no-entry`) runs its static constructors, which register the
      // runtime's global functions, in `_initialize`.
      const init = instance.exports._initialize as (() => void) | undefined;
      if (init) init();
    },
  };
}
